"""The publisher against a real nats-server: delivery, outages, restarts, bounds, dedupe, and a
pipelined backlog that stays bounded, in order and exactly-once across a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client

from agent.report.events import AgentEvent
from agent.report.outbox import FILE_NAME, Outbox
from agent.report.publisher import EVENTS_STREAM, STATUS_BUCKET, Publisher, event_subject
from agent.spec.status import StatusReport
from testbed.natsd import NatsServer

CLUSTER = "edge-1"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def status(rev: int, connected: bool = True) -> StatusReport:
    return StatusReport(cluster=CLUSTER, observed_revision=rev, applied_revision=rev,
                        phase="Converged", connected=connected, agent_version="0.1.0",
                        reported_at=T0)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _quiet(_: Exception) -> None:
    pass


@dataclass
class Rig:
    server: NatsServer
    outbox: Outbox
    publisher: Publisher
    nc: Client

    async def stream_events(self) -> list[dict[str, Any]]:
        """Every event in the stream, read through a fresh ordered consumer."""
        js = self.nc.jetstream(timeout=2)
        sub = await js.subscribe(event_subject(CLUSTER), ordered_consumer=True)
        out: list[dict[str, Any]] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.3)
                except nats.errors.TimeoutError:
                    return out
                out.append(json.loads(msg.data))
        finally:
            await sub.unsubscribe()

    async def kv_status(self) -> dict[str, Any]:
        kv = await self.nc.jetstream(timeout=2).key_value(STATUS_BUCKET)
        entry = await kv.get(CLUSTER)
        assert entry.value is not None
        return dict(json.loads(entry.value))

    async def drained(self) -> None:
        await until(lambda: self.publisher.depth == 0)

    async def down(self) -> None:
        await self.server.stop()
        await until(lambda: not self.nc.is_connected)

    async def up(self) -> None:
        await self.server.start()
        await until(lambda: self.publisher.depth == 0, timeout=6)


@contextlib.asynccontextmanager
async def make_rig(server: NatsServer, path: Path, *, timeout: float = 1.0,
                   creds: dict[str, str] | None = None, window: int = 256,
                   **outbox_args: Any) -> AsyncIterator[Rig]:
    outbox = Outbox(path, **outbox_args)
    holder: list[Client] = []
    publisher = Publisher(outbox, CLUSTER, lambda: holder[0] if holder else None,
                          timeout=timeout, backoff_initial=0.05, backoff_max=0.3,
                          poll_interval=0.2, window=window)
    nc = await nats.connect(server.url, allow_reconnect=True, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.05, connect_timeout=1, error_cb=_quiet,
                            reconnected_cb=publisher.on_reconnected, **(creds or {}))
    holder.append(nc)
    task = asyncio.create_task(publisher.run())
    try:
        yield Rig(server, outbox, publisher, nc)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()
        outbox.close()


@pytest_asyncio.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(nats_server, tmp_path / "outbox") as r:
        yield r


@pytest_asyncio.fixture
async def small_rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(nats_server, tmp_path / "outbox", max_entries=5) as r:
        yield r


async def timed(coro: Awaitable[object]) -> float:
    start = time.monotonic()
    await coro
    return time.monotonic() - start


async def test_connected_delivers_status_to_kv_and_events_in_order(rig: Rig) -> None:
    await rig.publisher.publish_status(status(1))
    for i in range(3):
        await rig.publisher.emit("SpecApplied", f"e{i}", revision=1,
                                 obj="KubeadmControlPlane/default/edge-1")
    await rig.publisher.publish_status(status(2))
    await rig.drained()

    events = await rig.stream_events()
    assert [e["message"] for e in events] == ["e0", "e1", "e2"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[0]["object"] == "KubeadmControlPlane/default/edge-1"
    assert (await rig.kv_status())["observedRevision"] == 2
    assert rig.publisher.stats().failures == 0
    assert rig.publisher.delivered >= 4  # status 1 may have been superseded before sending


async def test_outage_queues_on_disk_then_delivers_everything_once(rig: Rig) -> None:
    await rig.publisher.emit("Created", "before")
    await rig.drained()
    await rig.down()

    elapsed = 0.0
    for i in range(6):
        elapsed += await timed(rig.publisher.emit("Scaled", f"down{i}"))
        elapsed += await timed(rig.publisher.publish_status(status(10 + i, connected=False)))
    assert elapsed < 1.0  # callers never wait for the link
    assert rig.publisher.depth == 7  # six events and the one newest status
    lines = [json.loads(x) for x in (rig.outbox.directory / FILE_NAME).read_bytes().splitlines()]
    on_disk = [json.loads(x["p"])["message"] for x in lines if x["t"] == "event"]
    assert on_disk[-6:] == [f"down{i}" for i in range(6)]
    await asyncio.sleep(0.3)  # the loop polls while down without losing anything
    assert rig.publisher.depth == 7

    await rig.up()
    events = await rig.stream_events()
    assert [e["message"] for e in events] == ["before"] + [f"down{i}" for i in range(6)]
    assert (await rig.kv_status())["observedRevision"] == 15
    assert rig.publisher.dropped == 0


async def test_resend_after_a_lost_ack_is_deduplicated(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.report.publisher")
    real_ack = rig.outbox.ack_async
    failed: list[int] = []

    async def ack_once_fails(upto: int) -> int:
        if not failed:  # published, but the outbox ack is lost (think: crash)
            failed.append(upto)
            raise OSError("disk hiccup")
        return await real_ack(upto)

    monkeypatch.setattr(rig.outbox, "ack_async", ack_once_fails)
    for i in range(3):
        await rig.publisher.emit("Scaled", f"e{i}")
    await rig.drained()
    assert failed and rig.publisher.stats().failures == 1
    events = await rig.stream_events()
    assert [e["message"] for e in events] == ["e0", "e1", "e2"]  # the re-send was dropped
    assert f"event {failed[0]} was already in the stream" in caplog.text


async def test_outbox_full_while_down_drops_oldest_and_counts(small_rig: Rig) -> None:
    rig = small_rig
    await rig.publisher.publish_status(status(1))
    await rig.drained()
    await rig.down()
    for i in range(12):
        await rig.publisher.emit("Scaled", f"e{i}")
    await rig.publisher.publish_status(status(2, connected=False))
    assert rig.publisher.depth == 5
    assert rig.publisher.dropped == 8  # twelve events and a status into five entries

    await rig.up()
    events = await rig.stream_events()
    assert [e["message"] for e in events] == [f"e{i}" for i in range(8, 12)]
    assert (await rig.kv_status())["observedRevision"] == 2
    assert rig.publisher.stats().dropped == 8


async def test_agent_restart_while_down_keeps_the_queue_and_the_sequence(
        nats_server: NatsServer, tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    async with make_rig(nats_server, path) as rig:
        await rig.publisher.emit("Created", "first")
        await rig.drained()
        await rig.down()
        await rig.publisher.emit("Scaled", "queued")
    await nats_server.start()
    async with make_rig(nats_server, path) as rig:  # a new agent process on the same disk
        await rig.drained()
        stored = await rig.publisher.emit("Deleted", "after")
        assert stored is not None and stored.seq == 3
        await rig.drained()
        events = await rig.stream_events()
        assert [(e["seq"], e["message"]) for e in events] == [
            (1, "first"), (2, "queued"), (3, "after")]
        info = await rig.nc.jetstream().stream_info(EVENTS_STREAM)
        assert info.state.messages == 3


RESTRICTED = """
accounts: {
  FLEET: {
    jetstream: enabled
    users: [
      {user: admin, password: admin}
      {user: agent, password: agent, permissions: {
        publish: {allow: ["outpost.events.edge-1", "$KV.outpost-status.edge-1"]}
        subscribe: {allow: ["_INBOX.>"]}
      }}
    ]
  }
}
"""


async def test_agent_without_rights_to_manage_jetstream_still_publishes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.report.publisher")
    conf = tmp_path / "nats.conf"
    conf.write_text(RESTRICTED)
    async with NatsServer(tmp_path / "nats", extra_args=["-c", str(conf)]) as server:
        admin = await nats.connect(server.url, user="admin", password="admin")
        try:
            js = admin.jetstream()
            await js.add_stream(name=EVENTS_STREAM, subjects=["outpost.events.>"])
            await js.create_key_value(bucket=STATUS_BUCKET, history=1)
            async with make_rig(server, tmp_path / "outbox", timeout=0.3,
                                creds={"user": "agent", "password": "agent"}) as rig:
                await rig.publisher.emit("Created", "e0")
                await rig.publisher.publish_status(status(7))
                await rig.drained()
                await rig.publisher.emit("Scaled", "e1")
                await rig.drained()
                assert rig.publisher.stats().failures == 0
            rig.nc = admin  # read back with the admin's rights
            assert [e["message"] for e in await rig.stream_events()] == ["e0", "e1"]
            assert (await rig.kv_status())["observedRevision"] == 7
        finally:
            await admin.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"
                and "cannot check or create stream" in r.getMessage()]
    assert len(warnings) == 1
    assert "publishing works without managing JetStream" in caplog.text


BACKLOG = 3000
WINDOW = 16


def fill_backlog(path: Path, n: int = BACKLOG) -> None:
    """Write ``n`` events (seq 1..n) to the outbox on disk, as an agent cut off for a while."""
    with Outbox(path) as box:
        for i in range(n):
            box.append_event(AgentEvent(cluster=CLUSTER, time=T0, reason="Scaled",
                                        message=f"e{i}"))


async def stream_seqs(nc: Client, expected: int) -> list[int]:
    """The seq of every event in the stream, in stream order; the stream must hold exactly
    ``expected`` messages (reading stops there, so a slow reader cannot cut the list short)."""
    js = nc.jetstream(timeout=5)
    info = await js.stream_info(EVENTS_STREAM)
    assert info.state.messages == expected
    sub = await js.subscribe(event_subject(CLUSTER), ordered_consumer=True)
    try:
        return [json.loads((await sub.next_msg(timeout=10)).data)["seq"]
                for _ in range(expected)]
    finally:
        await sub.unsubscribe()


async def test_backlog_drains_pipelined_bounded_once_and_in_order(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """A plain subscriber sees every event as it is published; at no time may an event be out
    before everything more than a window earlier is acknowledged in the outbox. An unbounded
    publisher runs hundreds ahead; one waiting for each ack never more than one."""
    path = tmp_path / "outbox"
    fill_backlog(path)
    observer = await nats.connect(nats_server.url)
    outbox: list[Outbox] = []
    newest = 0
    ahead: list[int] = []

    async def seen(msg: Any) -> None:
        nonlocal newest
        newest = max(newest, json.loads(msg.data)["seq"])
        acked = BACKLOG - outbox[0].depth  # seqs 1..BACKLOG, acked as a prefix
        ahead.append(newest - acked)

    try:
        await observer.subscribe(event_subject(CLUSTER), cb=seen)
        await observer.flush()
        async with make_rig(nats_server, path, timeout=5.0, window=WINDOW) as rig:
            outbox.append(rig.outbox)  # before the publisher task first runs
            await until(lambda: rig.publisher.depth == 0, timeout=120)
            assert await stream_seqs(rig.nc, BACKLOG) == list(range(1, BACKLOG + 1))
            assert rig.outbox.pending() == []
            assert rig.publisher.delivered == BACKLOG
            await until(lambda: newest == BACKLOG, timeout=30)
    finally:
        await observer.close()
    assert max(ahead) <= WINDOW  # bounded
    assert max(ahead) > 1  # pipelined: more than one event awaited its ack at once


async def test_server_stopped_mid_drain_still_stores_each_record_once_in_order(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Windows cut short by the stop are re-sent from the first unconfirmed event; what the
    server had already stored is dropped by its Msg-Id, so the stream ends exactly 1..n."""
    path = tmp_path / "outbox"
    fill_backlog(path)
    async with make_rig(nats_server, path, timeout=2.0, window=64) as rig:
        await until(lambda: rig.publisher.delivered >= BACKLOG // 5, timeout=120)
        await rig.server.stop()
        assert rig.publisher.depth > 0  # stopped mid-drain
        await until(lambda: rig.publisher.stats().failures > 0, timeout=30)
        await rig.server.start()
        await until(lambda: rig.publisher.depth == 0, timeout=120)
        assert await stream_seqs(rig.nc, BACKLOG) == list(range(1, BACKLOG + 1))
        assert rig.outbox.pending() == []
