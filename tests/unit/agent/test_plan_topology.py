"""Table tests of the topology planner: what it writes, and above all what it leaves alone.

Observed objects carry managedFields made by the API emulator's own server-side apply and
create bookkeeping (the pure functions behind testbed/apiserver), so the planner reads
ownership exactly as it would from a cluster; `run` carries a plan out the same way.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.plan import AGENT_FIELD_MANAGER, Apply, Delete, Observed, Plan, plan_topology
from agent.plan.upgrade import PathGap, next_step, steps, worker_version
from agent.spec import ClusterSpec, capi
from mgmt_gateway.render import capi as render
from testbed.apiserver import fieldmanager as fm
from testbed.apiserver.patch import ListSchema, schema_lists
from testbed.crds import crd_files, load_documents

NOW = datetime(2026, 11, 25, tzinfo=UTC)
T0 = "2026-11-01T00:00:00Z"
AGENT = AGENT_FIELD_MANAGER
KEY_A = "ssh-ed25519 AAAAC3NzaA ops@site"
KEY_B = "ssh-ed25519 AAAAC3NzaB lost@laptop"


def make_spec(**over: Any) -> ClusterSpec:
    base: dict[str, Any] = {
        "clusterName": "edge", "namespace": "fleet", "revision": 1,
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 3, "machine": {"provider": "dev"}},
        "workers": [{"name": "a", "replicas": 2, "machine": {"provider": "dev"}}],
    }
    base.update(over)
    return ClusterSpec.model_validate(base)


# -- objects as the API server would hold them ----------------------------------------------
@functools.cache
def lists_for(kind: str) -> ListSchema:
    for path in crd_files("cluster-api"):
        for doc in load_documents(path):
            if doc.get("kind") == "CustomResourceDefinition" and \
                    doc["spec"]["names"]["kind"] == kind:
                version = next(v for v in doc["spec"]["versions"] if v["name"] == capi.V)
                return schema_lists(version["schema"]["openAPIV3Schema"])
    raise KeyError(kind)


def managed(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(((obj or {}).get("metadata") or {}).get("managedFields") or [])


def applied(live: dict[str, Any] | None, body: dict[str, Any],
            manager: str = AGENT) -> dict[str, Any]:
    """`body` server-side applied (forced) by `manager` onto `live`."""
    obj, _ = fm.server_side_apply(live, body, managed(live), manager=manager, force=True,
                                  api_version=body["apiVersion"], subresource=None,
                                  lists=lists_for(body["kind"]), now=T0)
    return obj


def written(live: dict[str, Any] | None, new: dict[str, Any], manager: str) -> dict[str, Any]:
    """A create (live None) or update by `manager`: an Update-operation entry."""
    obj = copy.deepcopy(new)
    obj["metadata"]["managedFields"] = fm.record_update(
        live, new, managed(live) if live is not None else [], manager=manager,
        api_version=new["apiVersion"], subresource=None, lists=lists_for(new["kind"]), now=T0)
    return obj


def settled(obj: dict[str, Any], replicas: int, version: str | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("generation", 1)
    obj["metadata"].setdefault("uid", "u-" + obj["metadata"]["name"])
    obj["metadata"].setdefault("resourceVersion", "7")
    obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                     "readyReplicas": replicas, "upToDateReplicas": replicas}
    if version:
        obj["status"]["version"] = version
    return obj


def pivoted_kcp(spec: ClusterSpec, template: str | None = None) -> dict[str, Any]:
    """The KubeadmControlPlane as the pivot leaves it: the gateway's rendering, created in the
    workload cluster by a client whose user agent names it "outpost-agent" (an Update entry
    owning every field), never yet applied by the agent."""
    tname = template or capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)["metadata"]["name"]
    return written(None, render.control_plane(spec, tname), AGENT)


def kcp_for(spec: ClusterSpec, replicas: int | None = None, version: str | None = None,
            template: str | None = None) -> dict[str, Any]:
    """The KubeadmControlPlane once the agent has taken it over: the pivot's entry keeps the
    kubeadm configuration only the gateway writes; the agent's Apply owns its fields."""
    version = version or spec.kubernetes_version
    tname = template or capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)["metadata"]["name"]
    gateway = render.control_plane(spec, tname)
    gateway["spec"]["kubeadmConfigSpec"].pop("users", None)
    base = written(None, {**gateway, "spec": {"kubeadmConfigSpec":
                                              gateway["spec"]["kubeadmConfigSpec"]}}, AGENT)
    fields = capi.control_plane_fields(spec, version, tname)
    fields["spec"]["replicas"] = replicas if replicas is not None else spec.control_plane.replicas
    return settled(applied(base, fields), fields["spec"]["replicas"], version)


def converged(spec: ClusterSpec) -> Observed:
    """Everything exactly as the agent would apply it, applied by the agent."""
    infra = {}
    boot = {}
    mds = {}
    cp_t = applied(None, capi.machine_template(spec, capi.ROLE_CONTROL_PLANE))
    infra[cp_t["metadata"]["name"]] = cp_t
    for pool in spec.workers:
        t = applied(None, capi.machine_template(spec, capi.ROLE_WORKER, pool))
        bt = applied(None, capi.bootstrap_template(spec, pool))
        infra[t["metadata"]["name"]] = t
        boot[bt["metadata"]["name"]] = bt
        md = capi.machine_deployment(spec, pool, spec.pool_version(pool), t["metadata"]["name"],
                                     bt["metadata"]["name"])
        mds[md["metadata"]["name"]] = settled(applied(None, md), pool.replicas)
    return Observed(now=NOW, kcp=kcp_for(spec), machine_deployments=mds,
                    infra_templates=infra, bootstrap_templates=boot)


def run(plan: Plan, obs: Observed, *, claims: bool = True) -> Observed:
    """Carry a plan out as the agent's executor does (managedFields rewrite, then a forced
    apply as the agent; deletes), on the emulator's pure functions. `claims=False` is an
    executor that ignores FieldsClaim."""
    kcp = copy.deepcopy(obs.kcp)
    by_kind: dict[str, dict[str, Any]] = {
        "MachineDeployment": copy.deepcopy(dict(obs.machine_deployments)),
        "KubeadmConfigTemplate": copy.deepcopy(dict(obs.bootstrap_templates)),
        "DevMachineTemplate": copy.deepcopy(dict(obs.infra_templates))}
    for action in plan.actions:
        if isinstance(action, Delete):
            by_kind[action.kind].pop(action.name)
            continue
        live = kcp if action.kind == "KubeadmControlPlane" else \
            by_kind[action.kind].get(action.name)
        if live is not None and action.claim is not None and claims:
            assert action.claim.resource_version == live["metadata"].get("resourceVersion")
            live = {**live, "metadata": {**live["metadata"],
                                         "managedFields": list(action.claim.managed_fields)}}
        result = applied(live, action.body)
        if action.kind == "KubeadmControlPlane":
            kcp = result
        else:
            by_kind[action.kind][action.name] = result
    return replace(obs, kcp=kcp, machine_deployments=by_kind["MachineDeployment"],
                   bootstrap_templates=by_kind["KubeadmConfigTemplate"],
                   infra_templates=by_kind["DevMachineTemplate"])


def with_kcp(obs: Observed, kcp: dict[str, Any]) -> Observed:
    return replace(obs, kcp=kcp)


def kinds(plan: Plan) -> list[tuple[str, str, str]]:
    return [("apply" if isinstance(a, Apply) else "delete", a.kind, a.name)
            for a in plan.actions]


def test_converged_cluster_plans_nothing() -> None:
    spec = make_spec(sshAuthorizedKeys=["ssh-ed25519 AAAAC3Nz ops@site"])
    plan = plan_topology(spec, converged(spec))
    assert plan.actions == () and plan.notes == ()


def test_fields_owned_by_others_never_cause_writes() -> None:
    spec = make_spec()
    obs = converged(spec)
    assert obs.kcp is not None
    obs.kcp["spec"]["kubeadmConfigSpec"]["files"] = [{"path": "/etc/x", "content": "y"}]
    obs.kcp["metadata"]["annotations"] = {"someone": "else"}
    for md in obs.machine_deployments.values():
        md["spec"]["template"]["spec"]["minReadySeconds"] = 30
    assert plan_topology(spec, obs).actions == ()


def test_scale_control_plane_1_to_3() -> None:
    spec = make_spec()
    obs = converged(spec)
    obs = Observed(**{**obs.__dict__, "kcp": kcp_for(spec, replicas=1)})
    plan = plan_topology(spec, obs)
    assert kinds(plan) == [("apply", "KubeadmControlPlane", "edge-control-plane")]
    body = plan.actions[0].body  # type: ignore[union-attr]
    assert body["spec"]["replicas"] == 3
    assert set(body["spec"]) == {"replicas", "version", "machineTemplate", "rollout"}
    assert "replicas 1 -> 3" in plan.actions[0].reason


def test_new_pool_creates_templates_then_machine_deployment() -> None:
    spec = make_spec()
    obs = converged(spec)
    spec2 = make_spec(workers=[
        {"name": "a", "replicas": 2, "machine": {"provider": "dev"}},
        {"name": "gpu", "replicas": 1, "machine": {"provider": "dev", "image": "kind:gpu"}}])
    plan = plan_topology(spec2, obs)
    got = kinds(plan)
    assert got[-1] == ("apply", "MachineDeployment", "edge-gpu")
    assert {k for _, k, _ in got[:-1]} == {"DevMachineTemplate", "KubeadmConfigTemplate"}
    md = plan.actions[-1].body  # type: ignore[union-attr]
    assert md["spec"]["template"]["spec"]["version"] == "v1.35.2"
    assert md["spec"]["replicas"] == 1


def test_scaling_a_pool_applies_the_whole_machine_deployment() -> None:
    spec = make_spec()
    obs = converged(spec)
    plan = plan_topology(make_spec(workers=[
        {"name": "a", "replicas": 5, "machine": {"provider": "dev"}}]), obs)
    assert kinds(plan) == [("apply", "MachineDeployment", "edge-a")]
    body = plan.actions[0].body  # type: ignore[union-attr]
    assert body["spec"]["replicas"] == 5
    # A fragment would make server-side apply drop the fields the agent applied at creation.
    assert {"clusterName", "selector", "template"} <= set(body["spec"])
    assert "replicas 2 -> 5" in plan.actions[0].reason


def test_removed_pool_is_deleted_with_its_templates() -> None:
    spec = make_spec()
    obs = converged(spec)
    plan = plan_topology(make_spec(workers=[]), obs)
    got = kinds(plan)
    assert ("delete", "MachineDeployment", "edge-a") in got
    assert sorted(k for op, k, _ in got if op == "delete") == [
        "DevMachineTemplate", "KubeadmConfigTemplate", "MachineDeployment"]


def test_machine_template_change_makes_a_new_template_and_repoints() -> None:
    spec = make_spec()
    obs = converged(spec)
    spec2 = make_spec(workers=[{"name": "a", "replicas": 2,
                                "machine": {"provider": "dev", "image": "new:1"}}])
    plan = plan_topology(spec2, obs)
    new_t = capi.machine_template(spec2, capi.ROLE_WORKER, spec2.workers[0])["metadata"]["name"]
    old_t = capi.machine_template(spec, capi.ROLE_WORKER, spec.workers[0])["metadata"]["name"]
    assert new_t != old_t
    assert kinds(plan)[0] == ("apply", "DevMachineTemplate", new_t)
    md = plan.actions[1].body  # type: ignore[union-attr]
    assert md["spec"]["template"]["spec"]["infrastructureRef"]["name"] == new_t
    # The old template is still referenced by the MachineDeployment as observed: kept for now.
    assert ("delete", "DevMachineTemplate", old_t) not in kinds(plan)


def test_upgrade_control_plane_first_then_workers() -> None:
    spec = make_spec()
    obs = converged(spec)
    target = make_spec(kubernetesVersion="v1.36.1")
    plan = plan_topology(target, obs)
    assert kinds(plan) == [("apply", "KubeadmControlPlane", "edge-control-plane")]
    assert plan.actions[0].body["spec"]["version"] == "v1.36.1"  # type: ignore[union-attr]
    assert any(n.reason == "WaitingForControlPlane" for n in plan.notes)
    # Control plane done: now the workers follow.
    done = Observed(**{**obs.__dict__, "kcp": kcp_for(target)})
    plan = plan_topology(target, done)
    assert kinds(plan) == [("apply", "MachineDeployment", "edge-a")]
    assert plan.actions[0].body["spec"]["template"]["spec"]["version"] == "v1.36.1"  # type: ignore[union-attr]


def test_rollout_in_progress_is_not_interrupted() -> None:
    spec = make_spec()
    obs = converged(spec)
    assert obs.kcp is not None
    obs.kcp["status"]["upToDateReplicas"] = 1
    plan = plan_topology(make_spec(kubernetesVersion="v1.36.0"), obs)
    assert plan.actions == ()
    assert next(n.reason for n in plan.notes) == "WaitingForRollout"


def test_downgrade_is_refused() -> None:
    spec = make_spec(kubernetesVersion="v1.36.0")
    obs = converged(spec)
    plan = plan_topology(make_spec(kubernetesVersion="v1.35.0"), obs)
    assert all(a.kind != "KubeadmControlPlane" for a in plan.actions)
    assert any(n.reason == "DowngradeRefused" for n in plan.notes)


def test_certificate_policy_and_on_demand_rotation() -> None:
    spec = make_spec()
    obs = converged(spec)
    spec2 = make_spec(certificates={"rotateBeforeDays": 60, "rotateAfter": "2026-12-01T00:00:00Z"})
    plan = plan_topology(spec2, obs)
    rollout = plan.actions[0].body["spec"]["rollout"]  # type: ignore[union-attr]
    assert rollout == {"before": {"certificatesExpiryDays": 60}, "after": "2026-12-01T00:00:00Z"}


def test_missing_control_plane_is_a_note_not_a_crash() -> None:
    spec = make_spec()
    plan = plan_topology(spec, Observed(now=NOW))
    assert next(n.reason for n in plan.notes) == "ControlPlaneMissing"


def test_foreign_machine_deployments_are_left_alone() -> None:
    spec = make_spec()
    obs = converged(spec)
    foreign = {"metadata": {"name": "hand-made", "namespace": "fleet", "labels": {}},
               "spec": {"replicas": 1}}
    mds = dict(obs.machine_deployments, **{"hand-made": foreign})
    plan = plan_topology(spec, Observed(**{**obs.__dict__, "machine_deployments": mds}))
    assert plan.actions == ()


def test_template_still_used_by_a_scaling_down_machine_set_is_kept() -> None:
    spec = make_spec()
    obs = converged(spec)
    spec2 = make_spec(workers=[{"name": "a", "replicas": 2,
                                "machine": {"provider": "dev", "image": "new:1"}}])
    new_infra = capi.machine_template(spec2, capi.ROLE_WORKER, spec2.workers[0])
    old_name = capi.machine_template(spec, capi.ROLE_WORKER, spec.workers[0])["metadata"]["name"]
    md = copy.deepcopy(obs.machine_deployments["edge-a"])
    md["spec"]["template"]["spec"]["infrastructureRef"]["name"] = new_infra["metadata"]["name"]
    old_ms = {"metadata": {"name": "edge-a-old"}, "spec": {"replicas": 1, "template": {
        "spec": {"infrastructureRef": {"name": old_name}}}}, "status": {"replicas": 1}}
    infra = dict(obs.infra_templates, **{new_infra["metadata"]["name"]: new_infra})
    o2 = Observed(**{**obs.__dict__, "machine_deployments": {"edge-a": md},
                     "machine_sets": [old_ms], "infra_templates": infra})
    assert ("delete", "DevMachineTemplate", old_name) not in kinds(plan_topology(spec2, o2))
    o3 = Observed(**{**o2.__dict__, "machine_sets": []})
    assert ("delete", "DevMachineTemplate", old_name) in kinds(plan_topology(spec2, o3))


PATH = ("v1.34.7", "v1.35.3")


@pytest.mark.parametrize(("current", "target", "step"), [
    ("v1.35.2", "v1.35.2", None),
    ("v1.35.2", "v1.35.4", "v1.35.4"),
    ("v1.35.2", "v1.36.1", "v1.36.1"),
    ("v1.33.5", "v1.36.1", "v1.34.7"),   # the path's release, never an invented v1.34.0
    ("v1.34.7", "v1.36.1", "v1.35.3"),
    ("v1.34.2", "v1.36.1", "v1.35.3"),   # from any patch of the minor
    ("v1.34.7+vmware.1", "v1.36.1", "v1.35.3"),
    ("v1.36.1", "v1.35.0", None),
])
def test_next_step(current: str, target: str, step: str | None) -> None:
    assert next_step(current, target, PATH) == step


def test_a_path_gap_is_named() -> None:
    with pytest.raises(PathGap) as e:
        next_step("v1.32.4", "v1.36.1", PATH)
    assert e.value.minor == "v1.33"
    assert steps("v1.33.5", "v1.36.1", PATH) == ["v1.34.7", "v1.35.3", "v1.36.1"]


@pytest.mark.parametrize(("target", "current", "cp", "want"), [
    ("v1.36.0", "v1.35.0", "v1.35.2", "v1.35.2"),   # capped by the control plane
    ("v1.36.0", "v1.33.2", "v1.36.0", "v1.36.0"),   # straight there: machines are replaced
    ("v1.36.0", "v1.35.0", "v1.36.0", "v1.36.0"),
    ("v1.36.0", None, "v1.35.0", "v1.35.0"),         # a new pool never outruns the CP
    ("v1.34.0", "v1.36.0", "v1.36.0", "v1.36.0"),    # no downgrade
    ("v1.36.0", "v1.35.0", None, "v1.35.0"),         # CP version unknown: stay
])
def test_worker_version(target: str, current: str | None, cp: str | None, want: str) -> None:
    assert worker_version(target, current, cp) == want


def test_deletes_carry_uid_preconditions() -> None:
    spec = make_spec()
    plan = plan_topology(make_spec(workers=[]), converged(spec))
    md = next(a for a in plan.actions if isinstance(a, Delete) and a.kind == "MachineDeployment")
    assert md.uid == "u-edge-a"


def test_earliest_certificate_expiry_of_live_control_plane_machines() -> None:
    from agent.plan.certs import earliest_expiry

    def machine(name: str, expiry: str | None, cp: bool = True,
                deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {
            "cluster.x-k8s.io/control-plane": ""} if cp else {}}
        if deleting:
            meta["deletionTimestamp"] = "2026-11-25T00:00:00Z"
        return {"metadata": meta, "status": {"certificatesExpiryDate": expiry} if expiry else {}}

    machines = [machine("a", "2027-03-01T00:00:00Z"), machine("b", "2027-01-01T00:00:00Z"),
                machine("w", "2026-12-01T00:00:00Z", cp=False),
                machine("old", "2026-12-05T00:00:00Z", deleting=True), machine("new", None)]
    assert earliest_expiry(machines) == datetime(2027, 1, 1, tzinfo=UTC)
    assert earliest_expiry([]) is None


# -- full intent: what the spec stops saying is removed ---------------------------------------
def _md_refs(md: dict[str, Any]) -> tuple[str, str]:
    t = md["spec"]["template"]["spec"]
    return t["infrastructureRef"]["name"], t["bootstrap"]["configRef"]["name"]


@pytest.mark.parametrize(("before", "after"), [
    ([KEY_A, KEY_B], [KEY_A]),   # one key revoked: the list the agent applies changes
    ([KEY_B], []),               # the last key revoked: users leaves the body altogether
])
def test_revoked_ssh_key_leaves_the_control_plane_and_every_pool(
        before: list[str], after: list[str]) -> None:
    old = make_spec(sshAuthorizedKeys=before, workers=[
        {"name": "a", "replicas": 2, "machine": {"provider": "dev"}},
        {"name": "b", "replicas": 1, "machine": {"provider": "dev"}}])
    new = old.model_copy(update={"ssh_authorized_keys": tuple(after)})
    obs = converged(old)
    plan = plan_topology(new, obs)

    kcp = next(a for a in plan.actions if isinstance(a, Apply) and a.kind == "KubeadmControlPlane")
    users = capi.ssh_users(new) or None
    assert (kcp.body["spec"].get("kubeadmConfigSpec") or {}).get("users") == users
    assert "SSH users" in kcp.reason
    for pool in new.workers:
        boot = capi.bootstrap_template(new, pool)["metadata"]["name"]
        assert ("apply", "KubeadmConfigTemplate", boot) in kinds(plan)
        md = next(a for a in plan.actions if a.kind == "MachineDeployment"
                  and a.name == capi.md_name(new, pool))
        assert _md_refs(md.body)[1] == boot  # type: ignore[union-attr]
    # Templates first, owners after: the new bootstrap templates exist before they are used.
    order = [k for _, k, _ in kinds(plan)]
    assert order.index("KubeadmConfigTemplate") < order.index("MachineDeployment")

    done = run(plan, obs)
    assert done.kcp is not None
    assert done.kcp["spec"]["kubeadmConfigSpec"].get("users") == users
    assert KEY_B not in str(done.kcp["spec"])
    assert "clusterConfiguration" in done.kcp["spec"]["kubeadmConfigSpec"]  # not the agent's
    # Converged: nothing more to write, and once the old MachineSets are gone, the old
    # bootstrap templates (the ones with the revoked key) are collected.
    mds = {n: settled(md, md["spec"]["replicas"]) for n, md in done.machine_deployments.items()}
    done = replace(done, kcp=settled(done.kcp, 3, "v1.35.2"), machine_deployments=mds)
    again = plan_topology(new, done)
    stale = sorted(n for n, t in obs.bootstrap_templates.items())
    assert kinds(again) == [("delete", "KubeadmConfigTemplate", n) for n in stale]
    assert all(KEY_B not in str(t) for n, t in run(again, done).bootstrap_templates.items())
    assert plan_topology(new, run(again, done)).actions == ()


def test_removed_rotate_after_is_cleared() -> None:
    old = make_spec(certificates={"rotateAfter": "2026-12-01T00:00:00Z"})
    obs = converged(old)
    assert obs.kcp is not None and obs.kcp["spec"]["rollout"]["after"]
    new = make_spec()
    plan = plan_topology(new, obs)
    assert kinds(plan) == [("apply", "KubeadmControlPlane", "edge-control-plane")]
    body = plan.actions[0].body  # type: ignore[union-attr]
    assert body["spec"]["rollout"] == {"before": {"certificatesExpiryDays": 30}}
    assert "rollout.after removed" in plan.actions[0].reason
    done = run(plan, obs)
    assert done.kcp is not None and "after" not in done.kcp["spec"]["rollout"]
    assert plan_topology(new, done).actions == ()


def test_converged_with_exact_ownership_writes_nothing_even_with_vendor_build() -> None:
    spec = make_spec(sshAuthorizedKeys=[KEY_A],
                     certificates={"rotateAfter": "2026-12-01T00:00:00Z"})
    obs = converged(spec)
    # Someone on site set a vendor build of the same release; CAPI accepts it.
    kcp = kcp_for(spec, version="v1.35.2+vmware.1")
    plan = plan_topology(spec, with_kcp(obs, kcp))
    assert plan.actions == () and plan.notes == ()


def test_agent_owning_a_field_it_no_longer_applies_is_an_apply() -> None:
    spec = make_spec()
    obs = converged(spec)
    name = capi.md_name(spec, spec.workers[0])
    md = obs.machine_deployments[name]
    # An older agent applied one more label: same values otherwise, but the agent owns more.
    body = copy.deepcopy(md)
    body["metadata"] = {"name": name, "namespace": "fleet",
                        "labels": {**md["metadata"]["labels"], "outpost.io/old": "x"}}
    body.pop("status")
    extra = settled(applied(md, body), 2)
    obs = replace(obs, machine_deployments={name: extra})
    plan = plan_topology(spec, obs)
    assert kinds(plan) == [("apply", "MachineDeployment", name)]
    assert "outpost.io/old" not in run(plan, obs).machine_deployments[name]["metadata"]["labels"]


def test_value_changed_by_someone_else_is_an_apply() -> None:
    spec = make_spec(sshAuthorizedKeys=[KEY_A])
    obs = converged(spec)
    assert obs.kcp is not None
    edited = copy.deepcopy(obs.kcp)
    edited["spec"]["kubeadmConfigSpec"]["users"][0]["sshAuthorizedKeys"].append(KEY_B)
    plan = plan_topology(spec, with_kcp(obs, written(obs.kcp, edited, "kubectl-edit")))
    assert kinds(plan) == [("apply", "KubeadmControlPlane", "edge-control-plane")]
    assert KEY_B not in str(run(plan, with_kcp(obs, edited)).kcp)


def test_after_the_pivot_the_agent_claims_its_fields_once_then_writes_nothing() -> None:
    spec = make_spec(sshAuthorizedKeys=[KEY_A, KEY_B], controlPlane={
        "replicas": 1, "machine": {"provider": "dev"}})
    obs = replace(converged(spec), kcp=settled(pivoted_kcp(spec), 1, "v1.35.2"))
    plan = plan_topology(spec, obs)
    assert kinds(plan) == [("apply", "KubeadmControlPlane", "edge-control-plane")]
    claim = plan.actions[0].claim  # type: ignore[union-attr]
    assert claim is not None and claim.resource_version == "7"
    assert ("outpost-agent", "spec.kubeadmConfigSpec.users") in claim.moved
    assert all(not f.startswith("spec.kubeadmConfigSpec.") or f.endswith(".users")
               for _, f in claim.moved)  # the kubeadm configuration stays the gateway's
    done = run(plan, obs)
    assert plan_topology(spec, done).actions == ()


@pytest.mark.parametrize("claims", [True, False])
def test_co_owned_ssh_users_are_removed_only_with_the_claim(claims: bool) -> None:
    old = make_spec(sshAuthorizedKeys=[KEY_B], controlPlane={
        "replicas": 1, "machine": {"provider": "dev"}})
    new = old.model_copy(update={"ssh_authorized_keys": ()})
    # Straight after the pivot, the first spec the agent sees has already revoked the key;
    # the gateway's rendering carried it, so the pivot's Update entry owns users.
    obs = replace(converged(old), kcp=settled(pivoted_kcp(old), 1, "v1.35.2"))
    plan = plan_topology(new, obs)
    kcp = next(a for a in plan.actions if a.kind == "KubeadmControlPlane")
    assert isinstance(kcp, Apply) and kcp.claim is not None
    assert "users" not in kcp.body["spec"].get("kubeadmConfigSpec", {})
    done = run(plan, obs, claims=claims)
    assert done.kcp is not None
    assert (KEY_B in str(done.kcp["spec"])) is not claims


def test_a_foreign_co_owner_keeps_the_field_and_the_plan_says_so() -> None:
    old = make_spec(sshAuthorizedKeys=[KEY_B])
    obs = converged(old)
    assert obs.kcp is not None
    # A person server-side applied the same users under their own manager.
    mine = {"apiVersion": obs.kcp["apiVersion"], "kind": "KubeadmControlPlane",
            "metadata": {"name": "edge-control-plane", "namespace": "fleet"},
            "spec": {"kubeadmConfigSpec": {"users": capi.ssh_users(old)}}}
    obs = with_kcp(obs, settled(applied(obs.kcp, mine, "kubectl"), 3, "v1.35.2"))
    plan = plan_topology(make_spec(), obs)
    kcp = next(a for a in plan.actions if a.kind == "KubeadmControlPlane")
    assert isinstance(kcp, Apply) and kcp.claim is None  # a person's manager is not inherited
    note = next(n for n in plan.notes if n.reason == "FieldKeptByOtherManager")
    assert "spec.kubeadmConfigSpec.users" in note.message and "kubectl" in note.message


# -- hold-backs under full intent ----------------------------------------------------------
def _rolling(kcp: dict[str, Any]) -> dict[str, Any]:
    kcp = copy.deepcopy(kcp)
    kcp["status"]["upToDateReplicas"] = 1
    return kcp


def test_rollout_in_progress_keeps_the_applied_rollout_after_and_users() -> None:
    old = make_spec(sshAuthorizedKeys=[KEY_A, KEY_B],
                    certificates={"rotateAfter": "2026-12-01T00:00:00Z"})
    obs = converged(old)
    assert obs.kcp is not None
    obs = with_kcp(obs, _rolling(obs.kcp))
    new = make_spec(sshAuthorizedKeys=[KEY_A], certificates={"rotateAfter": "2027-01-01T00:00:00Z"})
    plan = plan_topology(new, obs)
    # Nothing the agent applied changes while the rollout runs: no write at all.
    assert [a for a in plan.actions if a.kind == "KubeadmControlPlane"] == []
    assert sum(n.reason == "WaitingForRollout" for n in plan.notes) == 2


def test_rollout_in_progress_never_adopts_someone_elses_rollout_after() -> None:
    spec = make_spec()
    obs = converged(spec)
    assert obs.kcp is not None
    edited = copy.deepcopy(obs.kcp)
    edited["spec"]["rollout"]["after"] = "2026-11-20T00:00:00Z"
    obs = with_kcp(obs, _rolling(written(obs.kcp, edited, "kubectl-edit")))
    plan = plan_topology(make_spec(certificates={"rotateAfter": "2027-01-01T00:00:00Z"}), obs)
    assert plan.actions == ()  # held: and the agent does not take over the person's value
    assert any(n.reason == "WaitingForRollout" for n in plan.notes)


def test_rollout_in_progress_still_clears_a_dropped_rotate_after() -> None:
    obs = converged(make_spec(certificates={"rotateAfter": "2026-12-01T00:00:00Z"}))
    assert obs.kcp is not None
    plan = plan_topology(make_spec(), with_kcp(obs, _rolling(obs.kcp)))
    assert kinds(plan) == [("apply", "KubeadmControlPlane", "edge-control-plane")]
    assert "after" not in plan.actions[0].body["spec"]["rollout"]  # type: ignore[union-attr]


# -- versions read from the cluster ------------------------------------------------------------
@pytest.mark.parametrize(("live", "target", "want", "note"), [
    ("v1.35.2+vmware.1", "v1.35.2", None, None),           # same release: keep the vendor build
    ("v1.35.2+vmware.1", "v1.35.3", "v1.35.3", "Upgrading"),
    ("v1.35.2+vmware.1", "v1.37.1", "v1.36.4", "Upgrading"),  # one minor per step, the path's
    ("v1.35.2+vmware.1", "v1.35.1", None, "DowngradeRefused"),
    ("v1.36.0-rc.1", "v1.36.0", "v1.36.0", "Upgrading"),   # a release outranks its rc
    ("v1.36.0-rc.1", "v1.35.2", None, "DowngradeRefused"),
    ("1.35.2", "v1.35.2", None, None),                     # CAPI tolerates a missing v
])
def test_control_plane_versions_as_capi_parses_them(live: str, target: str, want: str | None,
                                                    note: str | None) -> None:
    extra = {"upgrade": {"path": ["v1.36.4"]}} if target == "v1.37.1" else {}
    spec = make_spec(kubernetesVersion=target, workers=[], **extra)
    obs = with_kcp(converged(spec), kcp_for(spec, version=live))
    plan = plan_topology(spec, obs)
    versions = [a.body["spec"]["version"] for a in plan.actions  # type: ignore[union-attr]
                if a.kind == "KubeadmControlPlane"]
    assert versions == ([want] if want else [])
    assert [n.reason for n in plan.notes] == ([note] if note else [])


def test_workers_follow_a_control_plane_running_a_vendor_build() -> None:
    spec = make_spec()
    obs = with_kcp(converged(spec), kcp_for(spec, version="v1.35.2+vmware.1"))
    assert plan_topology(spec, obs).actions == ()
    target = make_spec(kubernetesVersion="v1.35.4")
    obs = with_kcp(obs, kcp_for(target, version="v1.35.4+vmware.1"))
    plan = plan_topology(target, obs)
    assert kinds(plan) == [("apply", "MachineDeployment", "edge-a")]
    # Same release as the control plane: the pool takes the spec's version, not the build.
    assert plan.actions[0].body["spec"]["template"]["spec"]["version"] == "v1.35.4"  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["latest", "v1.35.x", "v1.35.2-rc.01"])
def test_unreadable_control_plane_version_is_a_note_and_the_rest_still_plans(bad: str) -> None:
    spec = make_spec(kubernetesVersion="v1.36.0")
    obs = with_kcp(converged(make_spec()), kcp_for(make_spec(), replicas=1, version=bad))
    plan = plan_topology(spec, obs)
    kcp = next(a for a in plan.actions if a.kind == "KubeadmControlPlane")
    assert kcp.body["spec"]["version"] == bad  # type: ignore[union-attr]
    assert kcp.body["spec"]["replicas"] == 3  # type: ignore[union-attr]
    assert any(n.reason == "VersionUnreadable" and bad in n.message for n in plan.notes)
    assert all(a.kind != "MachineDeployment" for a in plan.actions)  # no ceiling: pools wait


def test_unreadable_pool_or_status_version_is_a_note() -> None:
    spec = make_spec()
    obs = converged(spec)
    assert obs.kcp is not None
    kcp = copy.deepcopy(obs.kcp)
    kcp["status"]["version"] = "???"
    plan = plan_topology(spec, with_kcp(obs, kcp))
    assert plan.actions == ()
    assert [n.reason for n in plan.notes] == ["VersionUnreadable"]
    md = copy.deepcopy(obs.machine_deployments["edge-a"])
    md["spec"]["template"]["spec"]["version"] = "next-tuesday"
    plan = plan_topology(make_spec(workers=[{"name": "a", "replicas": 4, "machine": {
        "provider": "dev"}}]), replace(obs, machine_deployments={"edge-a": md}))
    body = plan.actions[0].body  # type: ignore[union-attr]
    assert body["spec"]["replicas"] == 4
    assert body["spec"]["template"]["spec"]["version"] == "next-tuesday"
    assert [n.reason for n in plan.notes] == ["VersionUnreadable"]


def test_rollout_in_progress_does_not_hold_what_the_object_already_says() -> None:
    spec = make_spec(sshAuthorizedKeys=[KEY_A])
    kcp = written(None, render.control_plane(spec, capi.machine_template(
        spec, capi.ROLE_CONTROL_PLANE)["metadata"]["name"]), "clusterctl")
    kcp = _rolling(settled(kcp, 3, "v1.35.2"))
    plan = plan_topology(spec, with_kcp(converged(spec), kcp))
    body = next(a.body for a in plan.actions if isinstance(a, Apply)  # agent takes it on
                and a.kind == "KubeadmControlPlane")
    assert body["spec"]["kubeadmConfigSpec"]["users"] == capi.ssh_users(spec)
    assert body["spec"]["rollout"] == {"before": {"certificatesExpiryDays": 30}}
    assert plan.notes == ()
