"""API faults, two replicas with leader election, and SIGTERM in the middle of work."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from kubernetes_asyncio import client

from agent.spec import public_key_text
from tests.fixtures.site import CLUSTER, NS, Site, eventually, make_spec

MERGE = "application/merge-patch+json"


def kcp_replicas(site: Site) -> int:
    kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane")
    return int(kcp["spec"]["replicas"]) if kcp else -1


def md_replicas(site: Site, pool: str) -> int | None:
    md = site.obj("machinedeployments", f"edge-1-{pool}")
    return md["spec"]["replicas"] if md else None


async def test_converges_through_api_faults(site: Site) -> None:
    agent = await site.start_agent()
    # Writes fail first with conflicts, throttling and server errors; watches are cut and the
    # history compacted so watches must relist after 410.
    site.api.faults.fail_next(2, 409, path="kubeadmcontrolplanes", method="PATCH")
    site.api.faults.fail_next(2, 429, path="machinedeployments", method="PATCH")
    site.api.faults.fail_next(3, 500, path="machinedeployments")
    site.api.faults.fail_next(1, 503, path="clusters")
    await site.publish(make_spec(revision=1, cp=3, workers={"a": 2}))
    await asyncio.sleep(0.3)
    site.api.cut_watches()
    site.api.store.compact()
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=40,
                     what="converged despite faults")
    assert site.api.faults.injected >= 8
    errors = agent.agent.metrics.registry.get_sample_value(
        "outpost_agent_reconcile_total", {"result": "error"})
    assert errors and errors >= 1
    # The API goes away entirely and comes back: the agent carries on.
    await site.api.go_down()
    await asyncio.sleep(1.0)
    await site.api.come_up()
    await site.publish(make_spec(revision=2, cp=3, workers={"a": 3}))
    await eventually(lambda: agent.agent.applied_revision == 2, timeout=40,
                     what="converged after the API came back")
    assert await agent.shutdown() == 0


async def test_converged_resync_costs_zero_writes(site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, cp=3, workers={"a": 2}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=30, what="converged")
    kube = agent.agent.kube
    writes_before = {v: kube.requests[v] for v in ("create", "apply", "patch", "replace",  # type: ignore[attr-defined]
                                                   "delete")}
    passes_before = agent.agent.controller.passes
    for _ in range(3):
        agent.agent.controller.trigger("test resync")
        await asyncio.sleep(0.3)
    # Only the leader lease renewals write (one replace per renewal), never the topology.
    writes_after = {v: kube.requests[v] for v in writes_before}  # type: ignore[attr-defined]
    assert {v: writes_after[v] - writes_before[v] for v in ("create", "apply", "patch",
                                                            "delete")} == {
        "create": 0, "apply": 0, "patch": 0, "delete": 0}
    assert agent.agent.controller.passes >= passes_before + 3  # the passes did run
    # Observed state comes from the informers: a pass reads nothing from the API either.
    assert agent.agent.controller.caches is not None and agent.agent.controller.caches.synced
    reads = kube.requests["get"] + kube.requests["list"]  # type: ignore[attr-defined]
    await agent.agent.controller.reconcile_once()
    assert kube.requests["get"] + kube.requests["list"] == reads  # type: ignore[attr-defined]
    assert await agent.shutdown() == 0


async def test_two_replicas_only_the_leader_writes_and_hands_over(site: Site) -> None:
    a = await site.start_agent("agent-a")
    await eventually(lambda: a.agent.elector is not None and a.agent.elector.is_leader,
                     what="a leads")
    b = await site.start_agent("agent-b")
    await site.publish(make_spec(revision=1, cp=3, workers={"a": 2}))
    await eventually(lambda: a.agent.applied_revision == 1, timeout=30, what="a converged")
    assert b.agent.elector is not None and not b.agent.elector.is_leader
    assert b.kube.requests["apply"] == 0 and b.kube.requests["delete"] == 0

    await a.kill()  # a crash: the lease is not released, b waits for it to expire
    await eventually(lambda: b.agent.elector is not None and b.agent.elector.is_leader,
                     timeout=15, what="b takes over")
    async with site.client() as api:
        await client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "cluster.x-k8s.io", "v1beta2", NS, "machinedeployments", "edge-1-a",
            {"spec": {"replicas": 0}}, _content_type=MERGE)
    await eventually(lambda: md_replicas(site, "a") == 2, what="b corrects the drift")
    assert b.kube.requests["apply"] >= 1
    assert await b.shutdown() == 0


async def test_sigterm_during_a_pass_exits_cleanly_and_next_agent_repairs(site: Site) -> None:
    env = {
        **os.environ,
        "OUTPOST_AGENT_CLUSTER_NAME": CLUSTER,
        "OUTPOST_AGENT_NATS_SERVERS": site.nats.url,
        "OUTPOST_AGENT_PUBLIC_KEYS": public_key_text(site.key.public_key()),
        "OUTPOST_AGENT_STATE_DIR": str(site.root / "proc-state"),
        "OUTPOST_AGENT_KUBECONFIG": str(site.kubeconfig),
        "OUTPOST_AGENT_IDENTITY": "proc",
        "OUTPOST_AGENT_HTTP_HOST": "127.0.0.1",
        "OUTPOST_AGENT_HTTP_PORT": "0",
        "OUTPOST_AGENT_RESYNC_SECONDS": "1",
        "OUTPOST_AGENT_LEASE_DURATION_SECONDS": "2",
        "OUTPOST_AGENT_SHUTDOWN_GRACE_SECONDS": "5",
    }
    # A slow API: the pool writes are held, so SIGTERM lands in the middle of a pass.
    site.api.faults.delay_next(1, 1.5, path="machinedeployments", method="PATCH")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.daemon", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        await site.publish(make_spec(revision=1, cp=3, workers={"a": 2, "b": 1}))
        await eventually(lambda: site.api.faults.delaying == 1, what="a write held mid-pass")
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b'"msg": "shutting down"' in err
    assert b"still running after the grace period" not in err  # the pass finished in time
    assert md_replicas(site, "a") == 2  # the held write completed before the exit
    # Whatever that pass left undone, the next agent finishes.
    nxt = await site.start_agent("agent-next")
    await eventually(lambda: nxt.agent.applied_revision == 1, timeout=30, what="repaired")
    assert md_replicas(site, "a") == 2 and md_replicas(site, "b") == 1
    assert await nxt.shutdown() == 0
