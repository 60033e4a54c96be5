"""Move one cluster's Cluster API objects from a source API to a target API (the pivot).

The steps follow `clusterctl move` (pause, create owners first with rebuilt ownerReferences,
delete from the source dependents first with finalizers dropped, unpause), with what a
management service needs on top of it:

- every step is idempotent and journaled, so a gateway that dies at any point resumes the move
  to completion by calling `move` again with the same journal;
- transient API errors and a target that is briefly unreachable are retried inside each step;
- status is carried to the target through the status subresource (clusterctl drops it, which
  leaves the moved cluster looking unprovisioned until every controller has caught up);
- a move given up before anything was deleted from the source (`abandon`, or a precondition
  failing after the pause) removes the target's copies and unpauses the source, so no cluster is
  ever left paused on either side.

Journal steps are `<attempt>:<step>` with step one of `pause`, `namespace`, `create:<key>` (a
moved object), `copy:<key>` (a shared one), `deleting` (the source stops being whole from here),
`delete:<key>`, `unpause`. `<attempt>:abandoned` closes an attempt, so the same journal can start
over later.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Literal

from agent.kube import (
    AlreadyExists,
    Forbidden,
    KubeClient,
    KubeError,
    NotFound,
    Obj,
    Resource,
)
from agent.kube import resources as r

from .graph import discover, discover_types, served_versions
from .journal import Journal
from .model import (
    BLOCK_MOVE_ANNOTATION,
    CAPI_GROUP,
    DELETE_FOR_MOVE_ANNOTATION,
    PIVOT_PAUSED_ANNOTATION,
    Graph,
    MovableType,
    Node,
    PivotError,
    PreconditionFailed,
    Skipped,
    dig,
    display,
)
from .plan import MovePlan, build_plan
from .retry import CountingClient, Retrier, RetryPolicy

MANAGER: Final = "outpost-pivot"
_SERVER_META: Final = ("uid", "resourceVersion", "creationTimestamp", "generation",
                       "managedFields", "selfLink", "deletionTimestamp",
                       "deletionGracePeriodSeconds")
_CLUSTER_FALLBACK: Final = r.CLUSTER

Outcome = Literal["moved", "dry-run", "abandoned"]


@dataclass
class MoveReport:
    namespace: str
    cluster: str
    outcome: Outcome
    moved: list[str] = field(default_factory=list)  # keys now only in the target
    shared: list[str] = field(default_factory=list)  # keys copied, kept in the source too
    skipped: list[Skipped] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # unmet preconditions (dry run)
    created: int = 0  # in the target, by this call
    updated: int = 0  # found in the target (an earlier, interrupted run) and corrected
    deleted: int = 0  # from the source (or from the target, when abandoned), by this call
    api_calls: int = 0
    retries: int = 0
    duration: float = 0.0
    resumed: bool = False  # this call continued an interrupted move
    plan_text: str = ""

    def describe(self) -> str:
        where = f"{self.namespace}/{self.cluster}"
        head = {
            "moved": f"Cluster {where} moved to the target"
                     + (" (resumed an interrupted move)" if self.resumed else ""),
            "dry-run": f"Dry run: nothing changed for Cluster {where}",
            "abandoned": f"Move of Cluster {where} abandoned: the source manages it again",
        }[self.outcome]
        lines = [head]
        if self.outcome == "moved":
            lines.append(f"{len(self.moved)} objects moved, {len(self.shared)} shared "
                         "(created in the target if missing, kept in the source)")
        lines.append(f"this call: {self.created} created, {self.updated} updated, "
                     f"{self.deleted} deleted; {self.api_calls} API calls "
                     f"({self.retries} retried) in {self.duration:.1f}s")
        if self.outcome == "dry-run":
            lines.append(self.plan_text)
        else:
            if self.problems:
                lines += ["Problems:", *(f"  - {p}" for p in self.problems)]
            if self.skipped:
                lines += ["Not moved:", *(f"  - {s}" for s in self.skipped)]
        return "\n".join(lines)


def _attempt(done: set[str]) -> int:
    closed = [int(s.split(":", 1)[0]) for s in done
              if s.endswith(":abandoned") and s.split(":", 1)[0].isdigit()]
    return max(closed, default=0) + 1


def _covers(live: Any, want: Any) -> bool:
    """Whether `live` already says everything `want` says (the server may add defaults)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(k in live and _covers(live[k], v)
                                              for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(live, list) and len(live) == len(want)
                and all(_covers(a, b) for a, b in zip(live, want, strict=True)))
    return bool(live == want)


def _copyable(node: Node) -> Obj:
    """The source object as a new object: no server-set metadata, no status where the status
    subresource carries it, and a Cluster that stays paused until the move is complete."""
    obj = copy.deepcopy(node.obj)
    meta = obj.setdefault("metadata", {})
    for f in _SERVER_META:
        meta.pop(f, None)
    if meta.get("name"):
        meta.pop("generateName", None)
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(DELETE_FOR_MOVE_ANNOTATION, None)
    if node.type.status_subresource:
        obj.pop("status", None)
    if node.is_cluster:
        obj.setdefault("spec", {})["paused"] = True
        meta.setdefault("annotations", {})[PIVOT_PAUSED_ANNOTATION] = "true"
    return obj


_UNPAUSE: Final = {"spec": {"paused": None},
                   "metadata": {"annotations": {PIVOT_PAUSED_ANNOTATION: None}}}
_PAUSE: Final = {"spec": {"paused": True},
                 "metadata": {"annotations": {PIVOT_PAUSED_ANNOTATION: "true"}}}
# Drop finalizers so deletion is immediate (the paused controllers would never release them),
# and say why, so providers do not tear down the infrastructure the target now manages.
_RELEASE: Final = {"metadata": {"finalizers": None,
                                "annotations": {DELETE_FOR_MOVE_ANNOTATION: ""}}}


class _Run:
    def __init__(self, source: KubeClient, target: KubeClient, namespace: str, cluster: str,
                 journal: Journal, on_progress: Callable[[str], None] | None,
                 retry: RetryPolicy | None) -> None:
        self.src = CountingClient(source)
        self.dst = CountingClient(target)
        self.namespace = namespace
        self.cluster = cluster
        self.journal = journal
        self.call = Retrier(retry)
        self._progress = on_progress
        self.prefix = f"{_attempt(journal.done)}:"
        self.started = time.monotonic()
        self.graph = Graph(namespace, cluster)
        self.types: tuple[dict[tuple[str, str], MovableType], list[Skipped]] | None = None
        self.target_types: dict[tuple[str, str], frozenset[str]] | None = None
        self.target_uids: dict[str, str] = {}
        self.report = MoveReport(namespace, cluster, "moved",
                                 resumed=any(s.startswith(self.prefix) for s in journal.done))

    # -- journal ---------------------------------------------------------------------------
    def done(self, step: str) -> bool:
        return self.prefix + step in self.journal.done

    def keys_done(self, verb: str) -> set[str]:
        head = f"{self.prefix}{verb}:"
        return {s[len(head):] for s in self.journal.done if s.startswith(head)}

    async def record(self, step: str) -> None:
        await self.journal.record(self.prefix + step)

    def progress(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.cluster}"

    @property
    def cluster_resource(self) -> Resource:
        t = self.graph.types.get((CAPI_GROUP, "Cluster"))
        return t.resource if t is not None else _CLUSTER_FALLBACK

    # -- planning --------------------------------------------------------------------------
    async def plan(self, *, check_target: bool = True, tolerate_target: bool = False
                   ) -> MovePlan:
        """Discover the graph and plan it (the CRDs of either side are read once per call)."""
        if self.types is None:
            self.types = await discover_types(self.src, retrier=self.call)
        self.graph = await discover(self.src, self.namespace, self.cluster, retrier=self.call,
                                    types=self.types)
        unreachable: list[str] = []
        if check_target and self.target_types is None:
            try:
                crds = await self.call("list the target's CRDs", lambda: self.dst.list(r.CRD))
                self.target_types = served_versions(crds.items)
            except KubeError as e:
                if not tolerate_target:
                    raise
                unreachable.append(f"cannot read the target's CRDs: {e}")
        plan = build_plan(self.graph, target_types=self.target_types if check_target else None)
        if unreachable:
            plan = MovePlan(plan.namespace, plan.cluster, plan.groups,
                            (*plan.problems, *unreachable), plan.blocking, plan.skipped)
        return plan

    # -- move ------------------------------------------------------------------------------
    async def move(self, *, dry_run: bool, block_move_timeout: float) -> MoveReport:
        if dry_run:
            plan = await self.plan(tolerate_target=True)
            self.report.outcome = "dry-run"
            self.report.problems = list(plan.problems)
            self.report.moved = [n.key for n in plan.deletes]
            self.report.shared = [n.key for n in plan.creates if n.shared]
            return self.finish(plan)
        if not self.done("pause"):
            plan = await self.plan()
            plan.check()  # nothing has changed yet: just refuse
            await self.call("pause the source Cluster", lambda: self.src.patch(
                self.cluster_resource, self.cluster, _PAUSE, self.namespace,
                field_manager=MANAGER))
            await self.record("pause")
            self.progress(f"paused Cluster {self.where} in the source")
        # Paused, the source is stable: this graph is the one to move (on a resume, the part of
        # it that is still in the source). The target was checked before the pause.
        plan = await self.plan(check_target=False)
        held = self.graph.cluster_node
        if held is not None and not self.done("deleting") and not (
                dig(held.obj, "spec", "paused") is True
                and PIVOT_PAUSED_ANNOTATION in held.annotations):
            # Unpaused behind our back while the move was interrupted: hold it again, and read
            # it again once its controllers have stopped.
            await self.call("pause the source Cluster", lambda: self.src.patch(
                self.cluster_resource, self.cluster, _PAUSE, self.namespace,
                field_manager=MANAGER))
            plan = await self.plan(check_target=False)
        if self.graph.cluster_node is None:
            if not self.done("deleting"):
                raise PivotError(f"Cluster {self.where} disappeared from the source before the "
                                 "move deleted anything there: it was not moved")
            # The Cluster is deleted last: the source side is complete.
        else:
            if not self.done("deleting"):
                try:
                    plan.check()
                    await self.wait_unblocked(plan, block_move_timeout)
                except PreconditionFailed as e:
                    await self.abandon()
                    raise PreconditionFailed(e.problems, abandoned=True) from e
            await self.ensure_namespace()
            await self.create_all(plan)
            if not self.done("deleting"):
                # From here on the source stops being whole: `abandon` must go forward.
                await self.record("deleting")
            await self.delete_all(plan)
        await self.unpause_target()
        self.report.moved = sorted(self.keys_done("create"))
        self.report.shared = sorted(self.keys_done("copy"))
        return self.finish(plan)

    def finish(self, plan: MovePlan) -> MoveReport:
        rep = self.report
        rep.skipped = list(plan.skipped)
        rep.plan_text = plan.describe()
        rep.api_calls = self.src.calls + self.dst.calls
        rep.retries = self.call.retries
        rep.duration = time.monotonic() - self.started
        return rep

    async def wait_unblocked(self, plan: MovePlan, timeout: float) -> None:
        """Wait, as clusterctl does after pausing, until providers have removed their
        block-move annotation (they hold a move back while they finish work in flight)."""
        pending = [self.graph.nodes[k] for k in plan.blocking]
        deadline = time.monotonic() + timeout
        while pending:
            still = []
            for n in pending:
                try:
                    live = await self.call(f"get {display(n.key)}", partial(
                        self.src.get, n.resource, n.name, n.namespace))
                except NotFound:
                    continue
                if BLOCK_MOVE_ANNOTATION in (dig(live, "metadata", "annotations") or {}):
                    still.append(n)
            pending = still
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise PreconditionFailed([
                    f"{display(n.key)} still carries {BLOCK_MOVE_ANNOTATION} after "
                    f"{timeout:.0f}s: its provider is not ready to move it" for n in pending])
            self.progress("waiting for " + ", ".join(display(n.key) for n in pending)
                          + f" to drop {BLOCK_MOVE_ANNOTATION}")
            await asyncio.sleep(min(1.0, max(timeout / 20, 0.05)))

    async def ensure_namespace(self) -> None:
        if self.done("namespace"):
            return

        async def ensure() -> None:
            try:
                await self.dst.get(r.NAMESPACE, self.namespace)
                return
            except (NotFound, Forbidden):
                pass  # Forbidden: may still create it
            with contextlib.suppress(AlreadyExists):
                await self.dst.create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": self.namespace}})

        await self.call(f"ensure namespace {self.namespace} in the target", ensure)
        await self.record("namespace")

    async def create_all(self, plan: MovePlan) -> None:
        nodes = plan.creates
        for i, n in enumerate(nodes, 1):
            step = f"{'copy' if n.shared else 'create'}:{n.key}"
            if self.done(step):
                continue
            await self.call(f"create {display(n.key)} in the target",
                            partial(self.copy, n))
            await self.record(step)
            self.progress(f"created {display(n.key)} in the target ({i}/{len(nodes)})")

    async def copy(self, node: Node) -> str:
        """Create (or correct) `node` in the target, its status included; its target uid."""
        desired = _copyable(node)
        refs = []
        for ref in node.meta.get("ownerReferences") or []:
            owner = node.owners.get(str(ref.get("uid")))
            if owner is not None:
                refs.append({**ref, "uid": await self.target_uid(owner)})
        if refs:
            desired["metadata"]["ownerReferences"] = refs
        else:
            desired["metadata"].pop("ownerReferences", None)
        res, name, ns = node.resource, node.name, node.namespace
        created = False
        try:
            live = await self.dst.create(res, desired)
            created = True
            self.report.created += 1
        except AlreadyExists:
            live = await self.dst.get(res, name, ns)
            if not node.shared and not _covers(live, desired):
                desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                live = await self.dst.replace(res, desired, field_manager=MANAGER)
                self.report.updated += 1
        status = node.obj.get("status")
        if (node.type.status_subresource and isinstance(status, dict) and status
                and (created or not node.shared) and not _covers(live.get("status"), status)):
            await self.dst.patch_status(res, name, {"status": status}, ns,
                                        field_manager=MANAGER)
        uid = str(live["metadata"]["uid"])
        self.target_uids[node.key] = uid
        return uid

    async def target_uid(self, key: str) -> str:
        """The target's uid of an owner: created earlier in this run, or in an interrupted one
        (then read back by kind and name)."""
        if key in self.target_uids:
            return self.target_uids[key]
        owner = self.graph.nodes[key]
        try:
            live = await self.dst.get(owner.resource, owner.name, owner.namespace)
        except NotFound:
            return await self.copy(owner)  # it vanished since: put it back first
        uid = str(live["metadata"]["uid"])
        self.target_uids[key] = uid
        return uid

    async def delete_all(self, plan: MovePlan) -> None:
        nodes = plan.deletes
        for i, n in enumerate(nodes, 1):
            if self.done(f"delete:{n.key}"):
                continue
            await self.call(f"delete {display(n.key)} from the source",
                            partial(self.release, self.src, n))
            self.report.deleted += 1
            await self.record(f"delete:{n.key}")
            self.progress(f"deleted {display(n.key)} from the source ({i}/{len(nodes)})")

    @staticmethod
    async def release(kube: KubeClient, node: Node, uid: str | None = None) -> None:
        """Drop the finalizers of `node` in `kube` and delete it; gone already is fine."""
        try:
            await kube.patch(node.resource, node.name, _RELEASE, node.namespace,
                             field_manager=MANAGER)
            await kube.delete(node.resource, node.name, node.namespace, uid=uid)
        except NotFound:
            return

    async def unpause_target(self) -> None:
        if self.done("unpause"):
            return
        await self.call("unpause the target Cluster", lambda: self.dst.patch(
            self.cluster_resource, self.cluster, _UNPAUSE, self.namespace,
            field_manager=MANAGER))
        await self.record("unpause")
        self.progress(f"unpaused Cluster {self.where} in the target: it manages itself now")

    # -- abandon ---------------------------------------------------------------------------
    async def abandon(self) -> MoveReport:
        plan = await self.plan(check_target=False)
        source_cluster = self.graph.cluster_node
        if self.done("deleting") or (self.done("pause") and source_cluster is None):
            # The source has lost objects already: the only whole cluster is forward.
            self.progress("the source has already handed objects over: completing the move")
            return await self.move(dry_run=False, block_move_timeout=0.0)
        try:
            live = await self.call("get the target Cluster", lambda: self.dst.get(
                self.cluster_resource, self.cluster, self.namespace))
            if dig(live, "spec", "paused") is not True:
                raise PivotError(f"Cluster {self.where} in the target is not paused: the target "
                                 "already manages it, so its objects are not removed there")
        except NotFound:
            pass
        # The copies go dependents first, their finalizers dropped and marked as a move, so the
        # target's providers leave the real infrastructure alone.
        for n in plan.deletes:
            await self.call(f"delete {display(n.key)} from the target",
                            partial(self.release, self.dst, n))
            self.report.deleted += 1
        if source_cluster is not None and PIVOT_PAUSED_ANNOTATION in source_cluster.annotations:
            await self.call("unpause the source Cluster", lambda: self.src.patch(
                self.cluster_resource, self.cluster, _UNPAUSE, self.namespace,
                field_manager=MANAGER))
            self.progress(f"unpaused Cluster {self.where} in the source")
        await self.record("abandoned")
        self.report.outcome = "abandoned"
        return self.finish(plan)


async def move(source: KubeClient, target: KubeClient, namespace: str, cluster: str, *,
               journal: Journal, dry_run: bool = False,
               on_progress: Callable[[str], None] | None = None,
               retry: RetryPolicy | None = None,
               block_move_timeout: float = 300.0) -> MoveReport:
    """Move Cluster `namespace/cluster` and everything it owns from `source` to `target`.

    Re-running with the same journal resumes an interrupted move; a finished one is a no-op.
    Raises `PreconditionFailed` when the cluster cannot be moved (nothing is left paused), a
    `KubeError` when the API keeps failing beyond the retries (resume later with the same
    journal, or `abandon`), `PivotError` when the state contradicts the journal.
    `dry_run` only reads, and describes the plan (and any unmet precondition) in the report.
    """
    run = _Run(source, target, namespace, cluster, journal, on_progress, retry)
    return await run.move(dry_run=dry_run, block_move_timeout=block_move_timeout)


async def abandon(source: KubeClient, target: KubeClient, namespace: str, cluster: str, *,
                  journal: Journal, on_progress: Callable[[str], None] | None = None,
                  retry: RetryPolicy | None = None) -> MoveReport:
    """Give up a move: if nothing was deleted from the source yet, remove the target's copies
    and unpause the source; otherwise complete the move (the source is no longer whole).

    The journal is closed for this attempt, so a later `move` with it starts afresh.
    """
    run = _Run(source, target, namespace, cluster, journal, on_progress, retry)
    return await run.abandon()
