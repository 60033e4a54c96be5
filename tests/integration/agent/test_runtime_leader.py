"""Leader election against the emulated API server over real HTTP, with skewed wall clocks.

Time is driven by the test: every replica gets a fake monotonic clock (each starting at its own
arbitrary value) and a wall clock skewed by a fixed amount, both derived from one shared "true"
time the test steps. Nothing asserts a real duration; only `test_hung_renewal_*` uses real time,
and it asserts the order of events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.kube import ApiKubeClient, KubeError, Transient
from agent.kube.resources import LEASE
from agent.runtime import LeaderElector
from testbed.apiserver import ApiServer
from tests.fixtures.kube import eventually

NS = "default"
LEASE_NAME = "outpost-agent"
TRUE_START = datetime(2030, 1, 1, tzinfo=UTC)
YEAR = 365 * 24 * 3600.0


class World:
    """The one true time, stepped by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def advance(self, dt: float) -> None:
        self.t += dt


class Replica:
    """One replica's view of time: monotonic from an arbitrary origin, wall clock skewed."""

    def __init__(self, world: World, mono_origin: float, skew: float) -> None:
        self.world = world
        self.mono_origin = mono_origin
        self.skew = skew
        self.changes: list[tuple[float, bool]] = []  # (true time, leader) per on_change

    def monotonic(self) -> float:
        return self.mono_origin + self.world.t

    def wall(self) -> datetime:
        return TRUE_START + timedelta(seconds=self.world.t + self.skew)

    def on_change(self, leader: bool) -> None:
        self.changes.append((self.world.t, leader))


@pytest_asyncio.fixture
async def kcs(kubeconfig: Path) -> AsyncIterator[tuple[ApiKubeClient, ApiKubeClient]]:
    """Two replicas' clients, each with its own connection pool."""
    async with await ApiKubeClient.from_kubeconfig(kubeconfig, request_timeout=5) as a, \
            await ApiKubeClient.from_kubeconfig(kubeconfig, request_timeout=5) as b:
        yield a, b


def elector(kube: ApiKubeClient, replica: Replica, identity: str,
            **kw: Any) -> LeaderElector:
    return LeaderElector(kube, name=LEASE_NAME, namespace=NS, identity=identity,
                         lease_duration=15, renew_deadline=10, retry_period=2,
                         on_change=replica.on_change, monotonic=replica.monotonic,
                         wall_clock=replica.wall, **kw)


async def lease_spec(kube: ApiKubeClient) -> dict[str, Any]:
    spec: dict[str, Any] = (await kube.get(LEASE, LEASE_NAME, NS))["spec"]
    return spec


def never_both(a: LeaderElector, b: LeaderElector) -> None:
    assert not (a.is_leader and b.is_leader), "two leaders at once"


@pytest.mark.parametrize(("skew_a", "skew_b"), [
    (20.0, -20.0), (-20.0, 20.0), (YEAR, -YEAR), (-3600.0, 0.0), (0.0, 3600.0)])
async def test_skewed_wall_clocks_never_make_two_leaders(
        kcs: tuple[ApiKubeClient, ApiKubeClient], skew_a: float, skew_b: float) -> None:
    world = World()
    ra, rb = Replica(world, 1_000.0, skew_a), Replica(world, 7_777_777.0, skew_b)
    a, b = elector(kcs[0], ra, "agent-a"), elector(kcs[1], rb, "agent-b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    # a renews every retry period while b polls every half second: b never takes over.
    for step in range(1, 121):
        world.advance(0.5)
        if step % 4 == 0:
            assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        never_both(a, b)
        assert a.is_leader
    # The wall clocks are what the lease says; only the writer's own clock put them there.
    spec = await lease_spec(kcs[1])
    assert spec["holderIdentity"] == "agent-a"
    assert spec["renewTime"] == (TRUE_START + timedelta(seconds=world.t + skew_a)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")

    # a stops renewing (a crash without release). b saw its last renewal at `last`, and takes
    # over on its first poll after 15 s of its own monotonic time have passed since then.
    last = world.t
    took_over = None
    while took_over is None:
        world.advance(0.5)
        if await b.try_acquire_or_renew():
            took_over = world.t
        never_both(a, b)
        assert world.t - last < 20, "b never took over"
    assert took_over - last == 15.5
    # a, asked at every step, stepped down renew_deadline after its last renewal.
    assert ra.changes == [(0.0, True), (last + 10, False)]
    assert rb.changes == [(took_over, True)]
    spec = await lease_spec(kcs[0])
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("agent-b", 1)


async def test_leader_whose_renewals_fail_steps_down_before_anyone_takes_over(
        api: ApiServer, kcs: tuple[ApiKubeClient, ApiKubeClient]) -> None:
    world = World()
    ra, rb = Replica(world, 50.0, -20.0), Replica(world, 9_000.0, 20.0)
    a, b = elector(kcs[0], ra, "agent-a"), elector(kcs[1], rb, "agent-b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    world.advance(1.0)
    assert await a.try_acquire_or_renew()  # the last renewal that lands
    renewed = world.t
    assert not await b.try_acquire_or_renew()

    stepped_down = took_over = None
    while took_over is None:
        world.advance(0.5)
        # Every renewal of a's is refused by the API server; b's reads go through.
        api.faults.fail_next(1, 503, path="/leases/", method="PUT")
        with pytest.raises(Transient):
            await a.try_acquire_or_renew()
        if stepped_down is None and not a.is_leader:
            stepped_down = world.t
        if await b.try_acquire_or_renew():
            took_over = world.t
        never_both(a, b)
    # a led while its last renewal was less than renew_deadline old, not a moment longer; b
    # waited the lease duration from when it saw that renewal.
    assert stepped_down == renewed + 10
    assert took_over == renewed + 15.5
    assert ra.changes == [(0.0, True), (stepped_down, False)]

    # a keeps failing: its liveness check trips once the renewal is overdue past the tolerance.
    assert a.healthy() == (True, "holding the lease, renewal overdue")
    while world.t - renewed <= 15 + 20:
        world.advance(0.5)
        api.faults.fail_next(1, 503, path="/leases/", method="PUT")
        with pytest.raises(Transient):
            await a.try_acquire_or_renew()
        assert await b.try_acquire_or_renew()
    healthy, why = a.healthy()
    assert not healthy and "not renewed" in why
    # Once it reaches the API again it sees b's lease, follows, and is healthy.
    assert not await a.try_acquire_or_renew()
    assert a.healthy() == (True, "not holding the lease")
    assert b.is_leader and b.healthy() == (True, "leading")


async def test_unreachable_api_leader_steps_down_at_the_renew_deadline_then_renews(
        api: ApiServer, kcs: tuple[ApiKubeClient, ApiKubeClient]) -> None:
    world = World()
    ra, rb = Replica(world, 0.0, 20.0), Replica(world, 123.0, -20.0)
    a, b = elector(kcs[0], ra, "agent-a"), elector(kcs[1], rb, "agent-b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await api.go_down()
    try:
        for _ in range(24):  # 12 s without the API
            world.advance(0.5)
            for e in (a, b):
                with pytest.raises(KubeError):
                    await e.try_acquire_or_renew()
            assert a.is_leader == (world.t < 10)
            assert not b.is_leader
    finally:
        await api.come_up()
    # b has not seen the lease change for 12 s < 15 s: still held. a still holds it and renews.
    assert not await b.try_acquire_or_renew()
    assert await a.try_acquire_or_renew()
    assert ra.changes == [(0.0, True), (10.0, False), (12.0, True)]
    # b sees the renewal as a change: its expiry starts over.
    world.advance(14.5)
    assert not await b.try_acquire_or_renew()
    assert rb.changes == []


async def test_released_lease_is_taken_at_once(kcs: tuple[ApiKubeClient, ApiKubeClient]) -> None:
    world = World()
    ra, rb = Replica(world, 0.0, 20.0), Replica(world, 5.0, -20.0)
    a, b = elector(kcs[0], ra, "agent-a"), elector(kcs[1], rb, "agent-b")
    assert await a.try_acquire_or_renew()
    world.advance(1.0)
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert ra.changes == [(0.0, True), (1.0, False)] and not a.is_leader
    spec = await lease_spec(kcs[1])
    assert spec["holderIdentity"] == ""
    assert await b.try_acquire_or_renew()  # no time has passed
    assert rb.changes == [(1.0, True)]
    # A released elector no longer campaigns, however long it waits.
    world.advance(100.0)
    assert not await a.try_acquire_or_renew()
    assert await b.try_acquire_or_renew()
    spec = await lease_spec(kcs[0])
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("agent-b", 1)


@pytest.mark.parametrize(("renew_time", "duration"), [
    ("2001-01-01T00:00:00.000000Z", 15),  # written by a clock far behind: not "long expired"
    ("2999-01-01T00:00:00.000000Z", 15),  # written by a clock far ahead: not "held for ages"
    ("not a time", 15),
    ("2030-01-01T00:00:00.000000Z", 30),  # the holder's own duration counts, not ours
])
async def test_a_lease_expires_by_our_own_time_since_we_saw_it_change(
        kcs: tuple[ApiKubeClient, ApiKubeClient], renew_time: str, duration: int) -> None:
    ghost_kube, kube = kcs
    await ghost_kube.create(LEASE, {
        "metadata": {"name": LEASE_NAME, "namespace": NS, "labels": {"team": "edge"}},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": duration,
                 "acquireTime": renew_time, "renewTime": renew_time, "leaseTransitions": 4}})
    world = World()
    rb = Replica(world, 42.0, 0.0)
    b = elector(kube, rb, "agent-b")
    assert not await b.try_acquire_or_renew()
    # The ghost renews once, 10 s later: b's wait starts over from when it saw that.
    world.advance(10.0)
    lease = await ghost_kube.get(LEASE, LEASE_NAME, NS)
    lease["spec"]["renewTime"] = "1999-12-31T23:59:59.000000Z"
    await ghost_kube.replace(LEASE, lease, field_manager="ghost")
    assert not await b.try_acquire_or_renew()
    world.advance(duration)
    assert not await b.try_acquire_or_renew()  # exactly the duration: not yet expired
    world.advance(0.5)
    assert await b.try_acquire_or_renew()
    spec = await lease_spec(kube)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("agent-b", 5)
    assert spec["leaseDurationSeconds"] == 15
    world.advance(2.0)
    assert await b.try_acquire_or_renew()
    lease = await kube.get(LEASE, LEASE_NAME, NS)
    assert lease["metadata"]["labels"] == {"team": "edge"}  # kept through takeover and renewal


async def test_hung_renewal_is_abandoned_and_run_steps_down_at_the_deadline(
        api: ApiServer, kcs: tuple[ApiKubeClient, ApiKubeClient]) -> None:
    """Real time: the API server holds a renewal and nobody reads is_leader, yet run() reports
    the step-down while the request is still held, and leads again once the API answers."""
    events: list[tuple[bool, int]] = []  # (leader, renewals held by the server right then)
    a = LeaderElector(kcs[0], name=LEASE_NAME, namespace=NS, identity="agent-a",
                      lease_duration=3, renew_deadline=2, retry_period=0.2,
                      on_change=lambda v: events.append((v, api.faults.delaying)))
    task = asyncio.create_task(a.run())
    try:
        await eventually(lambda: asyncio.sleep(0, events == [(True, 0)]))
        api.faults.delay_next(1, 5.0, path="/leases/", method="PUT")
        await eventually(lambda: asyncio.sleep(0, len(events) >= 3), timeout=20)
        assert events[:3] == [(True, 0), (False, 1), (True, 1)]
        await a.release()
        await asyncio.wait_for(task, 5)  # a released elector's run() ends
        assert events[-1][0] is False
        assert (await lease_spec(kcs[1]))["holderIdentity"] == ""
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
