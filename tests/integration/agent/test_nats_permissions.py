"""The agent works under the least-privilege NATS identity the manifests give each cluster: it
reads its own spec (direct get, no consumer), publishes its own status and events, and is
refused another cluster's spec."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.js.api import KeyValueConfig

from agent.intake import SpecWatcher, WatcherSettings
from agent.report import Outbox, Publisher
from agent.spec import StatusReport
from agent.spec.wire import EVENTS_STREAM, SPECS_BUCKET, STATUS_BUCKET, kv_subject
from testbed.natsd import NatsServer

ROOT = Path(__file__).resolve().parents[3]
PASSWORDS = {"OUTPOST_NATS_GATEWAY_PASSWORD": "gw-secret", "OUTPOST_NATS_EDGE_1_PASSWORD": "e1"}


@pytest_asyncio.fixture
async def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NatsServer]:
    conf = (ROOT / "manifests" / "nats" / "nats.conf").read_text()
    # The manifest's server, on a free local port with its store in the test's directory.
    conf = re.sub(r"(?m)^(port|http_port|server_name):.*$", "", conf)
    conf = conf.replace("store_dir: /data", "")  # the launcher's own store directory
    (tmp_path / "nats.conf").write_text(conf)
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)
    srv = NatsServer(tmp_path / "nats", extra_args=["-c", str(tmp_path / "nats.conf")])
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def status() -> StatusReport:
    return StatusReport(cluster="edge-1", observed_revision=2, applied_revision=2,
                        phase="Converged", connected=True, agent_version="test",
                        reported_at=datetime.now(UTC))


def url(srv: NatsServer, user: str, password: str) -> str:
    return srv.url.replace("nats://", f"nats://{user}:{password}@")


async def test_agent_reads_its_spec_and_reports_with_its_own_identity(
        server: NatsServer, tmp_path: Path) -> None:
    gw = await nats.connect(url(server, "gateway", "gw-secret"))
    try:
        kv = await gw.jetstream().create_key_value(KeyValueConfig(
            bucket=SPECS_BUCKET, history=5, direct=True))
        await kv.put("edge-1", b"spec of edge-1")
        await kv.put("edge-2", b"spec of edge-2")

        got: list[tuple[bytes, int]] = []
        arrived = asyncio.Event()

        async def candidate(raw: bytes, revision: int) -> None:
            got.append((raw, revision))
            arrived.set()

        watcher = SpecWatcher(WatcherSettings(
            servers=[url(server, "edge-1", "e1")], cluster="edge-1", backoff_initial=0.05,
            backoff_max=0.2, request_timeout=2.0), candidate)
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(arrived.wait(), 20)
            assert got == [(b"spec of edge-1", 1)]
            arrived.clear()
            revision = await kv.put("edge-1", b"revision two")
            await asyncio.wait_for(arrived.wait(), 20)  # the doorbell rang
            assert got[-1] == (b"revision two", revision)

            nc = watcher.status_nc
            assert nc is not None
            # Another cluster's spec is refused, whichever way it is asked for.
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await nc.jetstream(timeout=2).get_msg(
                    f"KV_{SPECS_BUCKET}", subject=kv_subject(SPECS_BUCKET, "edge-2"),
                    direct=True)

            outbox = Outbox(tmp_path / "outbox")
            publisher = Publisher(outbox, "edge-1", lambda: watcher.status_nc,
                                  backoff_initial=0.05, backoff_max=0.2, timeout=2.0)
            await publisher.emit("SpecAccepted", "revision 2 accepted", revision=2)
            await publisher.publish_status(status())
            assert await publisher.flush()
            stored = await (await gw.jetstream().key_value(STATUS_BUCKET)).get("edge-1")
            assert json.loads(stored.value or b"{}")["cluster"] == "edge-1"
            sub = await gw.jetstream().subscribe("outpost.events.edge-1", stream=EVENTS_STREAM,
                                                 ordered_consumer=True)
            msg = await sub.next_msg(timeout=10)
            assert json.loads(msg.data)["reason"] == "SpecAccepted"
            outbox.close()
        finally:
            task.cancel()
            await asyncio.wait({task})
            await watcher.stop()
    finally:
        await gw.close()
