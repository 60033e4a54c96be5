"""One bad object, one failing write or one unexpected exception never stops the agent: the
rest of the cluster is reconciled, the failure is reported, and the agent stays live."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from agent.kube import ApiKubeClient
from agent.reconcile import PassResult, TopologyController
from agent.runtime.supervisor import Supervisor
from agent.spec import ClusterSpec
from tests.fixtures.site import CLUSTER, NS, Site, eventually, make_spec

MERGE = "application/merge-patch+json"


def md_replicas(site: Site, pool: str) -> int | None:
    md = site.obj("machinedeployments", f"edge-1-{pool}")
    return md["spec"]["replicas"] if md else None


def condition(agent: Any, ctype: str) -> Any:
    status = agent.agent.last_status
    return next((c for c in status.conditions if c.type == ctype), None) if status else None


async def test_one_object_rejected_for_good_does_not_block_the_others(site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, workers={"a": 1, "b": 1}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=40, what="converged")
    # Every write to pool a fails from now on; pool b and the control plane must still move.
    site.api.faults.fail_next(1_000_000, 500, path="machinedeployments/edge-1-a",
                              method="PATCH")
    await site.publish(make_spec(revision=2, cp=3, workers={"a": 2, "b": 3}))
    await eventually(lambda: md_replicas(site, "b") == 3, timeout=40, what="pool b scaled")
    await eventually(
        lambda: (site.obj("kubeadmcontrolplanes", "edge-1-control-plane") or {})
        .get("spec", {}).get("replicas") == 3, timeout=40, what="control plane scaled")
    assert md_replicas(site, "a") == 1
    await eventually(lambda: (c := condition(agent, "Reconciled")) is not None
                     and c.status == "False" and "edge-1-a" in c.message,
                     what="the failure reported in the status")
    assert agent.agent.applied_revision == 1
    assert agent.agent._liveness()[0]
    site.api.faults.clear()
    await eventually(lambda: agent.agent.applied_revision == 2, timeout=60,
                     what="converged once the API accepts pool a")
    assert md_replicas(site, "a") == 2
    assert condition(agent, "Reconciled").status == "True"
    assert await agent.shutdown() == 0


async def test_plan_notes_are_conditions_and_events_cleared_when_they_stop_holding(
        site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, workers={"a": 1}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=40, what="converged")
    await site.publish(make_spec(revision=2, workers={"a": 1}, version="v1.34.1"))
    await eventually(lambda: (c := condition(agent, "DowngradeRefused")) is not None
                     and c.status == "True" and "v1.34.1" in c.message,
                     what="DowngradeRefused condition")
    assert agent.agent.last_status is not None
    assert agent.agent.last_status.applied_revision == 1

    async def events(reason: str) -> list[Any]:
        async with site.client() as api:
            found = await client.CoreV1Api(api).list_namespaced_event("outpost-system")
        return [e for e in found.items if e.reason == reason]

    [refused] = await eventually(lambda: events("DowngradeRefused"), what="a Kubernetes Event")
    assert refused.type == "Warning" and "v1.34.1" in refused.message
    await site.publish(make_spec(revision=3, workers={"a": 1}))
    await eventually(lambda: agent.agent.applied_revision == 3, timeout=40, what="revision 3")
    await eventually(lambda: condition(agent, "DowngradeRefused") is None,
                     what="the condition cleared")
    await eventually(lambda: events("ConditionCleared"), what="an Event for the clearing")
    assert await agent.shutdown() == 0


async def test_applied_revision_survives_a_restart_and_is_reported_before_any_pass(
        site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, workers={"a": 1}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=40, what="converged")
    assert await agent.shutdown() == 0
    await site.nats.stop()
    # Not the leader, so no pass runs at all: what it reports comes from disk only.
    site.api.faults.fail_next(1_000_000, 503, path="leases")
    again = await site.start_agent()
    await eventually(lambda: again.agent.ready, what="agent ready")
    assert again.agent.controller.passes == 0
    assert again.agent.applied_revision == 1
    assert again.agent.last_status is not None
    assert again.agent.last_status.applied_revision == 1
    assert again.agent.last_status.observed_revision == 1
    site.api.faults.clear()
    assert await again.shutdown() == 0


async def test_a_pass_that_raises_is_retried_and_the_worker_goes_on(site: Site) -> None:
    """An exception in a pass (here from the desired-state source) or in the pass callback is
    caught, counted and requeued; later passes run and reach the cluster."""
    spec = make_spec(revision=1, cp=3)
    calls = 0

    def desired() -> ClusterSpec:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ValueError("not a Kubernetes version: 'v1.35.2+vmware.1'")
        return spec

    results: list[PassResult] = []

    async def on_pass(result: PassResult) -> None:
        results.append(result)
        if len(results) == 1:
            raise RuntimeError("a broken status callback")

    kube = await ApiKubeClient.from_kubeconfig(site.kubeconfig)
    controller = TopologyController(kube, desired, on_pass=on_pass, resync=60.0)
    sup = Supervisor(component="test", backoff_initial=0.01, backoff_max=0.05)
    sup.add("worker", lambda: controller.worker(sup.heartbeat("worker")), liveness=60)
    running = asyncio.create_task(sup.run())
    try:
        controller.trigger("test")
        await eventually(
            lambda: (site.obj("kubeadmcontrolplanes", "edge-1-control-plane") or {})
            .get("spec", {}).get("replicas") == 3, timeout=40, what="a later pass applied")
        assert [r.crashed for r in results[:2]] == [True, True]
        assert "v1.35.2+vmware.1" in (results[0].error or "")
        assert controller.crashes == 2
        assert sup.liveness()[0]
        assert sup.restarts.labels(task="worker")._value.get() == 0  # the worker never died
    finally:
        await sup.stop()
        await running
        await kube.close()


async def test_kcp_version_with_build_metadata_set_on_site_never_stops_reconciling(
        site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, workers={"a": 1}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=40, what="converged")
    async with site.client() as api:
        await client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "controlplane.cluster.x-k8s.io", "v1beta2", NS, "kubeadmcontrolplanes",
            f"{CLUSTER}-control-plane", {"spec": {"version": "v1.35.2+vmware.1"}},
            field_manager="kubectl-edit", _content_type=MERGE)
    await site.publish(make_spec(revision=2, workers={"a": 3}))
    await eventually(lambda: md_replicas(site, "a") == 3, timeout=40,
                     what="the worker scale after the hand edit")
    assert agent.agent._liveness()[0]
    assert await agent.shutdown() == 0


async def test_healthz_fails_while_a_pass_is_stuck(site: Site) -> None:
    agent = await site.start_agent(liveness_seconds=1.0)
    await site.publish(make_spec(revision=1, workers={"a": 1}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=40, what="converged")
    url = f"http://127.0.0.1:{agent.agent.http_port}/healthz"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
        # The API holds every write for a long time: the pass in flight makes no progress.
        site.api.faults.delay_next(1000, 30.0, path="machinedeployments", method="PATCH")
        await site.publish(make_spec(revision=2, workers={"a": 2}))

        async def unhealthy() -> bool:
            async with http.get(url) as resp:
                return resp.status == 500 and "reconcile-worker" in await resp.text()
        await eventually(unhealthy, timeout=30, what="/healthz failing")
    site.api.faults.clear()
    await agent.kill()
