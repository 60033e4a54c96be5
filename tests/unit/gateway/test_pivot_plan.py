"""The pivot's pure parts on hand-built clusters: who belongs to the graph (and who is left out,
with the reason), the owners-first order, the preconditions and their messages, the dry-run text.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from agent.kube import Resource
from mgmt_gateway.pivot.graph import build_graph, movable_types, spec_refs
from mgmt_gateway.pivot.model import (
    BLOCK_MOVE_ANNOTATION,
    CLUSTER_NAME_LABEL,
    MOVE_LABEL,
    PAUSED_ANNOTATION,
    PIVOT_PAUSED_ANNOTATION,
    Graph,
    MovableType,
    Node,
    PreconditionFailed,
    display,
    object_key,
)
from mgmt_gateway.pivot.plan import MovePlan, build_plan
from testbed.crds import crd_files, load_documents

Obj = dict[str, Any]
CORE, CP, BOOT, INFRA = ("cluster.x-k8s.io", "controlplane.cluster.x-k8s.io",
                         "bootstrap.cluster.x-k8s.io", "infrastructure.cluster.x-k8s.io")
NS = "site-a"


def _t(group: str, kind: str, *, namespaced: bool = True, status: bool = True) -> MovableType:
    version = "v1beta2" if group else "v1"
    return MovableType(Resource(group, version, kind.lower() + "s", kind, namespaced),
                       status_subresource=status and bool(group))


TYPES: dict[tuple[str, str], MovableType] = {t.group_kind: t for t in (
    _t(CORE, "Cluster"), _t(CORE, "Machine"), _t(CORE, "MachineSet"),
    _t(CORE, "MachineDeployment"), _t(CP, "KubeadmControlPlane"), _t(BOOT, "KubeadmConfig"),
    _t(BOOT, "KubeadmConfigTemplate"), _t(INFRA, "DevCluster"), _t(INFRA, "DevMachine"),
    _t(INFRA, "DevMachineTemplate"), _t(INFRA, "VSphereCluster"),
    _t(INFRA, "VSphereClusterIdentity", namespaced=False), _t("", "Secret"),
    _t("", "ConfigMap"),
)}
_uids = itertools.count(1)


def mk(kind: str, name: str, *, owners: tuple[Obj, ...] = (), cluster: str | None = None,
       spec: Obj | None = None, status: Obj | None = None, ns: str | None = NS,
       labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
       controller: bool = True) -> Obj:
    """An object as the API returns it: apiVersion, kind, uid, ownerReferences."""
    t = next(t for t in TYPES.values() if t.resource.kind == kind)
    meta: Obj = {"name": name, "uid": f"uid-{next(_uids)}", "resourceVersion": "7",
                 "creationTimestamp": "2026-01-01T00:00:00Z"}
    if t.resource.namespaced:
        meta["namespace"] = ns
    lb = dict(labels or {})
    if cluster:
        lb[CLUSTER_NAME_LABEL] = cluster
    if lb:
        meta["labels"] = lb
    if annotations:
        meta["annotations"] = annotations
    if owners:
        meta["ownerReferences"] = [
            {"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"], "controller": controller,
             "blockOwnerDeletion": True} for o in owners]
    obj: Obj = {"apiVersion": t.resource.api_version, "kind": kind, "metadata": meta}
    if spec is not None:
        obj["spec"] = spec
    if status is not None:
        obj["status"] = status
    return obj


def ref(group: str, kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": group, "kind": kind, "name": name}


def provisioned_cluster(name: str = "edge", *, workers: bool = True) -> list[Obj]:
    """The objects CAPI keeps for a provisioned cluster, with their real ownership."""
    cluster = mk("Cluster", name, spec={
        "controlPlaneRef": ref(CP, "KubeadmControlPlane", f"{name}-cp"),
        "infrastructureRef": ref(INFRA, "DevCluster", name)},
        status={"initialization": {"infrastructureProvisioned": True,
                                   "controlPlaneInitialized": True}})
    kcp = mk("KubeadmControlPlane", f"{name}-cp", owners=(cluster,), cluster=name, spec={
        "machineTemplate": {"spec": {"infrastructureRef": ref(INFRA, "DevMachineTemplate",
                                                              f"{name}-cp")}}})
    objs = [
        cluster, kcp,
        mk("DevCluster", name, owners=(cluster,), cluster=name),
        mk("DevMachineTemplate", f"{name}-cp", owners=(cluster,), cluster=name),
        # CA secrets: controlled by the control plane, except one a user brought along.
        *(mk("Secret", f"{name}-{p}", owners=(kcp,), cluster=name)
          for p in ("kubeconfig", "ca", "etcd", "sa")),
        mk("Secret", f"{name}-proxy"),
    ]
    objs += machine(f"{name}-cp-1", kcp, name)
    if workers:
        md = mk("MachineDeployment", f"{name}-md", cluster=name, spec={
            "clusterName": name, "template": {"spec": {
                "bootstrap": {"configRef": ref(BOOT, "KubeadmConfigTemplate", f"{name}-md")},
                "infrastructureRef": ref(INFRA, "DevMachineTemplate", f"{name}-md")}}})
        ms = mk("MachineSet", f"{name}-md-x", owners=(md,), cluster=name)
        objs += [md, ms,
                 mk("KubeadmConfigTemplate", f"{name}-md", owners=(cluster,)),
                 mk("DevMachineTemplate", f"{name}-md", owners=(cluster,)),
                 *machine(f"{name}-md-x-1", ms, name)]
    return objs


def machine(name: str, owner: Obj, cluster: str, *, node: bool = True) -> list[Obj]:
    """A Machine with its parts: infra machine, KubeadmConfig and its bootstrap data Secret."""
    m = mk("Machine", name, owners=(owner,), cluster=cluster,
           spec={"clusterName": cluster,
                 "bootstrap": {"configRef": ref(BOOT, "KubeadmConfig", name)},
                 "infrastructureRef": ref(INFRA, "DevMachine", name)},
           status={"nodeRef": {"name": name}} if node else {"phase": "Provisioned"})
    config = mk("KubeadmConfig", name, owners=(m,), cluster=cluster)
    return [m, config, mk("DevMachine", name, owners=(m,), cluster=cluster),
            mk("Secret", name, owners=(config,), cluster=cluster)]


def pool(objs: list[Obj]) -> list[tuple[MovableType, Obj]]:
    out = []
    for o in objs:
        group = o["apiVersion"].rpartition("/")[0]
        out.append((TYPES[(group, o["kind"])], o))
    return out


def key(o: Obj) -> str:
    group = o["apiVersion"].rpartition("/")[0]
    return object_key(group, o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def by_name(objs: list[Obj], name: str, kind: str | None = None) -> Obj:
    return next(o for o in objs if o["metadata"]["name"] == name
                and (kind is None or o["kind"] == kind))


def graph_of(objs: list[Obj], cluster: str = "edge", **kw: Any) -> Graph:
    graph, fetch = build_graph(NS, cluster, TYPES, pool(objs), **kw)
    assert fetch == []
    return graph


def plan_of(objs: list[Obj], **kw: Any) -> MovePlan:
    return build_plan(graph_of(objs), **kw)


# -- who is moved ------------------------------------------------------------------------------
def test_the_graph_is_what_the_cluster_owns_names_and_labels_nothing_else() -> None:
    edge = provisioned_cluster()
    other = provisioned_cluster("edge-2")  # a neighbour whose names start like ours
    g = graph_of(edge + other)
    assert set(g.nodes) == {key(o) for o in edge}
    assert g.skipped == []
    assert not any(n.shared for n in g.nodes.values())
    proxy = g.nodes[key(by_name(edge, "edge-proxy"))]
    assert proxy.why == "a certificate or kubeconfig Secret of the cluster, by name"
    md = g.nodes[key(by_name(edge, "edge-md"))]
    assert md.why == f"labelled {CLUSTER_NAME_LABEL}=edge"
    data = g.nodes[key(by_name(edge, "edge-cp-1", "Secret"))]
    assert data.why == "owned by KubeadmConfig site-a/edge-cp-1"


def test_a_machine_found_by_spec_cluster_name_alone_is_moved() -> None:
    edge = provisioned_cluster(workers=False)
    cluster = edge[0]
    loose = mk("Machine", "loose", spec={"clusterName": "edge"}, status={"nodeRef": {}})
    part = mk("DevMachine", "loose", owners=(loose,))
    g = graph_of([*edge, loose, part])
    assert g.nodes[key(loose)].why == "spec.clusterName=edge"
    assert g.nodes[key(part)].owners == {loose["metadata"]["uid"]: key(loose)}
    assert g.nodes[key(loose)].after == {key(cluster)}  # an unowned member follows the Cluster


def test_what_is_left_out_is_reported_with_the_reason() -> None:
    edge = provisioned_cluster(workers=False)
    cluster, kcp = edge[0], edge[1]
    stray = mk("Secret", "edge-extra")  # named like ours, nothing else
    addons = mk("ConfigMap", "addons", labels={MOVE_LABEL: ""})
    webhook = mk("Secret", "edge-webhook", owners=(cluster,))
    webhook["metadata"]["ownerReferences"].append(
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "name": "edge-webhook",
         "uid": "not-in-the-graph"})
    kcp["spec"]["kubeadmConfigSpec"] = {"files": [
        {"contentFrom": {"secret": {"name": "user-files", "key": "a"}}},
        {"contentFrom": {"secret": {"name": "far", "namespace": "elsewhere"}}}]}
    kcp["spec"]["remediationRef"] = ref("infrastructure.cluster.x-k8s.io", "FooRemediation",
                                        "r")
    g = graph_of([*edge, stray, addons, webhook])
    skipped = {s.key: s.reason for s in g.skipped}
    assert skipped[key(stray)].startswith("named after cluster edge, but neither one of its")
    assert f"label it {CLUSTER_NAME_LABEL}=edge" in skipped[key(stray)]
    assert skipped[key(addons)] == ("marked for clusterctl move, but not linked to cluster "
                                    "edge: a pivot moves one cluster, not a namespace")
    cert = "cert-manager.io/Certificate/site-a/edge-webhook"
    assert skipped[cert].startswith("owner of Secret site-a/edge-webhook, but not part of")
    assert skipped["/Secret/site-a/user-files"] == (
        "referenced by KubeadmControlPlane site-a/edge-cp "
        "(spec.kubeadmConfigSpec.files[0].contentFrom.secret), but not found in the source")
    assert "from another namespace" in skipped["/Secret/elsewhere/far"]
    foo = "infrastructure.cluster.x-k8s.io/FooRemediation/site-a/r"
    assert "the source serves no such kind" in skipped[foo]
    assert len(skipped) == 6
    # An object also owned from outside the graph is copied without that owner, and kept.
    node = g.nodes[key(webhook)]
    assert node.shared and node.dropped_owners == ["Certificate site-a/edge-webhook"]
    assert node.owners == {cluster["metadata"]["uid"]: key(cluster)}
    plan = build_plan(g)
    assert node not in plan.deletes
    text = plan.describe()
    assert "ownerReferences not carried: Certificate site-a/edge-webhook" in text
    assert f"  - Secret site-a/edge-extra: {skipped[key(stray)]}" in text


def test_referenced_objects_are_shared_created_first_and_never_deleted() -> None:
    edge = provisioned_cluster(workers=False)
    cluster = edge[0]
    identity = mk("VSphereClusterIdentity", "vcenter", ns=None)
    creds = mk("Secret", "vsphere-creds")
    vsphere = mk("VSphereCluster", "edge", owners=(cluster,), cluster="edge",
                 spec={"identityRef": {"kind": "VSphereClusterIdentity", "name": "vcenter"}})
    vsphere2 = mk("VSphereCluster", "edge-b", owners=(cluster,), cluster="edge",
                  spec={"identityRef": {"kind": "Secret", "name": "vsphere-creds"}})
    objs = [*edge, creds, vsphere, vsphere2]
    # Cluster-scoped objects are not listed: discovery is asked to read the referenced one.
    _, fetch = build_graph(NS, "edge", TYPES, pool(objs))
    assert fetch == [key(identity)]
    g = graph_of([*objs, identity])
    ident, secret = g.nodes[key(identity)], g.nodes[key(creds)]
    assert ident.shared and secret.shared
    assert ident.why == "referenced by VSphereCluster site-a/edge (spec.identityRef)"
    assert ident.after == set()  # not after the Cluster: before what references it
    plan = build_plan(g)
    assert plan.ok
    order = [n.key for n in plan.creates]
    assert order.index(key(identity)) < order.index(key(vsphere))
    assert order.index(key(creds)) < order.index(key(vsphere2))
    assert {key(identity), key(creds)}.isdisjoint(n.key for n in plan.deletes)
    assert "VSphereClusterIdentity vcenter (referenced by VSphereCluster site-a/edge " \
        "(spec.identityRef)) [shared: created if missing, kept in the source]" in plan.describe()
    # One that does not exist is reported, not waited for.
    g = graph_of(objs, missing=[key(identity)])
    assert {s.key: s.reason for s in g.skipped}[key(identity)] == (
        "referenced by VSphereCluster site-a/edge (spec.identityRef), but not found in the "
        "source")


# -- order ---------------------------------------------------------------------------------
def test_owners_are_created_first_and_deleted_last() -> None:
    objs = provisioned_cluster()
    plan = plan_of(objs)
    assert plan.ok, plan.problems
    pos = {n.key: i for i, group in enumerate(plan.groups) for n in group}
    assert len(pos) == len(objs)
    assert plan.groups[0][0].is_cluster and len(plan.groups[0]) == 1
    for n in plan.creates:
        for owner in n.owners.values():
            assert pos[owner] < pos[n.key], (display(owner), display(n.key))
        for before in n.after:
            assert pos[before] < pos[n.key]
    chain = ["KubeadmControlPlane", "Machine", "KubeadmConfig", "Secret"]
    got = [next(pos[key(o)] for o in objs if o["metadata"]["name"] == ("edge-cp" if k ==
           "KubeadmControlPlane" else "edge-cp-1") and o["kind"] == k) for k in chain]
    assert got == sorted(got) and len(set(got)) == 4  # a strict chain down to the bootstrap data
    assert pos[key(by_name(objs, "edge-proxy"))] > 0  # an unowned Secret follows the Cluster
    assert plan.deletes == tuple(reversed(plan.creates))
    assert plan.deletes[-1].is_cluster


def test_the_order_does_not_depend_on_listing_order() -> None:
    objs = provisioned_cluster()
    a = plan_of(objs)
    b = plan_of(list(reversed(objs)))
    assert [n.key for n in a.creates] == [n.key for n in b.creates]


def node(k: str, *after: str) -> Node:
    group, kind, ns, name = k.split("/")
    t = TYPES[(group, kind)]
    obj = {"apiVersion": t.resource.api_version, "kind": kind,
           "metadata": {"name": name, "namespace": ns, "uid": k},
           "status": {"initialization": {"infrastructureProvisioned": True,
                                         "controlPlaneInitialized": True}}}
    return Node(k, t, obj, after=set(after))


def test_an_ownership_cycle_is_refused_not_dropped() -> None:
    c = "cluster.x-k8s.io/Cluster/site-a/edge"
    a = "cluster.x-k8s.io/MachineSet/site-a/a"
    b = "cluster.x-k8s.io/MachineDeployment/site-a/b"
    g = Graph(NS, "edge", nodes={k: node(k, *after) for k, after in (
        (c, ()), (a, (c, b)), (b, (a,)))})
    plan = build_plan(g)
    assert plan.problems == ("ownerReferences form a cycle, so no owner can be created first: "
                             "MachineDeployment site-a/b, MachineSet site-a/a",)
    with pytest.raises(PreconditionFailed, match="cycle"):
        plan.check()


# -- preconditions ---------------------------------------------------------------------------
def _set(o: Obj, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        o = o.setdefault(p, {})
    o[last] = value


@pytest.mark.parametrize(("who", "path", "value", "message"), [
    ("edge", "status.initialization.infrastructureProvisioned", False,
     "Cluster site-a/edge is still provisioning its infrastructure "
     "(status.initialization.infrastructureProvisioned is not true)"),
    ("edge", "status.initialization.controlPlaneInitialized", False,
     "the control plane of Cluster site-a/edge is not initialized yet "
     "(status.initialization.controlPlaneInitialized is not true)"),
    ("edge-md-x-1", "status", {"phase": "Provisioned"},
     "Machine site-a/edge-md-x-1 has no Node yet (status.nodeRef is not set): wait until it "
     "has joined"),
    ("edge", "spec.paused", True,
     "Cluster site-a/edge is already paused (spec.paused): something else is holding it; "
     "unpause it before moving"),
    ("edge", "metadata.annotations", {PAUSED_ANNOTATION: ""},
     f"Cluster site-a/edge is already paused (annotation {PAUSED_ANNOTATION}); remove it "
     "before moving"),
    ("edge-md", "metadata.deletionTimestamp", "2026-01-01T00:00:00Z",
     "MachineDeployment site-a/edge-md is being deleted: wait until it is gone"),
])
def test_each_precondition_says_what_to_wait_for_or_fix(who: str, path: str, value: Any,
                                                         message: str) -> None:
    objs = provisioned_cluster()
    kinds = {"edge": "Cluster", "edge-md-x-1": "Machine", "edge-md": "MachineDeployment"}
    _set(by_name(objs, who, kinds[who]), path, value)
    plan = plan_of(objs)
    assert plan.problems == (message,)
    assert not plan.ok
    with pytest.raises(PreconditionFailed) as e:
        plan.check()
    assert e.value.problems == (message,)
    assert str(e.value) == f"cannot move the cluster: {message}"
    assert "Preconditions NOT met:\n  - " + message in plan.describe()


def test_a_pause_of_our_own_is_not_a_problem() -> None:
    """A move that crashed right after pausing must be able to start again."""
    objs = provisioned_cluster()
    objs[0]["spec"]["paused"] = True
    objs[0]["metadata"]["annotations"] = {PIVOT_PAUSED_ANNOTATION: "true"}
    assert plan_of(objs).ok


def test_every_problem_is_listed_at_once() -> None:
    objs = provisioned_cluster()
    objs[0]["status"] = {}
    objs[0]["spec"]["paused"] = True
    plan = plan_of(objs)
    assert len(plan.problems) == 3


def test_a_missing_cluster_is_the_only_problem() -> None:
    g = graph_of(provisioned_cluster("other"))
    assert g.nodes == {}
    plan = build_plan(g)
    assert plan.problems == ("Cluster site-a/edge does not exist in the source",)
    assert plan.creates == ()


def test_the_target_must_serve_every_kind_at_its_version() -> None:
    objs = provisioned_cluster(workers=False)
    served = {gk: frozenset({"v1beta2"}) for gk in TYPES}
    assert plan_of(objs, target_types=served).ok
    del served[("infrastructure.cluster.x-k8s.io", "DevMachine")]
    served[("controlplane.cluster.x-k8s.io", "KubeadmControlPlane")] = frozenset({"v1beta1"})
    del served[("", "Secret")]  # built in: never asked for
    assert plan_of(objs, target_types=served).problems == (
        "the target does not serve DevMachine.infrastructure.cluster.x-k8s.io/v1beta2: "
        "install its provider there first",
        "the target does not serve KubeadmControlPlane.controlplane.cluster.x-k8s.io/v1beta2: "
        "install its provider there first",
    )


def test_objects_blocking_the_move_are_listed_not_refused() -> None:
    objs = provisioned_cluster(workers=False)
    dev = by_name(objs, "edge", "DevCluster")
    dev["metadata"]["annotations"] = {BLOCK_MOVE_ANNOTATION: ""}
    plan = plan_of(objs)
    assert plan.ok and plan.blocking == (key(dev),)
    assert "Waits for clusterctl.cluster.x-k8s.io/block-move to be removed from: " \
        "DevCluster site-a/edge" in plan.describe()


# -- the dry-run text ------------------------------------------------------------------------
def test_describe_reads_as_the_steps_of_the_move() -> None:
    plan = plan_of(provisioned_cluster(workers=False))
    text = plan.describe()
    lines = text.splitlines()
    assert lines[:5] == [
        "Pivot of Cluster site-a/edge: 13 objects (13 moved, 0 shared)",
        "Preconditions: met",
        "1. pause Cluster site-a/edge in the source (spec.paused=true)",
        "2. ensure namespace site-a in the target",
        "3. create in the target, owners first, status carried over:",
    ]
    assert lines[5] == "    1. Cluster site-a/edge (the Cluster) [paused until the end]"
    assert "4. delete from the source, dependents first (finalizers removed):" in lines
    assert lines[-1] == "5. unpause Cluster site-a/edge in the target"
    deletes = lines[lines.index("4. delete from the source, dependents first (finalizers "
                                "removed):") + 1:-1]
    assert deletes[-1] == "      Cluster site-a/edge"
    assert len(deletes) == 13


# -- types and references --------------------------------------------------------------------
def test_types_come_from_the_crds_at_their_storage_version() -> None:
    crds = [d for f in crd_files() for d in load_documents(f)]
    types, skipped = movable_types(crds)
    assert skipped == []
    cluster = types[("cluster.x-k8s.io", "Cluster")]
    assert cluster.resource == Resource("cluster.x-k8s.io", "v1beta2", "clusters", "Cluster")
    assert cluster.status_subresource
    identity = types[("infrastructure.cluster.x-k8s.io", "VSphereClusterIdentity")]
    assert not identity.resource.namespaced
    assert ("addons.cluster.x-k8s.io", "ClusterResourceSet") in types
    assert not types[("", "Secret")].status_subresource
    assert len(types) == len(crds) + 2


def test_a_kind_whose_storage_version_is_not_served_is_reported() -> None:
    crd: Obj = {"metadata": {"name": "foos.infrastructure.cluster.x-k8s.io",
                             "labels": {MOVE_LABEL: ""}},
                "spec": {"group": "infrastructure.cluster.x-k8s.io", "scope": "Namespaced",
                         "names": {"kind": "Foo", "plural": "foos"},
                         "versions": [{"name": "v1", "served": False, "storage": True}]}}
    other = {"spec": {"group": "example.com", "names": {"kind": "Bar", "plural": "bars"},
                      "versions": [{"name": "v1", "served": True, "storage": True}]}}
    types, skipped = movable_types([crd, other])
    assert set(types) == {("", "Secret"), ("", "ConfigMap")}
    assert [str(s) for s in skipped] == [
        "Foo *: the storage version v1 of its CRD is not served, so its objects cannot be read"]
    crd["spec"]["versions"][0]["served"] = True
    types, _ = movable_types([crd])
    assert types[("infrastructure.cluster.x-k8s.io", "Foo")].force_move


def test_spec_references_are_found_wherever_they_are_nested() -> None:
    obj = {"spec": {
        "infrastructureRef": {"apiGroup": "g.x", "kind": "A", "name": "a"},
        "template": {"spec": {"bootstrap": {"configRef": {
            "apiVersion": "g.y/v1beta1", "kind": "B", "name": "b"}}}},
        "identityRef": {"kind": "C", "name": "c"},
        "files": [{"contentFrom": {"secret": {"name": "s", "key": "k"}}}],
        "topology": {"classRef": {"name": "cc", "namespace": "shared"}},
        "selector": {"matchLabels": {"kind": "x"}},
    }}
    assert [(x.path, x.group, x.kind, x.name, x.namespace) for x in spec_refs(obj)] == [
        ("spec.infrastructureRef", "g.x", "A", "a", None),
        ("spec.template.spec.bootstrap.configRef", "g.y", "B", "b", None),
        ("spec.identityRef", None, "C", "c", None),
        ("spec.files[0].contentFrom.secret", "", "Secret", "s", None),
        ("spec.topology.classRef", "cluster.x-k8s.io", "ClusterClass", "cc", "shared"),
    ]
