"""Table tests of the topology planner: what it writes, and above all what it leaves alone."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.plan import Apply, Delete, Observed, Plan, plan_topology
from agent.plan.upgrade import next_step, worker_version
from agent.spec import ClusterSpec, capi

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def make_spec(**over: Any) -> ClusterSpec:
    base: dict[str, Any] = {
        "clusterName": "edge", "namespace": "fleet", "revision": 1,
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 3, "machine": {"provider": "dev"}},
        "workers": [{"name": "a", "replicas": 2, "machine": {"provider": "dev"}}],
    }
    base.update(over)
    return ClusterSpec.model_validate(base)


def settled(obj: dict[str, Any], replicas: int, version: str | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("generation", 1)
    obj["metadata"].setdefault("uid", "u-" + obj["metadata"]["name"])
    obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                     "readyReplicas": replicas, "upToDateReplicas": replicas}
    if version:
        obj["status"]["version"] = version
    return obj


def kcp_for(spec: ClusterSpec, replicas: int | None = None, version: str | None = None,
            template: str | None = None, ssh: bool = True) -> dict[str, Any]:
    version = version or spec.kubernetes_version
    tname = template or capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)["metadata"]["name"]
    fields = capi.control_plane_fields(spec, version, tname)
    fields["spec"]["replicas"] = replicas if replicas is not None else spec.control_plane.replicas
    fields["spec"]["kubeadmConfigSpec"] = fields["spec"].get("kubeadmConfigSpec", {})
    return settled(fields, fields["spec"]["replicas"], version)


def converged(spec: ClusterSpec) -> Observed:
    """Everything exactly as the planner would render it."""
    infra = {}
    boot = {}
    mds = {}
    cp_t = capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)
    infra[cp_t["metadata"]["name"]] = cp_t
    for pool in spec.workers:
        t = capi.machine_template(spec, capi.ROLE_WORKER, pool)
        bt = capi.bootstrap_template(spec, pool)
        infra[t["metadata"]["name"]] = t
        boot[bt["metadata"]["name"]] = bt
        md = capi.machine_deployment(spec, pool, spec.pool_version(pool), t["metadata"]["name"],
                                     bt["metadata"]["name"])
        mds[md["metadata"]["name"]] = settled(md, pool.replicas)
    return Observed(now=NOW, kcp=kcp_for(spec), machine_deployments=mds,
                    infra_templates=infra, bootstrap_templates=boot)


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


@pytest.mark.parametrize(("current", "target", "step"), [
    ("v1.35.2", "v1.35.2", None),
    ("v1.35.2", "v1.35.4", "v1.35.4"),
    ("v1.35.2", "v1.36.1", "v1.36.1"),
    ("v1.33.5", "v1.36.1", "v1.34.0"),
    ("v1.36.1", "v1.35.0", None),
])
def test_next_step(current: str, target: str, step: str | None) -> None:
    assert next_step(current, target) == step


@pytest.mark.parametrize(("target", "current", "cp", "want"), [
    ("v1.36.0", "v1.35.0", "v1.35.2", "v1.35.2"),   # capped by the control plane
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
