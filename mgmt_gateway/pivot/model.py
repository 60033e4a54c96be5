"""The object graph of one cluster as plain data: what `graph` discovers and `plan` orders.

Kept apart from discovery so that planning stays pure and can be tested on hand-built graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from agent.kube import Obj, Resource

CAPI_GROUP: Final = "cluster.x-k8s.io"
CLUSTER_NAME_LABEL: Final = "cluster.x-k8s.io/cluster-name"
# CAPI's own pause switch for a single object (clusterctl uses it for ClusterClasses only).
PAUSED_ANNOTATION: Final = "cluster.x-k8s.io/paused"
# Ours: says the Cluster was paused by a pivot, so a resumed move or an abandon can tell its own
# pause from somebody else's (which must be a precondition failure, never undone by us).
PIVOT_PAUSED_ANNOTATION: Final = "outpost.io/pivot-paused"
# clusterctl's markers, honoured so providers behave as they do under `clusterctl move`.
DELETE_FOR_MOVE_ANNOTATION: Final = "clusterctl.cluster.x-k8s.io/delete-for-move"
BLOCK_MOVE_ANNOTATION: Final = "clusterctl.cluster.x-k8s.io/block-move"
MOVE_LABEL: Final = "clusterctl.cluster.x-k8s.io/move"
MOVE_HIERARCHY_LABEL: Final = "clusterctl.cluster.x-k8s.io/move-hierarchy"
# The Secrets CAPI finds by name (`<cluster>-<purpose>`), often without an ownerReference.
CLUSTER_SECRET_PURPOSES: Final = ("kubeconfig", "ca", "etcd", "sa", "proxy")


def object_key(group: str, kind: str, namespace: str, name: str) -> str:
    """`group/kind/namespace/name`: version-free, so an object keeps its key across versions
    (empty group for the core API, empty namespace for cluster-scoped objects)."""
    return f"{group}/{kind}/{namespace}/{name}"


def split_key(key: str) -> tuple[str, str, str, str]:
    group, kind, namespace, name = key.split("/", 3)
    return group, kind, namespace, name


def display(key: str) -> str:
    """A key as people read it: `Kind namespace/name` (`Kind name` when cluster-scoped)."""
    _, kind, namespace, name = split_key(key)
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def dig(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


@dataclass(frozen=True)
class MovableType:
    """A resource type the move considers, read from its CRD (or built in)."""

    resource: Resource
    status_subresource: bool = False
    force_move: bool = False  # the CRD carries clusterctl's move / move-hierarchy label

    @property
    def group_kind(self) -> tuple[str, str]:
        return self.resource.group, self.resource.kind


@dataclass(frozen=True)
class Skipped:
    """Something related to the cluster that is NOT moved, and why (clusterctl says nothing)."""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"{display(self.key)}: {self.reason}"


@dataclass
class Node:
    """One object of the graph, as read from the source."""

    key: str
    type: MovableType
    obj: Obj
    why: str = ""  # how it joined the graph, for the dry-run description
    # Created in the target only if missing and never deleted from the source: cluster-scoped
    # objects, objects the cluster merely references, objects with owners outside the graph.
    shared: bool = False
    owners: dict[str, str] = field(default_factory=dict)  # source owner uid -> owner key
    after: set[str] = field(default_factory=set)  # keys to create before this one
    dropped_owners: list[str] = field(default_factory=list)  # ownerReferences not carried

    @property
    def resource(self) -> Resource:
        return self.type.resource

    @property
    def meta(self) -> dict[str, Any]:
        m = self.obj.get("metadata")
        return m if isinstance(m, dict) else {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def namespace(self) -> str | None:
        return str(self.meta.get("namespace", "")) if self.resource.namespaced else None

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid", ""))

    @property
    def kind(self) -> str:
        return self.resource.kind

    @property
    def is_cluster(self) -> bool:
        return (self.resource.group, self.resource.kind) == (CAPI_GROUP, "Cluster")

    @property
    def annotations(self) -> dict[str, str]:
        a = self.meta.get("annotations")
        return a if isinstance(a, dict) else {}

    @property
    def labels(self) -> dict[str, str]:
        lb = self.meta.get("labels")
        return lb if isinstance(lb, dict) else {}


@dataclass
class Graph:
    """The objects of one cluster in the source, plus what was left out and why."""

    namespace: str
    cluster: str
    nodes: dict[str, Node] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    types: dict[tuple[str, str], MovableType] = field(default_factory=dict)

    @property
    def cluster_key(self) -> str:
        return object_key(CAPI_GROUP, "Cluster", self.namespace, self.cluster)

    @property
    def cluster_node(self) -> Node | None:
        return self.nodes.get(self.cluster_key)


class PivotError(Exception):
    """A pivot that cannot go on as asked; retrying the same call will not help by itself."""


class PreconditionFailed(PivotError):
    """The cluster is not in a state that can be moved; `problems` says what to fix."""

    def __init__(self, problems: list[str] | tuple[str, ...], *, abandoned: bool = False) -> None:
        self.problems = tuple(problems)
        self.abandoned = abandoned  # the source was paused, and has been unpaused again
        super().__init__("cannot move the cluster: " + "; ".join(self.problems))
