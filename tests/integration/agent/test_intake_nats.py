"""Intake against a real nats-server: NATS down at start, rejections, restarts, late servers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from agent.intake import BUCKET, Intake, SpecCache, WatcherSettings
from agent.spec import ClusterSpec, sign
from testbed.natsd import NatsServer
from tests.fixtures.nats import nats_server
from tests.unit.agent.test_intake_verify import (
    CLUSTER,
    GATEWAY,
    KEYS,
    STRANGER,
    make_spec,
    signed_json,
    spec_data,
)

# Re-exported so linters treat the imported fixture as used; pytest injects it by name.
__all__ = ["nats_server"]


class Agent:
    """An Intake with fast test timings, recording what it tells the reconciler."""

    def __init__(self, url: str, cache_dir: Path, **overrides: Any) -> None:
        self.desired: list[ClusterSpec] = []
        self.rejected: list[tuple[str, str, int]] = []
        settings = WatcherSettings(**{
            "servers": [url], "cluster": CLUSTER, "name": "test-agent", "connect_timeout": 0.5,
            "reconnect_time_wait": 0.05, "request_timeout": 1.0, "backoff_initial": 0.05,
            "backoff_max": 0.3, **overrides})
        self.intake = Intake(settings, cache_dir=cache_dir, keys=KEYS,
                             on_desired=self.desired.append,
                             on_reject=lambda *r: self.rejected.append(r))

    @property
    def revision(self) -> int | None:
        spec = self.intake.desired
        return None if spec is None else spec.revision

    def at_revision(self, revision: int) -> Callable[[], bool]:
        return lambda: self.revision == revision

    def rejected_at(self, kv_revision: int) -> Callable[[], bool]:
        return lambda: bool(self.rejected) and self.rejected[-1][2] == kv_revision


@pytest.fixture
async def agent_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def make(url: str, **settings: Any) -> Agent:
        agents.append(Agent(url, tmp_path / "cache", **settings))
        return agents[-1]

    yield make
    for a in agents:
        await asyncio.wait_for(a.intake.stop(), 5)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def gateway(url: str) -> tuple[Client, KeyValue]:
    nc = await nats.connect(url, connect_timeout=2)
    kv = await nc.jetstream(timeout=2).create_key_value(bucket=BUCKET, history=5)
    return nc, kv


async def put_spec(kv: KeyValue, revision: int) -> int:
    seq: int = await kv.put(CLUSTER, sign(make_spec(revision=revision), GATEWAY))
    return seq


def seed_cache(directory: Path, revision: int) -> ClusterSpec:
    spec = make_spec(revision=revision)
    SpecCache(directory, keys=KEYS, cluster=CLUSTER).save(sign(spec, GATEWAY), spec)
    return spec


async def test_cached_spec_is_enforced_at_once_with_nats_down(
        nats_server: NatsServer, agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    cached = seed_cache(tmp_path / "cache", 1)
    await nats_server.stop()
    agent = agent_factory(nats_server.url)

    started = time.monotonic()
    await agent.intake.start()
    assert time.monotonic() - started < 0.5
    assert agent.intake.desired == cached and agent.desired == [cached]
    assert agent.intake.observed_revision == 1
    assert not agent.intake.watcher.connected and agent.intake.watcher.status_nc is None

    await nats_server.start()
    nc, kv = await gateway(nats_server.url)
    try:
        await put_spec(kv, 2)
        await eventually(lambda: agent.revision == 2)
        assert agent.intake.watcher.connected
        status_nc = agent.intake.watcher.status_nc
        assert status_nc is not None and status_nc.is_connected
        assert agent.rejected == []
        # Durable before it was published: a restart now starts from revision 2.
        on_disk = SpecCache(tmp_path / "cache", keys=KEYS, cluster=CLUSTER).load()
        assert on_disk is not None and on_disk.spec.revision == 2
    finally:
        await nc.close()


async def test_only_the_latest_value_is_delivered(
        nats_server: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    nc, kv = await gateway(nats_server.url)
    try:
        for revision in (1, 2, 3):
            await put_spec(kv, revision)
        agent = agent_factory(nats_server.url)
        await agent.intake.start()
        await eventually(lambda: agent.revision == 3)
        assert [s.revision for s in agent.desired] == [3]
    finally:
        await nc.close()


async def test_bad_values_are_rejected_and_the_last_good_spec_stays(
        nats_server: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    nc, kv = await gateway(nats_server.url)
    agent = agent_factory(nats_server.url)
    try:
        await put_spec(kv, 2)
        await agent.intake.start()
        await eventually(lambda: agent.revision == 2)

        good = json.loads(sign(make_spec(revision=3), GATEWAY))
        good["payload"] = json.loads(signed_json(spec_data(revision=3, workers=[])))["payload"]
        bad: list[tuple[bytes, str]] = [
            (sign(make_spec(revision=3), STRANGER), "unknown_key"),
            (json.dumps(good).encode(), "bad_signature"),
            (sign(make_spec(cluster="edge-2", revision=3), GATEWAY), "wrong_cluster"),
            (sign(make_spec(revision=1), GATEWAY), "stale_revision"),
            (sign(make_spec(revision=2, kubernetesVersion="v1.34.0"), GATEWAY),
             "stale_revision"),
            (b"x" * (256 * 1024 + 1), "oversize"),
            (b"{not json", "malformed"),
            (signed_json(spec_data(revision=9, workers="many")), "invalid_spec"),
        ]
        for raw, reason in bad:
            seq = await kv.put(CLUSTER, raw)
            await eventually(agent.rejected_at(seq))
            assert agent.rejected[-1][0] == reason, agent.rejected[-1]
            assert agent.revision == 2
        assert [r[0] for r in agent.rejected] == [reason for _, reason in bad]
        assert agent.intake.rejections["stale_revision"] == 2
        assert agent.intake.observed_revision == 9  # signed for us, seen, not enforced

        # Deleting or purging the key must not make the agent drop its spec.
        await kv.delete(CLUSTER)
        await kv.purge(CLUSTER)
        await put_spec(kv, 3)
        await eventually(lambda: agent.revision == 3)
        assert [s.revision for s in agent.desired] == [2, 3]
        assert len(agent.rejected) == len(bad)
    finally:
        await nc.close()


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill"])
async def test_new_revisions_arrive_after_a_server_restart(
        nats_server: NatsServer, agent_factory: Callable[..., Agent], crash: bool) -> None:
    nc, kv = await gateway(nats_server.url)
    await put_spec(kv, 1)
    await nc.close()
    agent = agent_factory(nats_server.url)
    await agent.intake.start()
    await eventually(lambda: agent.revision == 1)
    watcher = agent.intake.watcher
    watcher.state_changed.clear()

    if crash:
        await nats_server.kill()
    else:
        await nats_server.stop()
    await eventually(lambda: not watcher.connected)
    assert watcher.state_changed.is_set() and not watcher.connected_event.is_set()
    await nats_server.start()
    await asyncio.wait_for(watcher.connected_event.wait(), 5)

    nc, kv = await gateway(nats_server.url)
    try:
        for revision in (2, 3):
            await put_spec(kv, revision)
            await eventually(agent.at_revision(revision))
        # The re-delivered current value after reconnecting is no rejection.
        assert agent.rejected == []
        assert [s.revision for s in agent.desired] == [1, 2, 3]
    finally:
        await nc.close()


async def test_agent_with_no_server_keeps_trying(
        nats_server: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    await nats_server.stop()
    agent = agent_factory(nats_server.url)
    await agent.intake.start()
    assert agent.intake.desired is None and agent.desired == []
    await asyncio.sleep(0.6)  # several failed connection attempts
    assert not agent.intake.watcher.connected

    await nats_server.start()
    await asyncio.wait_for(agent.intake.watcher.connected_event.wait(), 5)
    await asyncio.sleep(0.2)  # the bucket does not exist yet either: the watch must retry
    nc, kv = await gateway(nats_server.url)
    try:
        await put_spec(kv, 1)
        await eventually(lambda: agent.revision == 1)
    finally:
        await nc.close()


async def test_periodic_resync_is_harmless(
        nats_server: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    nc, kv = await gateway(nats_server.url)
    agent = agent_factory(nats_server.url, resync_interval=0.1)
    try:
        await put_spec(kv, 1)
        await agent.intake.start()
        await eventually(lambda: agent.revision == 1)
        await asyncio.sleep(0.5)  # several watch re-creations, each re-delivering revision 1
        await put_spec(kv, 2)
        await eventually(lambda: agent.revision == 2)
        assert agent.rejected == [] and [s.revision for s in agent.desired] == [1, 2]
    finally:
        await nc.close()


async def test_a_put_the_stream_refused_is_never_taken_for_a_spec(
        nats_server: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    """The doorbell (a plain subscription on the key's subject) also rings for a put the stream
    refuses, e.g. a compare-and-set a gateway replica lost: only what the bucket stored counts."""
    nc, kv = await gateway(nats_server.url)
    try:
        await put_spec(kv, 1)
        agent = agent_factory(nats_server.url)
        await agent.intake.start()
        await eventually(lambda: agent.revision == 1)
        refused = sign(make_spec(revision=7), GATEWAY)
        with pytest.raises(nats.js.errors.APIError):
            await nc.jetstream().publish(f"$KV.{BUCKET}.{CLUSTER}", refused,
                                         headers={"Nats-Expected-Last-Subject-Sequence": "999"})
        await put_spec(kv, 2)  # stored: this one counts
        await eventually(lambda: agent.revision == 2)
        assert [s.revision for s in agent.desired] == [1, 2] and agent.rejected == []
    finally:
        await nc.close()
