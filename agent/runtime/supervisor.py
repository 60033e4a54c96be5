"""The supervisor: owns every long-running task of a daemon, so nothing dies silently.

A task that raises (or returns when it should run forever) is logged with its traceback,
counted, and started again after a backoff delay. A task that keeps failing — `max_failures`
times in a row, each within `stable_after` seconds of its start — cannot recover by itself: the
supervisor then declares the process failed, and the daemon exits non-zero so Kubernetes
restarts it with fresh state. Never a zombie that looks Ready and does nothing.

Liveness comes from heartbeats, not from "the process answers HTTP": a task registered with a
`liveness` window must call `beat(name)` at least that often (the reconcile worker beats when
it takes work and while it waits for some; informers beat on every list and event). A task
that is stuck (a call that never returns) or dead fails `/healthz`, and the kubelet restarts the
pod.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from .backoff import Backoff

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


class SupervisorFailed(Exception):
    """A supervised task could not recover; the process should exit non-zero."""

    def __init__(self, task: str, cause: BaseException | None) -> None:
        why = f"{type(cause).__name__}: {cause}" if cause is not None else "returned"
        super().__init__(f"task {task!r} keeps failing ({why}); giving up so the process is "
                         "restarted")
        self.task = task
        self.cause = cause


@dataclass
class _Supervised:
    name: str
    factory: TaskFactory
    liveness: float | None
    backoff: Backoff
    task: asyncio.Task[None] | None = None
    started: float = 0.0
    last_beat: float = 0.0
    failures: int = 0  # consecutive quick failures
    restarts: int = 0
    last_error: str = ""
    waiting: asyncio.TimerHandle | None = field(default=None, repr=False)


class Supervisor:
    """Start tasks with `add()`, then `await run()`: it returns when `stop()` is called and
    raises SupervisorFailed when a task cannot recover."""

    def __init__(self, *, component: str, registry: CollectorRegistry | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 max_failures: int = 5, stable_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self._tasks: dict[str, _Supervised] = {}
        self._backoff = (backoff_initial, backoff_max)
        self._max_failures = max_failures
        self._stable_after = stable_after
        self._clock = clock
        self._failed: SupervisorFailed | None = None
        self._done = asyncio.Event()
        self._running = False
        self._stopping = False
        self.restarts = Counter(
            f"outpost_{component}_task_restarts_total",
            "Supervised tasks restarted after they failed, by task.", ["task"],
            registry=registry)
        self.up = Gauge(
            f"outpost_{component}_task_up", "1 while a supervised task is running, by task.",
            ["task"], registry=registry)

    # -- registration and heartbeats --------------------------------------------------------
    def add(self, name: str, factory: TaskFactory, *, liveness: float | None = None) -> None:
        """Supervise `factory()` (called again on each restart). With `liveness`, the task
        must `beat(name)` at least every `liveness` seconds or /healthz fails."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already supervised")
        sup = _Supervised(name, factory, liveness, Backoff(*self._backoff))
        self._tasks[name] = sup
        self.restarts.labels(task=name)
        self.up.labels(task=name).set(0)
        if self._running:
            self._start(sup)

    def beat(self, name: str) -> None:
        sup = self._tasks.get(name)
        if sup is not None:
            sup.last_beat = self._clock()

    def heartbeat(self, name: str) -> Callable[[], None]:
        """A bound `beat` for a component that should not know its supervisor."""
        return lambda: self.beat(name)

    def liveness(self) -> tuple[bool, str]:
        """(alive, why): false when the supervisor failed, a task is missing, or a task with a
        liveness window has not beaten within it."""
        if self._failed is not None:
            return False, str(self._failed)
        now = self._clock()
        problems = []
        for sup in self._tasks.values():
            if not self._running:
                continue
            if sup.task is None or sup.task.done():
                # Between a failure and its restart: alive, unless it keeps failing.
                if sup.failures >= self._max_failures:
                    problems.append(f"{sup.name} is down ({sup.last_error})")
                continue
            if sup.liveness is not None and now - sup.last_beat > sup.liveness:
                problems.append(f"{sup.name} made no progress for {now - sup.last_beat:.0f}s "
                                f"(limit {sup.liveness:.0f}s)")
        return (False, "; ".join(problems)) if problems else (True, "ok")

    @property
    def failed(self) -> SupervisorFailed | None:
        return self._failed

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._running = True
        for sup in self._tasks.values():
            if sup.task is None:
                self._start(sup)
        await self._done.wait()
        if self._failed is not None:
            raise self._failed

    async def stop(self, timeout: float = 5.0) -> list[str]:
        """Cancel every task and wait up to `timeout`; returns the names that did not end."""
        self._stopping = True
        tasks = []
        for sup in self._tasks.values():
            if sup.waiting is not None:
                sup.waiting.cancel()
            if sup.task is not None and not sup.task.done():
                sup.task.cancel()
                tasks.append(sup.task)
        late: set[asyncio.Task[None]] = set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
        self._done.set()
        return sorted(t.get_name() for t in late)

    def quiesce(self) -> None:
        """A shutdown has begun: tasks may now end (a worker draining its queue) without being
        restarted or counted as failures."""
        self._stopping = True

    async def retire(self, *names: str, timeout: float = 5.0) -> None:
        """Stop these tasks for good (a shutdown step that must come before the others): they
        are cancelled and never restarted."""
        tasks = []
        for name in names:
            sup = self._tasks.pop(name, None)
            if sup is None:
                continue
            self.up.labels(task=name).set(0)
            if sup.waiting is not None:
                sup.waiting.cancel()
            if sup.task is not None and not sup.task.done():
                sup.task.cancel()
                tasks.append(sup.task)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _start(self, sup: _Supervised) -> None:
        sup.waiting = None
        if self._stopping:
            return
        sup.started = sup.last_beat = self._clock()
        sup.task = asyncio.get_running_loop().create_task(self._guard(sup), name=sup.name)
        self.up.labels(task=sup.name).set(1)

    async def _guard(self, sup: _Supervised) -> None:
        try:
            await sup.factory()
        except asyncio.CancelledError:
            if not self._stopping and self._tasks.get(sup.name) is sup:
                self._failed_once(sup, None, "was cancelled")
            raise
        except Exception as e:
            log.error("task %s failed", sup.name, exc_info=e,
                      extra={"task": sup.name, "component": self.component})
            self._failed_once(sup, e, f"{type(e).__name__}: {e}")
            return
        if not self._stopping:
            log.error("task %s returned although it should run until stopped", sup.name,
                      extra={"task": sup.name, "component": self.component})
            self._failed_once(sup, None, "returned")

    def _failed_once(self, sup: _Supervised, cause: BaseException | None, why: str) -> None:
        self.up.labels(task=sup.name).set(0)
        sup.last_error = why
        if self._clock() - sup.started >= self._stable_after:
            sup.failures = 0  # it ran well for a while: this is a fresh problem
            sup.backoff.reset()
        sup.failures += 1
        if sup.failures >= self._max_failures:
            self._failed = SupervisorFailed(sup.name, cause)
            log.critical("%s", self._failed, extra={"task": sup.name,
                                                    "component": self.component})
            self._done.set()
            return
        delay = sup.backoff.next()
        sup.restarts += 1
        self.restarts.labels(task=sup.name).inc()
        log.warning("restarting task %s in %.1fs (failure %d of %d allowed in a row)",
                    sup.name, delay, sup.failures, self._max_failures - 1,
                    extra={"task": sup.name, "component": self.component})
        sup.waiting = asyncio.get_running_loop().call_later(delay, self._start, sup)
