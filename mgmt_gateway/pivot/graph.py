"""Discover the object graph of one Cluster API cluster in the source API.

What belongs to a cluster follows `clusterctl move` (which moves whole namespaces) narrowed to one
cluster:

- the types are read from the source's CRDs (every group ending in `cluster.x-k8s.io`: core,
  bootstrap, control plane, infrastructure, addons) at their storage version, plus Secrets and
  ConfigMaps, so providers Outpost does not know of are moved too;
- members are the Cluster, the Secrets CAPI finds by name (`<cluster>-kubeconfig`, `-ca`,
  `-etcd`, `-sa`, `-proxy`), objects labelled `cluster.x-k8s.io/cluster-name=<cluster>` or
  naming it in `spec.clusterName`, and everything these own, transitively;
- objects the members reference (`identityRef`, `classRef`, Secrets of `contentFrom`, ...) that
  are not members themselves are *shared*: created in the target if missing, never deleted from
  the source, since other clusters may use them. Cluster-scoped objects are always shared.

Unlike clusterctl, which silently leaves out what it cannot place, everything related to the
cluster that is not moved is reported in `Graph.skipped` with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from agent.kube import Forbidden, KubeClient, NotFound, Obj, Resource
from agent.kube import resources as r

from .model import (
    CAPI_GROUP,
    CLUSTER_NAME_LABEL,
    CLUSTER_SECRET_PURPOSES,
    MOVE_HIERARCHY_LABEL,
    MOVE_LABEL,
    Graph,
    MovableType,
    Node,
    Skipped,
    dig,
    display,
    group_of,
    object_key,
)
from .retry import Retrier

SECRET = MovableType(r.SECRET)
CONFIG_MAP = MovableType(r.CONFIG_MAP)
_MAX_FETCH_ROUNDS = 5


def is_capi_group(group: str) -> bool:
    return group == CAPI_GROUP or group.endswith("." + CAPI_GROUP)


# -- types ------------------------------------------------------------------------------------
def movable_types(crds: Iterable[Obj]) -> tuple[dict[tuple[str, str], MovableType],
                                                 list[Skipped]]:
    """The Cluster API types the CRDs define, read at their storage version (the one objects
    are kept in, so nothing is lost to conversion), plus Secrets and ConfigMaps."""
    types = {SECRET.group_kind: SECRET, CONFIG_MAP.group_kind: CONFIG_MAP}
    skipped: list[Skipped] = []
    for crd in crds:
        spec = crd.get("spec") or {}
        group = str(spec.get("group") or "")
        if not is_capi_group(group) or dig(crd, "metadata", "deletionTimestamp"):
            continue
        names = spec.get("names") or {}
        kind, plural = str(names.get("kind") or ""), str(names.get("plural") or "")
        storage = next((v for v in spec.get("versions") or [] if v.get("storage")), None)
        if not kind or not plural or storage is None:
            continue
        if not storage.get("served"):
            skipped.append(Skipped(object_key(group, kind, "", "*"),
                                   f"the storage version {storage.get('name')} of its CRD is not "
                                   "served, so its objects cannot be read"))
            continue
        labels = dig(crd, "metadata", "labels") or {}
        types[(group, kind)] = MovableType(
            Resource(group, str(storage.get("name")), plural, kind,
                       namespaced=spec.get("scope") != "Cluster"),
            status_subresource="status" in (storage.get("subresources") or {}),
            force_move=MOVE_LABEL in labels or MOVE_HIERARCHY_LABEL in labels)
    return types, skipped


def served_versions(crds: Iterable[Obj]) -> dict[tuple[str, str], frozenset[str]]:
    """(group, kind) -> the versions a cluster serves, to check the target can take the objects."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for crd in crds:
        spec = crd.get("spec") or {}
        kind = str(dig(spec, "names", "kind") or "")
        out[(str(spec.get("group") or ""), kind)] = frozenset(
            str(v.get("name")) for v in spec.get("versions") or [] if v.get("served"))
    return out


# -- references -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """A reference found in a spec: `{kind, name[, apiGroup|apiVersion][, namespace]}`."""

    path: str
    group: str | None
    kind: str
    name: str
    namespace: str | None = None


# Keys that name a Secret / ConfigMap without saying `kind` (e.g. kubeadm `contentFrom.secret`).
_IMPLICIT_KIND = {"secret": ("", "Secret"), "secretRef": ("", "Secret"),
                  "configMap": ("", "ConfigMap"), "configMapRef": ("", "ConfigMap"),
                  "classRef": (CAPI_GROUP, "ClusterClass")}


def spec_refs(obj: Obj) -> list[Ref]:
    """Every object reference in `spec` (templates included), wherever it is nested."""
    out: list[Ref] = []

    def walk(value: Any, path: str, implied: tuple[str, str] | None) -> None:
        if isinstance(value, dict):
            kind, name = value.get("kind"), value.get("name")
            ns = value.get("namespace") if isinstance(value.get("namespace"), str) else None
            if isinstance(kind, str) and kind and isinstance(name, str) and name:
                group = value.get("apiGroup")
                if not isinstance(group, str):
                    version = value.get("apiVersion")
                    group = group_of(version) if isinstance(version, str) else None
                out.append(Ref(path, group, kind, name, ns))
            elif implied is not None and isinstance(name, str) and name:
                out.append(Ref(path, implied[0], implied[1], name, ns))
            for k, v in value.items():
                walk(v, f"{path}.{k}", _IMPLICIT_KIND.get(str(k)))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]", None)

    walk(obj.get("spec"), "spec", None)
    return out


def _resolve_type(types: Mapping[tuple[str, str], MovableType],
                  ref: Ref) -> MovableType | None:
    if ref.group is not None:
        return types.get((ref.group, ref.kind))
    found = [t for (_, kind), t in types.items() if kind == ref.kind]
    return found[0] if len(found) == 1 else None


# -- membership (pure) ------------------------------------------------------------------------
@dataclass
class _Entry:
    key: str
    type: MovableType
    obj: Obj

    @property
    def meta(self) -> dict[str, Any]:
        m = self.obj.get("metadata")
        return m if isinstance(m, dict) else {}

    def owner_refs(self) -> list[dict[str, Any]]:
        refs = self.meta.get("ownerReferences")
        return [x for x in refs if isinstance(x, dict)] if isinstance(refs, list) else []


def _key_of(t: MovableType, obj: Obj) -> str:
    m = obj.get("metadata") or {}
    ns = str(m.get("namespace") or "") if t.resource.namespaced else ""
    return object_key(t.resource.group, t.resource.kind, ns, str(m.get("name") or ""))


def build_graph(namespace: str, cluster: str, types: Mapping[tuple[str, str], MovableType],
                pool: Iterable[tuple[MovableType, Obj]], *, skipped: Iterable[Skipped] = (),
                missing: Iterable[str] = ()) -> tuple[Graph, list[str]]:
    """The graph from objects already read; also the keys of cluster-scoped objects it
    references that are not in `pool` yet (read them and call again). `missing` are keys known
    not to exist."""
    graph = Graph(namespace, cluster, types=dict(types))
    notes: dict[str, str] = {}
    for s in skipped:
        notes.setdefault(s.key, s.reason)
    gone = set(missing)
    entries: dict[str, _Entry] = {}  # uid -> entry
    uid_of: dict[str, str] = {}  # key -> uid
    for t, obj in pool:
        uid = str(dig(obj, "metadata", "uid") or "")
        if uid:
            key = _key_of(t, obj)
            entries[uid] = _Entry(key, t, obj)
            uid_of[key] = uid
    cluster_uid = uid_of.get(graph.cluster_key)
    if cluster_uid is None:
        graph.skipped = [Skipped(k, v) for k, v in notes.items()]
        return graph, []

    def local(e: _Entry) -> bool:
        return e.type.resource.namespaced and e.meta.get("namespace") == namespace

    why: dict[str, str] = {cluster_uid: "the Cluster"}
    shared: set[str] = set()
    by_ref: set[str] = set()
    ref_after: dict[str, set[str]] = {}
    secret_names = {f"{cluster}-{p}" for p in CLUSTER_SECRET_PURPOSES}
    for uid, e in entries.items():
        if not local(e) or uid in why:
            continue
        labels = e.meta.get("labels") or {}
        if e.type.group_kind == SECRET.group_kind and e.meta.get("name") in secret_names:
            why[uid] = "a certificate or kubeconfig Secret of the cluster, by name"
        elif labels.get(CLUSTER_NAME_LABEL) == cluster:
            why[uid] = f"labelled {CLUSTER_NAME_LABEL}={cluster}"
        elif is_capi_group(e.type.resource.group) and dig(e.obj, "spec", "clusterName") == cluster:
            why[uid] = f"spec.clusterName={cluster}"

    def close_ownership(into_shared: bool) -> None:
        """Add what graph objects own, until nothing more is added (members first, so an
        object owned by a member and a shared object is a member)."""
        changed = True
        while changed:
            changed = False
            for uid, e in entries.items():
                if uid in why:
                    continue
                owner = next((x.get("uid") for x in e.owner_refs() if x.get("uid") in why
                              and (into_shared or x.get("uid") not in shared)), None)
                if owner is None:
                    continue
                why[uid] = f"owned by {display(entries[str(owner)].key)}"
                if owner in shared:
                    shared.add(uid)
                changed = True

    fetch: list[str] = []

    def follow_refs() -> bool:
        added = False
        for uid in list(why):
            e = entries[uid]
            for ref in spec_refs(e.obj):
                t = _resolve_type(graph.types, ref)
                if t is None:
                    if ref.group is not None and is_capi_group(ref.group):
                        notes.setdefault(object_key(ref.group, ref.kind, namespace, ref.name),
                                         f"referenced by {display(e.key)} ({ref.path}), but the "
                                         "source serves no such kind")
                    continue
                ns = (ref.namespace or namespace) if t.resource.namespaced else ""
                rkey = object_key(t.resource.group, t.resource.kind, ns, ref.name)
                if t.resource.namespaced and ns != namespace:
                    notes.setdefault(rkey, f"referenced by {display(e.key)} ({ref.path}) from "
                                           "another namespace: only the cluster's namespace moves")
                    continue
                ruid = uid_of.get(rkey)
                if ruid is None:
                    if not t.resource.namespaced and rkey not in gone:
                        fetch.append(rkey)
                    else:
                        notes.setdefault(rkey, f"referenced by {display(e.key)} ({ref.path}), "
                                               "but not found in the source")
                    continue
                if ruid == uid:
                    continue
                if ruid not in why:
                    why[ruid] = f"referenced by {display(e.key)} ({ref.path})"
                    shared.add(ruid)
                    by_ref.add(ruid)
                    added = True
                if ruid in by_ref:
                    ref_after.setdefault(uid, set()).add(ruid)
        return added

    close_ownership(into_shared=False)
    while follow_refs():
        close_ownership(into_shared=True)

    # Cluster-scoped objects may be used by other clusters; objects with owners outside the
    # graph are still wanted by those owners: copy them, never delete them from the source.
    for uid in why:
        e = entries[uid]
        if not e.type.resource.namespaced:
            shared.add(uid)
        outside = [x for x in e.owner_refs() if x.get("uid") not in why]
        for x in outside:
            okey = _owner_key(x, e)
            notes.setdefault(okey, f"owner of {display(e.key)}, but not part of the cluster's "
                                   "graph (another kind, another cluster, or already gone): "
                                   "this ownerReference is not carried over")
        if outside and uid != cluster_uid:
            shared.add(uid)

    ckey = graph.cluster_key
    for uid, reason in why.items():
        e = entries[uid]
        owners = {str(x["uid"]): entries[str(x["uid"])].key for x in e.owner_refs()
                  if x.get("uid") in why and x.get("uid") != uid}
        after = set(owners.values()) | {entries[x].key for x in ref_after.get(uid, ())}
        if uid != cluster_uid and not owners and uid not in by_ref:
            after.add(ckey)  # roots of the cluster come after the Cluster itself
        after.discard(e.key)
        if owners and uid not in by_ref:  # ownership says more than a label or a name
            reason = f"owned by {display(next(iter(owners.values())))}"
        graph.nodes[e.key] = Node(
            key=e.key, type=e.type, obj=e.obj, why=reason, shared=uid in shared,
            owners=owners, after=after,
            dropped_owners=[display(_owner_key(x, e)) for x in e.owner_refs()
                            if x.get("uid") not in why])

    # A neighbour whose name extends ours (`edge-2` next to `edge`) claims names it prefixes.
    longer = [f"{e.meta.get('name')}-" for e in entries.values()
              if local(e) and e.type.group_kind == (CAPI_GROUP, "Cluster")
              and len(str(e.meta.get("name"))) > len(cluster)]
    for uid, e in entries.items():
        if uid in why or not local(e):
            continue
        labels = e.meta.get("labels") or {}
        name = str(e.meta.get("name") or "")
        if e.type.force_move or MOVE_LABEL in labels or MOVE_HIERARCHY_LABEL in labels:
            notes.setdefault(e.key, f"marked for clusterctl move, but not linked to cluster "
                                    f"{cluster}: a pivot moves one cluster, not a namespace")
        elif (e.type.group_kind in (SECRET.group_kind, CONFIG_MAP.group_kind)
              and name.startswith(f"{cluster}-") and CLUSTER_NAME_LABEL not in labels
              and not e.owner_refs() and not any(name.startswith(p) for p in longer)):
            notes.setdefault(e.key, f"named after cluster {cluster}, but neither one of its "
                                    "certificate/kubeconfig Secrets nor owned by, labelled for or "
                                    "referenced by it; label it "
                                    f"{CLUSTER_NAME_LABEL}={cluster} to move it")
    graph.skipped = [Skipped(k, v) for k, v in notes.items() if k not in graph.nodes]
    return graph, sorted(set(fetch))


def _owner_key(ref: Mapping[str, Any], dependent: _Entry) -> str:
    ns = str(dependent.meta.get("namespace") or "")
    return object_key(group_of(str(ref.get("apiVersion") or "")), str(ref.get("kind") or ""),
                      ns, str(ref.get("name") or ""))


# -- discovery (I/O) --------------------------------------------------------------------------
async def discover_types(source: KubeClient, *, retrier: Retrier | None = None
                         ) -> tuple[dict[tuple[str, str], MovableType], list[Skipped]]:
    """The movable types of `source`, from its CRDs."""
    call = retrier or Retrier()
    crds = await call("list CRDs", lambda: source.list(r.CRD))
    return movable_types(crds.items)


async def discover(source: KubeClient, namespace: str, cluster: str, *,
                   retrier: Retrier | None = None,
                   types: tuple[dict[tuple[str, str], MovableType], list[Skipped]] | None = None
                   ) -> Graph:
    """Read the source and build the graph of `cluster` in `namespace` (`types`: from
    `discover_types`, to save reading the CRDs again)."""
    call = retrier or Retrier()
    found, type_notes = types or await discover_types(source, retrier=call)
    known, skipped = dict(found), list(type_notes)

    async def list_type(t: MovableType) -> list[Obj]:
        try:
            listed = await call(f"list {t.resource.plural}",
                                lambda: source.list(t.resource, namespace))
        except NotFound:
            skipped.append(Skipped(object_key(*t.group_kind, namespace, "*"),
                                   "its CRD exists but the kind is not served (yet)"))
            return []
        except Forbidden as e:
            skipped.append(Skipped(object_key(*t.group_kind, namespace, "*"),
                                   f"listing it is forbidden: {e}"))
            return []
        return listed.items

    namespaced = [t for t in known.values() if t.resource.namespaced]
    lists = await asyncio.gather(*(list_type(t) for t in namespaced))
    pool: list[tuple[MovableType, Obj]] = [(t, o) for t, items in zip(namespaced, lists,
                                                                       strict=True)
                                           for o in items]
    missing: set[str] = set()
    for _ in range(_MAX_FETCH_ROUNDS):
        graph, fetch = build_graph(namespace, cluster, known, pool, skipped=skipped,
                                   missing=missing)
        if not fetch:
            return graph
        for key in fetch:
            group, kind, _, name = key.split("/", 3)
            t = known[(group, kind)]
            try:
                obj = await call(f"get {display(key)}",
                                 partial(source.get, t.resource, name))
            except NotFound:
                missing.add(key)
                continue
            pool.append((t, obj))
    return graph

