"""Turn a cluster's object graph into a move plan: preconditions, creation order, deletion order.

Pure (no I/O), so the order and the precondition messages are tested on hand-built graphs.

Creation goes owners first, in groups as clusterctl's move sequence does: the target's garbage
collector deletes an object whose owner does not exist (yet), so a dependent created before its
owner would vanish. Deletion from the source is the reverse, dependents first, so the source's
collector never cascades into something not yet handled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import (
    BLOCK_MOVE_ANNOTATION,
    CAPI_GROUP,
    PAUSED_ANNOTATION,
    PIVOT_PAUSED_ANNOTATION,
    Graph,
    Node,
    PreconditionFailed,
    Skipped,
    dig,
    display,
)


@dataclass(frozen=True)
class MovePlan:
    namespace: str
    cluster: str
    groups: tuple[tuple[Node, ...], ...]  # creation groups: each only after the ones before
    problems: tuple[str, ...]  # unmet preconditions; empty when the move may start
    blocking: tuple[str, ...]  # keys carrying clusterctl's block-move annotation
    skipped: tuple[Skipped, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def creates(self) -> tuple[Node, ...]:
        """Every node, owners first."""
        return tuple(n for g in self.groups for n in g)

    @property
    def deletes(self) -> tuple[Node, ...]:
        """The nodes to delete from the source, dependents first (shared ones stay)."""
        return tuple(n for n in reversed(self.creates) if not n.shared)

    @property
    def cluster_node(self) -> Node | None:
        return next((n for n in self.creates if n.is_cluster), None)

    def check(self) -> None:
        if self.problems:
            raise PreconditionFailed(self.problems)

    def describe(self) -> str:
        """What a move would do, for a dry run and for the gateway's step log."""
        where = f"{self.namespace}/{self.cluster}"
        shared = [n for n in self.creates if n.shared]
        lines = [f"Pivot of Cluster {where}: {len(self.creates)} objects "
                 f"({len(self.deletes)} moved, {len(shared)} shared)"]
        if self.problems:
            lines.append("Preconditions NOT met:")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("Preconditions: met")
        if self.blocking:
            lines.append("Waits for clusterctl.cluster.x-k8s.io/block-move to be removed from: "
                         + ", ".join(display(k) for k in self.blocking))
        lines += [
            f"1. pause Cluster {where} in the source (spec.paused=true)",
            f"2. ensure namespace {self.namespace} in the target",
            "3. create in the target, owners first, status carried over:",
        ]
        for i, group in enumerate(self.groups, 1):
            for j, n in enumerate(group):
                tag = " [shared: created if missing, kept in the source]" if n.shared else ""
                if n.is_cluster:
                    tag = " [paused until the end]"
                prefix = f"   {i:>2}." if j == 0 else "      "
                lines.append(f"{prefix} {display(n.key)} ({n.why}){tag}")
                if n.dropped_owners:
                    lines.append("         ownerReferences not carried: "
                                 + ", ".join(n.dropped_owners))
        lines.append("4. delete from the source, dependents first (finalizers removed):")
        lines += [f"      {display(n.key)}" for n in self.deletes]
        lines.append(f"5. unpause Cluster {where} in the target")
        if self.skipped:
            lines.append("Not moved:")
            lines += [f"  - {s}" for s in self.skipped]
        return "\n".join(lines)


def _capi(graph: Graph, kind: str) -> list[Node]:
    return [n for n in graph.nodes.values() if (n.resource.group, n.kind) == (CAPI_GROUP, kind)]


def preconditions(graph: Graph, *,
                  target_types: Mapping[tuple[str, str], frozenset[str]] | None = None
                  ) -> list[str]:
    """What keeps the cluster from being moved now (clusterctl's checks, v1beta2 fields),
    each said so that an operator knows what to wait for or fix."""
    where = f"{graph.namespace}/{graph.cluster}"
    cluster = graph.cluster_node
    if cluster is None:
        return [f"Cluster {where} does not exist in the source"]
    problems: list[str] = []
    init = dig(cluster.obj, "status", "initialization") or {}
    if init.get("infrastructureProvisioned") is not True:
        problems.append(f"Cluster {where} is still provisioning its infrastructure "
                        "(status.initialization.infrastructureProvisioned is not true)")
    if init.get("controlPlaneInitialized") is not True:
        problems.append(f"the control plane of Cluster {where} is not initialized yet "
                        "(status.initialization.controlPlaneInitialized is not true)")
    ours = PIVOT_PAUSED_ANNOTATION in cluster.annotations
    if dig(cluster.obj, "spec", "paused") is True and not ours:
        problems.append(f"Cluster {where} is already paused (spec.paused): something else is "
                        "holding it; unpause it before moving")
    if PAUSED_ANNOTATION in cluster.annotations:
        problems.append(f"Cluster {where} is already paused (annotation {PAUSED_ANNOTATION}); "
                        "remove it before moving")
    for m in sorted(_capi(graph, "Machine"), key=lambda n: n.key):
        if not dig(m.obj, "status", "nodeRef"):
            problems.append(f"Machine {m.namespace}/{m.name} has no Node yet "
                            "(status.nodeRef is not set): wait until it has joined")
    for n in graph.nodes.values():
        if dig(n.obj, "metadata", "deletionTimestamp") and not n.shared:
            problems.append(f"{display(n.key)} is being deleted: wait until it is gone")
    if target_types is not None:
        missing = set()
        for n in graph.nodes.values():
            res = n.resource
            if not res.group:
                continue
            if res.version not in target_types.get((res.group, res.kind), frozenset()):
                missing.add(f"{res.kind}.{res.group}/{res.version}")
        problems += [f"the target does not serve {m}: install its provider there first"
                     for m in sorted(missing)]
    return problems


def _order(graph: Graph) -> tuple[list[list[Node]], list[Node]]:
    """Creation groups (Kahn's algorithm by levels); the nodes left over are in cycles."""
    placed: set[str] = set()
    remaining = dict(graph.nodes)
    groups: list[list[Node]] = []
    while remaining:
        ready = [n for n in remaining.values()
                 if all(a in placed or a not in graph.nodes for a in n.after)]
        if not ready:
            break
        ready.sort(key=lambda n: (not n.is_cluster, not n.shared, n.resource.group, n.kind,
                                  n.key))
        groups.append(ready)
        for n in ready:
            placed.add(n.key)
            del remaining[n.key]
    return groups, sorted(remaining.values(), key=lambda n: n.key)


def build_plan(graph: Graph, *,
               target_types: Mapping[tuple[str, str], frozenset[str]] | None = None) -> MovePlan:
    """The plan for `graph`; `target_types` ((group, kind) -> served versions in the target),
    when given, adds a check that the target can store every object."""
    problems = preconditions(graph, target_types=target_types)
    groups, cyclic = _order(graph)
    if cyclic and graph.cluster_node is not None:
        problems.append("ownerReferences form a cycle, so no owner can be created first: "
                        + ", ".join(display(n.key) for n in cyclic))
    blocking = tuple(sorted(k for k, n in graph.nodes.items()
                            if BLOCK_MOVE_ANNOTATION in n.annotations))
    return MovePlan(graph.namespace, graph.cluster, tuple(tuple(g) for g in groups),
                    tuple(problems), blocking, tuple(graph.skipped))
