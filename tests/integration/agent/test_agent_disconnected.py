"""The link to the management plane goes down: the agent keeps governing from its cache."""

from __future__ import annotations

import json

from kubernetes_asyncio import client

from agent.report.publisher import EVENTS_STREAM
from tests.fixtures.site import CLUSTER, NS, Site, eventually, make_spec

MERGE = "application/merge-patch+json"


def replicas(site: Site, pool: str) -> int | None:
    md = site.obj("machinedeployments", f"edge-1-{pool}")
    return md["spec"]["replicas"] if md else None


async def test_drift_corrected_while_disconnected_and_reports_catch_up(site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, cp=1, workers={"a": 3, "b": 2}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=30,
                     what="revision 1 converged")

    await site.nats.stop()
    await eventually(lambda: not agent.agent.intake.watcher.connected, what="NATS seen down")
    # A person scales one pool down and deletes the other, by hand.
    async with site.client() as api:
        custom = client.CustomObjectsApi(api)
        await custom.patch_namespaced_custom_object(
            "cluster.x-k8s.io", "v1beta2", NS, "machinedeployments", "edge-1-a",
            {"spec": {"replicas": 1}}, field_manager="kubectl-edit", _content_type=MERGE)
        await custom.delete_namespaced_custom_object(
            "cluster.x-k8s.io", "v1beta2", NS, "machinedeployments", "edge-1-b")
    await eventually(lambda: replicas(site, "a") == 3, what="pool a scaled back to 3")
    await eventually(lambda: replicas(site, "b") == 2, what="pool b recreated")

    # Restart the agent while NATS is still down: it enforces the spec from its disk cache.
    assert await agent.shutdown() == 0
    site.api.registry.delete(site.api.registry.type_by_kind("cluster.x-k8s.io/v1beta2",
                                                            "MachineDeployment"),  # type: ignore[arg-type]
                             NS, "edge-1-a")
    again = await site.start_agent()
    assert again.agent.intake.desired is not None or await eventually(
        lambda: again.agent.intake.desired is not None, what="cached spec loaded")
    await eventually(lambda: replicas(site, "a") == 3, what="pool a restored from the cache")
    assert again.agent.intake.desired.revision == 1  # type: ignore[union-attr]

    # NATS back: status and the events queued on disk arrive, in order.
    queued = again.agent.outbox.depth
    assert queued > 0
    await site.nats.start()
    await eventually(lambda: again.agent.outbox.depth == 0, timeout=20, what="outbox flushed")
    nc = await site.nats_client()
    try:
        js = nc.jetstream()
        kv = await js.key_value("outpost-status")
        status = json.loads((await kv.get(CLUSTER)).value)
        assert status["cluster"] == CLUSTER and status["appliedRevision"] == 1
        sub = await js.subscribe(f"outpost.events.{CLUSTER}", stream=EVENTS_STREAM,
                                 ordered_consumer=True)
        events = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                break
            events.append(json.loads(msg.data))
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        reasons = [e["reason"] for e in events]
        assert "SpecApplied" in reasons and "Changed" in reasons
        drift = [e for e in events if e["reason"] == "Changed" and "edge-1-b" in (
            e.get("object") or "")]
        assert drift, "the recreation of the deleted pool is reported"
    finally:
        await nc.close()
    assert await again.shutdown() == 0


async def test_agent_started_with_nats_down_and_no_cache_waits_then_converges(
        site: Site) -> None:
    await site.publish(make_spec(revision=4, cp=3))
    await site.nats.stop()
    agent = await site.start_agent()
    assert agent.agent.intake.desired is None
    await site.nats.start()
    await eventually(lambda: agent.agent.intake.desired is not None, timeout=20,
                     what="spec received once NATS is up")
    kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane")
    await eventually(lambda: (site.obj("kubeadmcontrolplanes", "edge-1-control-plane") or {})
                     ["spec"]["replicas"] == 3, what="control plane scaled")
    assert kcp is not None
    assert await agent.shutdown() == 0
