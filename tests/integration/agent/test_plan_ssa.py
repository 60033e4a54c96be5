"""The planner against real server-side apply: the emulated API server over HTTP holds the
objects, its managedFields are what the planner reads, and plans are carried out the way the
agent's executor must (a FieldsClaim is a merge patch of managedFields with a resourceVersion
precondition, then the forced apply)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.kube import ApiKubeClient, Conflict
from agent.kube import resources as r
from agent.kube.types import Resource
from agent.plan import AGENT_FIELD_MANAGER, Apply, Observed, Plan, plan_topology
from agent.spec import ClusterSpec, capi
from mgmt_gateway.render import capi as render
from testbed.apiserver import ApiServer

NS = "default"
KEY_A = "ssh-ed25519 AAAAC3NzaA ops@site"
KEY_B = "ssh-ed25519 AAAAC3NzaB lost@laptop"
RES = {res.kind: res for res in (r.KUBEADM_CONTROL_PLANE, r.MACHINE_DEPLOYMENT,
                                 r.KUBEADM_CONFIG_TEMPLATE, r.DEV_MACHINE_TEMPLATE)}


def make_spec(**over: Any) -> ClusterSpec:
    base: dict[str, Any] = {
        "clusterName": "edge", "namespace": NS, "revision": 1, "kubernetesVersion": "v1.35.2",
        "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
        "workers": [{"name": "a", "replicas": 2, "machine": {"provider": "dev"}}],
        "sshAuthorizedKeys": [KEY_A, KEY_B],
        "certificates": {"rotateAfter": "2026-12-01T00:00:00Z"},
    }
    base.update(over)
    return ClusterSpec.model_validate(base)


@pytest_asyncio.fixture
async def kc(capi_api: ApiServer, kubeconfig: Path) -> AsyncIterator[ApiKubeClient]:
    # The default user agent, as the gateway's pivot client uses it.
    async with await ApiKubeClient.from_kubeconfig(kubeconfig, request_timeout=5) as c:
        yield c


async def pivot(kc: ApiKubeClient, spec: ClusterSpec) -> None:
    """What the gateway and the pivot leave in the workload cluster: the control-plane
    template and the KubeadmControlPlane, created (not applied) with no field manager."""
    template = capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)
    await kc.create(r.DEV_MACHINE_TEMPLATE, template)
    await kc.create(r.KUBEADM_CONTROL_PLANE,
                    render.control_plane(spec, template["metadata"]["name"]))


async def settle(kc: ApiKubeClient) -> None:
    """Play CAPI: every KubeadmControlPlane and MachineDeployment has rolled out."""
    for res in (r.KUBEADM_CONTROL_PLANE, r.MACHINE_DEPLOYMENT):
        for obj in (await kc.list(res, NS)).items:
            n = obj["spec"].get("replicas", 1)
            status: dict[str, Any] = {"observedGeneration": obj["metadata"]["generation"],
                                      "replicas": n, "readyReplicas": n, "upToDateReplicas": n}
            if res is r.KUBEADM_CONTROL_PLANE:
                status["version"] = obj["spec"]["version"]
            await kc.patch_status(res, obj["metadata"]["name"], {"status": status}, NS,
                                  field_manager="capi")


async def observe(kc: ApiKubeClient) -> Observed:
    def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in items}
    kcps = (await kc.list(r.KUBEADM_CONTROL_PLANE, NS)).items
    return Observed(
        now=datetime.now(UTC), kcp=kcps[0] if kcps else None,
        machine_deployments=by_name((await kc.list(r.MACHINE_DEPLOYMENT, NS)).items),
        infra_templates=by_name((await kc.list(r.DEV_MACHINE_TEMPLATE, NS)).items),
        bootstrap_templates=by_name((await kc.list(r.KUBEADM_CONFIG_TEMPLATE, NS)).items))


async def execute(kc: ApiKubeClient, plan: Plan, *, claims: bool = True) -> int:
    """Carry out a plan as the agent's executor must; returns the number of writes."""
    writes = 0
    for action in plan.actions:
        res: Resource = RES[action.kind]
        if isinstance(action, Apply):
            if action.claim is not None and claims:
                await kc.patch(res, action.name, {"metadata": {
                    "managedFields": list(action.claim.managed_fields),
                    "resourceVersion": action.claim.resource_version}}, NS,
                    field_manager=AGENT_FIELD_MANAGER)
                writes += 1
            await kc.apply(res, action.body, field_manager=AGENT_FIELD_MANAGER, force=True)
        else:
            await kc.delete(res, action.name, action.namespace, uid=action.uid)
        writes += 1
    return writes


async def converge(kc: ApiKubeClient, spec: ClusterSpec, *, claims: bool = True) -> list[int]:
    """Passes until one plans nothing; the writes of each pass."""
    writes = []
    for _ in range(5):
        await settle(kc)
        plan = plan_topology(spec, await observe(kc))
        writes.append(await execute(kc, plan, claims=claims))
        if plan.empty:
            return writes
    raise AssertionError(f"no convergence: {writes}")


def users(kcp: dict[str, Any]) -> Any:
    return (kcp["spec"].get("kubeadmConfigSpec") or {}).get("users")


async def test_after_the_pivot_the_agent_takes_over_then_converged_costs_zero_writes(
        kc: ApiKubeClient) -> None:
    spec = make_spec()
    await pivot(kc, spec)
    kcp = (await observe(kc)).kcp
    assert kcp is not None
    assert {(m["manager"], m["operation"]) for m in kcp["metadata"]["managedFields"]} == {
        (AGENT_FIELD_MANAGER, "Update")}  # the create, named after the client's user agent
    writes = await converge(kc, spec)
    assert writes[-1] == 0 and len(writes) == 2
    kcp = (await observe(kc)).kcp
    assert kcp is not None
    owners = {(m["manager"], m["operation"]): m["fieldsV1"] for m in
              kcp["metadata"]["managedFields"] if not m.get("subresource")}
    assert "f:users" not in str(owners[(AGENT_FIELD_MANAGER, "Update")])
    assert "f:users" in str(owners[(AGENT_FIELD_MANAGER, "Apply")])
    # A resync of the converged cluster writes nothing.
    assert plan_topology(spec, await observe(kc)).actions == ()


async def test_revoking_every_key_and_rotate_after_removes_them_everywhere(
        kc: ApiKubeClient) -> None:
    spec = make_spec()
    await pivot(kc, spec)
    await converge(kc, spec)
    before = await observe(kc)
    old_boot = set(before.bootstrap_templates)
    revoked = make_spec(sshAuthorizedKeys=[], certificates={})
    await converge(kc, revoked)
    after = await observe(kc)
    assert after.kcp is not None
    assert users(after.kcp) is None and "after" not in after.kcp["spec"]["rollout"]
    assert after.kcp["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]  # the gateway's, kept
    md = after.machine_deployments["edge-a"]
    boot = md["spec"]["template"]["spec"]["bootstrap"]["configRef"]["name"]
    assert boot not in old_boot
    assert set(after.bootstrap_templates) == {boot}  # the old one, with the key, collected
    assert KEY_B not in str(after.bootstrap_templates[boot])


async def test_revoking_one_key_right_after_the_pivot(kc: ApiKubeClient) -> None:
    await pivot(kc, make_spec())
    await converge(kc, make_spec(sshAuthorizedKeys=[KEY_A]))
    kcp = (await observe(kc)).kcp
    assert kcp is not None and users(kcp)[0]["sshAuthorizedKeys"] == [KEY_A]


async def test_without_the_claim_a_revoked_key_silently_stays(kc: ApiKubeClient) -> None:
    """Why FieldsClaim exists: the pivot's Update entry co-owns users, so an apply that
    omits them leaves them in place."""
    await pivot(kc, make_spec(sshAuthorizedKeys=[KEY_B]))
    revoked = make_spec(sshAuthorizedKeys=[])
    await settle(kc)
    await execute(kc, plan_topology(revoked, await observe(kc)), claims=False)
    kcp = (await observe(kc)).kcp
    assert kcp is not None and KEY_B in str(users(kcp))
    # The next pass, with the claim carried out, removes it.
    await converge(kc, revoked)
    kcp = (await observe(kc)).kcp
    assert kcp is not None and users(kcp) is None


async def test_a_stale_claim_is_refused(kc: ApiKubeClient) -> None:
    await pivot(kc, make_spec())
    await settle(kc)
    plan = plan_topology(make_spec(), await observe(kc))
    action = next(a for a in plan.actions if isinstance(a, Apply) and a.claim is not None)
    await kc.patch(r.KUBEADM_CONTROL_PLANE, action.name, {"metadata": {"labels": {"x": "y"}}},
                   NS, field_manager="kubectl-edit")
    with pytest.raises(Conflict):
        await execute(kc, Plan((action,)))


@pytest.mark.parametrize(("hand_set", "target", "want"), [
    ("v1.35.2+vmware.1", "v1.35.2", "v1.35.2+vmware.1"),
    ("v1.36.0-rc.1", "v1.36.0", "v1.36.0"),
])
async def test_versions_set_on_site(kc: ApiKubeClient, hand_set: str, target: str,
                                    want: str) -> None:
    await pivot(kc, make_spec())
    await converge(kc, make_spec())
    await kc.patch(r.KUBEADM_CONTROL_PLANE, "edge-control-plane",
                   {"spec": {"version": hand_set}}, NS, field_manager="kubectl-edit")
    await converge(kc, make_spec(kubernetesVersion=target))
    kcp = (await observe(kc)).kcp
    assert kcp is not None and kcp["spec"]["version"] == want
