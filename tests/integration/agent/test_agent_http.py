"""What the kubelet, Prometheus and a person at a terminal see of the agent."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.site import Site, eventually, make_spec


async def test_health_readiness_and_metrics(site: Site) -> None:
    agent = await site.start_agent()
    await eventually(lambda: agent.agent.ready, what="agent ready")
    await site.publish(make_spec(revision=3, cp=3))
    await eventually(lambda: agent.agent.applied_revision == 3, timeout=30, what="converged")
    base = f"http://127.0.0.1:{agent.agent.http_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with s.get(f"{base}/readyz") as r:
            assert r.status == 200
        async with s.get(f"{base}/metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in [
        ("outpost_agent_spec_revision_desired", "gauge"),
        ("outpost_agent_spec_revision_applied", "gauge"),
        ("outpost_agent_spec_rejections", "counter"),
        ("outpost_agent_reconcile", "counter"),
        ("outpost_agent_reconcile_duration_seconds", "histogram"),
        ("outpost_agent_reconcile_queue_depth", "gauge"),
        ("outpost_agent_nats_connected", "gauge"),
        ("outpost_agent_outbox_depth", "gauge"),
        ("outpost_agent_leader", "gauge"),
        ("outpost_agent_certificate_expiry_timestamp_seconds", "gauge"),
    ]:
        assert families[name].type == kind, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("outpost_agent_spec_revision_applied", ())] == 3
    assert samples[("outpost_agent_nats_connected", ())] == 1
    assert samples[("outpost_agent_leader", ())] == 1
    assert samples[("outpost_agent_spec_rejections_total", (("reason", "bad_signature"),))] == 0
    assert samples[("outpost_agent_certificate_expiry_timestamp_seconds", ())] > 0
    # Shutting down: not ready any more, before anything else stops.
    agent.stop.set()
    await asyncio.sleep(0)
    assert agent.agent._readiness()[0] is False
    assert await asyncio.wait_for(agent.task, 15) == 0
    await agent.kube.close()


def test_help_and_configuration_errors() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.daemon", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "OUTPOST_AGENT_CLUSTER_NAME" in out and "OUTPOST_AGENT_PUBLIC_KEYS" in out
    bad = subprocess.run([sys.executable, "-m", "agent.daemon"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin"})
    assert bad.returncode == 2
    assert "invalid configuration" in bad.stderr
    assert "OUTPOST_AGENT_CLUSTER_NAME: Field required" in bad.stderr
