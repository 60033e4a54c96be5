"""The topology controller: triggers feed a work queue; each pass observes, plans, executes.

Three triggers only ever enqueue a key: a new desired spec, a watch event on the objects the
agent owns (so drift made by hand is corrected within moments), and a periodic resync (so
anything a missed event hid is corrected anyway). Only the elected leader runs passes.

Per-key error isolation, as controller-runtime does it: whatever a pass raises (an API error, a
bug, an object nobody expected) is caught, logged with its traceback, counted, reported as a
condition, and the key is requeued with backoff; the worker and every other key go on. The
three loops are separate coroutines that the daemon's supervisor owns and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.kube.errors import KubeError
from agent.kube.types import KubeClient
from agent.plan import Action, Note, Observed, plan_topology
from agent.plan.upgrade import rollout_settled
from agent.runtime.queue import ShutDown, WorkQueue
from agent.spec import ClusterSpec, capi

from .execute import Failure, execute
from .observe import Caches, observe

log = logging.getLogger(__name__)
KEY = "topology"


@dataclass(frozen=True)
class PassResult:
    revision: int
    observed: Observed | None
    done: tuple[Action, ...] = ()
    notes: tuple[Note, ...] = ()
    error: str | None = None
    failures: tuple[Failure, ...] = ()
    duration: float = 0.0
    converged: bool = False  # nothing left to do for this revision
    crashed: bool = False  # the pass raised something unexpected (a bug or a malformed object)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


Beat = Callable[[], None]


class TopologyController:
    def __init__(self, kube: KubeClient, desired: Callable[[], ClusterSpec | None], *,
                 on_pass: Callable[[PassResult], Awaitable[None]] | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 resync: float = 30.0, watch_timeout: int = 300,
                 queue: WorkQueue | None = None, idle_beat: float = 5.0,
                 contact_age: Callable[[], float | None] = lambda: None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube = kube
        self.contact_age = contact_age
        self.clock = clock  # the time maintenance windows are read at
        self.desired = desired
        self.on_pass = on_pass
        self.is_leader = is_leader
        self.resync = resync
        self.watch_timeout = watch_timeout
        self.queue = queue or WorkQueue()
        self.idle_beat = idle_beat
        self.in_flight = 0
        self.passes = 0
        self.crashes = 0
        self.caches: Caches | None = None
        self._revision = 0  # of the pass in flight, for a pass that raises
        self._idle = asyncio.Event()
        self._idle.set()

    def trigger(self, why: str = "") -> None:
        if why:
            log.debug("reconcile triggered: %s", why)
        self.queue.add(KEY)

    async def drain(self, grace: float) -> bool:
        """Stop taking work; wait up to `grace` for the pass in flight. True if it finished."""
        self.queue.shutdown()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def resync_loop(self) -> None:
        while True:
            self.trigger()
            await asyncio.sleep(self.resync)

    async def informers_loop(self, beat: Beat = lambda: None) -> None:
        """Keep informers for the desired spec's namespace and provider (restarted if they
        change, which a spec may do only by mistake, but must not break the agent)."""
        while True:
            beat()
            spec = self.desired()
            if spec is None:
                await asyncio.sleep(0.5)
                continue
            caches = Caches(self.kube, spec, self.trigger, watch_timeout=self.watch_timeout)
            self.caches = caches
            task = asyncio.create_task(caches.run(), name="informers-run")
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=1.0)
                    stalled = caches.stalled()
                    if stalled:
                        log.warning("informers made no progress: %s", ", ".join(stalled))
                    else:
                        beat()
                    spec = self.desired()
                    if spec is not None and (spec.namespace,
                                             spec.infrastructure.provider) != caches.key:
                        break
                if task.done():
                    task.result()  # an informer died: raise, so the supervisor restarts us
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.caches = None

    async def worker(self, beat: Beat = lambda: None) -> None:
        """Take keys until the queue shuts down. Beats while waiting for work and after each
        pass, so a pass stuck for longer than the liveness window fails /healthz."""
        while True:
            beat()
            try:
                key = await self._next(beat)
            except ShutDown:
                return
            if not self.is_leader():
                self.queue.done(key)
                continue
            self._idle.clear()
            self.in_flight += 1
            try:
                result = await self.reconcile(key)
            finally:
                self.in_flight -= 1
                self._idle.set()
                self.queue.done(key)
            beat()
            if result.error is not None:
                delay = self.queue.retry(key)
                log.warning("reconcile of %s failed (retry in %.2fs): %s", key, delay,
                            result.error, extra={"key": str(key), "revision": result.revision})
            else:
                self.queue.forget(key)
                if not result.converged:
                    # Machines take time: look again soon rather than waiting for the resync.
                    self.queue.add_after(key, min(self.resync, 2.0))
            if self.on_pass is not None:
                try:
                    await self.on_pass(result)
                except Exception:
                    log.exception("reporting the outcome of a pass failed")

    async def _next(self, beat: Beat) -> Hashable:
        while True:
            try:
                async with asyncio.timeout(self.idle_beat):  # not wait_for: see natslink
                    return await self.queue.get()
            except TimeoutError:
                beat()

    async def reconcile(self, key: Hashable) -> PassResult:
        """One pass for `key`; never raises (but for cancellation)."""
        started = time.perf_counter()
        try:
            return await self.reconcile_once()
        except Exception as e:
            self.crashes += 1
            log.exception("reconcile of %s raised; requeued with backoff", key)
            return PassResult(self._revision, None,
                              error=f"unexpected {type(e).__name__}: {e}", crashed=True,
                              duration=time.perf_counter() - started)

    async def reconcile_once(self) -> PassResult:
        self.passes += 1
        spec = self.desired()
        if spec is None:
            return PassResult(0, None, converged=True)
        self._revision = spec.revision
        start = time.perf_counter()
        caches = self.caches
        try:
            if caches is not None and caches.synced and caches.key == (
                    spec.namespace, spec.infrastructure.provider):
                observed = caches.observe(spec, self.clock())
            else:
                observed = await observe(self.kube, spec, self.clock())
                caches = None
        except KubeError as e:
            return PassResult(spec.revision, None, error=str(e),
                              duration=time.perf_counter() - start)
        plan = plan_topology(spec, observed, contact_age=self.contact_age())
        outcome = await execute(self.kube, plan, may_write=self.is_leader,
                                written=caches.write_through if caches is not None else None)
        for action in outcome.done:
            log.info("%s", action.reason, extra={"kind": action.kind, "object": action.name,
                                                 "revision": spec.revision})
        for failure in outcome.failed:
            log.warning("%s %s/%s failed: %s", type(failure.action).__name__.lower(),
                        failure.action.kind, failure.action.name, failure.error,
                        extra={"revision": spec.revision, "permanent": failure.permanent})
        converged = (plan.empty and not plan.notes and outcome.error is None
                     and _all_ready(spec, observed))
        return PassResult(spec.revision, observed, tuple(outcome.done), plan.notes,
                          error=outcome.error, failures=tuple(outcome.failed),
                          duration=time.perf_counter() - start, converged=converged)


def _all_ready(spec: ClusterSpec, observed: Observed) -> bool:
    """Converged means the machines are there, not only that the objects say so."""
    if observed.kcp is None or not rollout_settled(observed.kcp):
        return False
    for pool in spec.workers:
        md = observed.machine_deployments.get(capi.md_name(spec, pool))
        if md is None or not rollout_settled(md):
            return False
    return True
