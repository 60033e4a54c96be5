"""Upgrades along a given path, planned pass by pass as the agent would (each pass's plan carried
out, then Cluster API completing the rollout): the control plane one minor at a time through the
path's exact releases, each step to completion; the pools once it is done, straight to its
version, one at a time in the given order; the kubelet skew respected; a gap refused."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from agent.plan.topology import plan_topology
from agent.plan.types import Observed, Plan
from agent.spec import ClusterSpec, capi
from tests.unit.agent.test_plan_topology import converged, kinds, make_spec, run

POOLS = [{"name": n, "replicas": 2, "machine": {"provider": "dev"}} for n in ("a", "b")]


def spec(version: str, **over: Any) -> ClusterSpec:
    return make_spec(**{"kubernetesVersion": version, "workers": POOLS, **over})


def complete(obs: Observed) -> Observed:
    """Cluster API finishing every rollout: the control plane runs its spec.version, every
    machine of every pool is up to date."""
    kcp = copy.deepcopy(obs.kcp)
    assert kcp is not None
    kcp["status"]["version"] = kcp["spec"]["version"]
    return replace(obs, kcp=kcp)


def rolling(obs: Observed, pool: str) -> Observed:
    """A pool whose machines are being replaced."""
    mds = copy.deepcopy(dict(obs.machine_deployments))
    mds[f"edge-{pool}"]["status"]["upToDateReplicas"] = 0
    return replace(obs, machine_deployments=mds)


def versions(obs: Observed) -> tuple[str, dict[str, str]]:
    assert obs.kcp is not None
    return obs.kcp["spec"]["version"], {
        md["metadata"]["labels"][capi.LABEL_POOL]: md["spec"]["template"]["spec"]["version"]
        for md in obs.machine_deployments.values()}


def notes(plan: Plan) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in plan.notes:
        out[n.reason] = f"{out[n.reason]}; {n.message}" if n.reason in out else n.message
    return out


def test_v1_33_to_v1_36_along_the_path_control_plane_first_then_pools_one_at_a_time() -> None:
    obs = complete(converged(spec("v1.33.5")))
    target = spec("v1.36.1", upgrade={"path": ["v1.34.7", "v1.35.3"], "order": ["b", "a"]})
    seen = []
    for _ in range(12):
        plan = plan_topology(target, obs)
        if not plan.actions:
            break
        obs = complete(run(plan, obs))
        seen.append(versions(obs))
    assert seen == [
        ("v1.34.7", {"a": "v1.33.5", "b": "v1.33.5"}),   # the control plane, step by step
        ("v1.35.3", {"a": "v1.33.5", "b": "v1.33.5"}),
        ("v1.36.1", {"a": "v1.33.5", "b": "v1.33.5"}),
        ("v1.36.1", {"a": "v1.33.5", "b": "v1.36.1"}),   # then pool b (first in the order)
        ("v1.36.1", {"a": "v1.36.1", "b": "v1.36.1"}),   # then a
    ]
    assert not plan_topology(target, obs).actions  # converged: nothing left to do


def test_pools_wait_while_the_control_plane_upgrades_and_say_so() -> None:
    obs = complete(converged(spec("v1.33.5")))
    target = spec("v1.36.1", upgrade={"path": ["v1.34.7", "v1.35.3"]})
    plan = plan_topology(target, obs)
    assert kinds(plan)[-1] == ("apply", "KubeadmControlPlane", "edge-control-plane")
    assert ("control plane: step 1 of 3, v1.33.5 -> v1.34.7 (route v1.34.7 -> v1.35.3 -> "
            "v1.36.1)") in notes(plan)["Upgrading"]
    rolling_cp = run(plan, obs)  # the step rolling: status still at the old version
    assert rolling_cp.kcp is not None
    rolling_cp.kcp["status"]["upToDateReplicas"] = 1
    assert "step 1 of 3, rolling v1.33.5 -> v1.34.7" in notes(plan_topology(
        target, rolling_cp))["Upgrading"]
    obs = complete(run(plan, obs))
    plan = plan_topology(target, obs)
    assert "pool a stays at v1.33.5 until the control plane reaches v1.36.1" in notes(plan)[
        "WaitingForControlPlane"]
    assert "step 2 of 3, v1.34.7 -> v1.35.3" in notes(plan)["Upgrading"]
    assert all(a.kind != "MachineDeployment" for a in plan.actions)


def test_one_pool_at_a_time_waits_for_the_one_rolling() -> None:
    obs = complete(converged(spec("v1.36.1")))
    obs = rolling(obs, "a")  # pool a is replacing its machines (e.g. a template change)
    target = spec("v1.36.1", upgrade={"workers": "OneAtATime"},
                  workers=[{**p, "machine": {"provider": "dev", "image": "os:2"}} for p in POOLS])
    plan = plan_topology(target, obs)
    assert all(a.kind != "MachineDeployment" for a in plan.actions)
    msg = notes(plan)["WaitingForPool"]
    assert "pool b: machine template change waits for pool a to finish" in msg
    # All together (the default): b goes while a rolls.
    plan = plan_topology(spec("v1.36.1", workers=target.model_dump(by_alias=True)["workers"]),
                         obs)
    assert ("apply", "MachineDeployment", "edge-b") in kinds(plan)


def test_the_control_plane_waits_for_pools_beyond_the_kubelet_skew() -> None:
    # Pools left at v1.32 (three minors behind v1.35): the next step, v1.36, would be four.
    obs = complete(converged(spec("v1.35.2", workers=[
        {**p, "version": "v1.32.9"} for p in POOLS])))
    target = spec("v1.37.0", upgrade={"path": ["v1.36.4"]})
    plan = plan_topology(target, obs)
    assert "control-plane upgrade to v1.36.4 waits: pool a runs v1.32.9, pool b runs v1.32.9" \
        in notes(plan)["WaitingForWorkers"]
    assert all(a.kind != "KubeadmControlPlane" or a.body["spec"]["version"] == "v1.35.2"
               for a in plan.actions)  # type: ignore[union-attr]
    # The pools move up to the control plane's version first.
    assert {a.body["spec"]["template"]["spec"]["version"] for a in plan.actions  # type: ignore[union-attr]
            if a.kind == "MachineDeployment"} == {"v1.35.2"}


def test_a_gap_in_the_path_is_refused_with_the_minor_to_add() -> None:
    obs = complete(converged(spec("v1.33.5")))
    plan = plan_topology(spec("v1.36.1", upgrade={"path": ["v1.35.3"]}), obs)
    assert all(a.kind != "KubeadmControlPlane" for a in plan.actions)
    assert "names no release of v1.34" in notes(plan)["UpgradePathGap"]


def test_pool_rollout_limits_reach_the_machine_deployment() -> None:
    s = spec("v1.35.2", workers=[{**POOLS[0], "rollout": {"maxSurge": 0,
                                                          "maxUnavailable": "25%"}}])
    md = capi.machine_deployment(s, s.workers[0], "v1.35.2", "t", "b")
    assert md["spec"]["rollout"] == {"strategy": {"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": 0, "maxUnavailable": "25%"}}}


def test_a_pinned_pool_catching_up_on_the_skew_goes_to_its_pin() -> None:
    # Control plane at v1.36, pool pinned at v1.33; the new spec goes to v1.37 and pins the
    # pool at v1.34: the pool moves to v1.34 (its pin), not to the control plane's v1.36.
    pinned = [{**POOLS[0], "version": "v1.33.4"}]
    obs = complete(converged(spec("v1.36.2", workers=pinned)))
    target = spec("v1.37.1", workers=[{**POOLS[0], "version": "v1.34.6"}])
    plan = plan_topology(target, obs)
    (md,) = [a for a in plan.actions if a.kind == "MachineDeployment"]
    assert md.body["spec"]["template"]["spec"]["version"] == "v1.34.6"  # type: ignore[union-attr]
