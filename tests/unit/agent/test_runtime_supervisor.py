"""The supervisor: a task that dies is restarted and counted; one that cannot recover fails the
process; a task that stops beating fails liveness."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from agent.runtime.backoff import Backoff, delay
from agent.runtime.supervisor import Supervisor, SupervisorFailed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def restarts(registry: CollectorRegistry, task: str) -> float:
    value = registry.get_sample_value("outpost_test_task_restarts_total", {"task": task})
    assert value is not None
    return value


async def test_a_task_that_raises_is_restarted_and_counted() -> None:
    registry = CollectorRegistry()
    sup = Supervisor(component="test", registry=registry, backoff_initial=0.001,
                     backoff_max=0.002)
    runs: list[int] = []
    healthy = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        healthy.set()
        await asyncio.Event().wait()

    sup.add("flaky", flaky)
    running = asyncio.create_task(sup.run())
    await asyncio.wait_for(healthy.wait(), 30)
    assert len(runs) == 3
    assert restarts(registry, "flaky") == 2
    assert registry.get_sample_value("outpost_test_task_up", {"task": "flaky"}) == 1
    assert sup.liveness() == (True, "ok")
    assert await sup.stop() == []
    await asyncio.wait_for(running, 30)  # returns normally after stop()


async def test_a_task_that_keeps_failing_fails_the_process() -> None:
    sup = Supervisor(component="test", backoff_initial=0.001, backoff_max=0.002,
                     max_failures=3)
    other_cancelled = asyncio.Event()

    async def broken() -> None:
        raise ValueError("cannot parse v1.35.2+vmware.1")

    async def other() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            other_cancelled.set()

    sup.add("broken", broken)
    sup.add("other", other)
    with pytest.raises(SupervisorFailed, match=r"broken.*ValueError"):
        await asyncio.wait_for(sup.run(), 30)
    alive, why = sup.liveness()
    assert not alive and "broken" in why
    await sup.stop()
    assert other_cancelled.is_set()


async def test_a_task_that_returns_is_restarted() -> None:
    sup = Supervisor(component="test", backoff_initial=0.001, backoff_max=0.002)
    runs = 0
    second = asyncio.Event()

    async def quits() -> None:
        nonlocal runs
        runs += 1
        if runs >= 2:
            second.set()
            await asyncio.Event().wait()

    sup.add("quits", quits)
    running = asyncio.create_task(sup.run())
    await asyncio.wait_for(second.wait(), 30)
    await sup.stop()
    await running


async def test_failures_far_apart_do_not_add_up() -> None:
    """A task that ran well for `stable_after` starts counting its failures afresh."""
    clock = Clock()
    sup = Supervisor(component="test", backoff_initial=0.001, backoff_max=0.002,
                     max_failures=2, stable_after=60.0, clock=clock)
    fail = asyncio.Event()
    started = asyncio.Event()
    runs = 0

    async def rare() -> None:
        nonlocal runs
        runs += 1
        started.set()
        await fail.wait()
        fail.clear()
        raise RuntimeError("rare")

    sup.add("rare", rare)
    running = asyncio.create_task(sup.run())
    for expected in (2, 3, 4):
        await asyncio.wait_for(started.wait(), 30)
        started.clear()
        clock.now += 120  # it ran well for two minutes before each failure
        fail.set()
        await asyncio.wait_for(started.wait(), 30)
        assert runs == expected
    assert not running.done()
    await sup.stop()
    await running


async def test_liveness_fails_when_a_task_stops_beating() -> None:
    clock = Clock()
    sup = Supervisor(component="test", clock=clock)
    beating = asyncio.Event()

    async def worker() -> None:
        sup.beat("worker")
        beating.set()
        await asyncio.Event().wait()  # stuck: never beats again

    sup.add("worker", worker, liveness=10.0)
    running = asyncio.create_task(sup.run())
    await asyncio.wait_for(beating.wait(), 30)
    clock.now += 9
    assert sup.liveness() == (True, "ok")
    clock.now += 2
    alive, why = sup.liveness()
    assert not alive and "worker made no progress for 11s" in why
    sup.beat("worker")
    assert sup.liveness()[0]
    await sup.stop()
    await running


def test_backoff_grows_is_capped_and_never_zero() -> None:
    b = Backoff(1.0, 8.0)
    delays = [b.next() for _ in range(10)]
    caps = [1, 2, 4, 8, 8, 8, 8, 8, 8, 8]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    b.reset()
    assert 0.5 <= b.next() <= 1.0
    assert delay(1000, 0.1, 30.0) <= 30.0
    with pytest.raises(ValueError, match="exceeds its maximum"):
        Backoff(10, 1)


async def test_after_quiesce_a_task_may_end_without_a_restart() -> None:
    """A shutdown drains the work queue first: the worker then returns, which is no failure."""
    registry = CollectorRegistry()
    sup = Supervisor(component="test", registry=registry, backoff_initial=0.001,
                     backoff_max=0.002)
    done = asyncio.Event()
    started = asyncio.Event()
    runs = 0

    async def worker() -> None:
        nonlocal runs
        runs += 1
        started.set()
        await done.wait()

    sup.add("worker", worker)
    running = asyncio.create_task(sup.run())
    await asyncio.wait_for(started.wait(), 30)
    sup.quiesce()
    done.set()
    await sup.stop()
    await running
    assert runs == 1 and restarts(registry, "worker") == 0
