"""The topology controller: triggers feed a work queue; each pass observes, plans, executes.

Three triggers only ever enqueue the one key: a new desired spec, a watch event on the objects the
agent owns (so drift made by hand is corrected within moments), and a periodic resync (so
anything a missed event hid is corrected anyway). Only the elected leader runs passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.kube.errors import KubeError
from agent.kube.types import KubeClient
from agent.plan import Action, Note, Observed, plan_topology
from agent.runtime.queue import ShutDown, WorkQueue
from agent.spec import ClusterSpec, capi

from .execute import execute
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
    duration: float = 0.0
    converged: bool = False  # nothing left to do for this revision
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class TopologyController:
    def __init__(self, kube: KubeClient, desired: Callable[[], ClusterSpec | None], *,
                 on_pass: Callable[[PassResult], Awaitable[None]] | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 resync: float = 30.0, watch_timeout: int = 300,
                 queue: WorkQueue | None = None) -> None:
        self.kube = kube
        self.desired = desired
        self.on_pass = on_pass
        self.is_leader = is_leader
        self.resync = resync
        self.watch_timeout = watch_timeout
        self.queue = queue or WorkQueue()
        self.in_flight = 0
        self.passes = 0
        self.caches: Caches | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def trigger(self, why: str = "") -> None:
        if why:
            log.debug("reconcile triggered: %s", why)
        self.queue.add(KEY)

    async def run(self) -> None:
        """Until cancelled: one worker, the resync timer and the informers (watch triggers)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._worker(), name="reconcile-worker")
            tg.create_task(self._resync_loop(), name="reconcile-resync")
            tg.create_task(self._informers_loop(), name="informers")

    async def drain(self, grace: float) -> bool:
        """Stop taking work; wait up to `grace` for the pass in flight. True if it finished."""
        self.queue.shutdown()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return True
        except TimeoutError:
            return False

    async def _resync_loop(self) -> None:
        while True:
            self.trigger()
            await asyncio.sleep(self.resync)

    async def _informers_loop(self) -> None:
        """Keep informers for the desired spec's namespace and provider (restarted if they
        change, which a spec may do only by mistake, but must not break the agent)."""
        while True:
            spec = self.desired()
            if spec is None:
                await asyncio.sleep(0.5)
                continue
            caches = Caches(self.kube, spec, self.trigger)
            self.caches = caches
            task = asyncio.create_task(caches.run(), name="informers-run")
            try:
                while True:
                    await asyncio.sleep(1.0)
                    spec = self.desired()
                    if spec is not None and (spec.namespace,
                                             spec.infrastructure.provider) != caches.key:
                        break
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.caches = None

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            if not self.is_leader():
                self.queue.done(key)
                continue
            self._idle.clear()
            self.in_flight += 1
            try:
                result = await self.reconcile_once()
            finally:
                self.in_flight -= 1
                self._idle.set()
                self.queue.done(key)
            if result.error is not None:
                delay = self.queue.retry(key)
                log.warning("reconcile failed (retry in %.2fs): %s", delay, result.error)
            else:
                self.queue.forget(key)
                if not result.converged:
                    # Machines take time: look again soon rather than waiting for the resync.
                    self.queue.add_after(key, min(self.resync, 2.0))
            if self.on_pass is not None:
                with contextlib.suppress(Exception):
                    await self.on_pass(result)

    async def reconcile_once(self) -> PassResult:
        self.passes += 1
        spec = self.desired()
        if spec is None:
            return PassResult(0, None, converged=True)
        start = time.perf_counter()
        observed: Observed | None = None
        done: list[Action] = []
        try:
            caches = self.caches
            if caches is not None and caches.synced and caches.key == (
                    spec.namespace, spec.infrastructure.provider):
                observed = caches.observe(spec)
            else:
                observed = await observe(self.kube, spec)
                caches = None
            plan = plan_topology(spec, observed)
            done = await execute(self.kube, plan, written=caches.write_through
                                 if caches is not None else None)
            for action in done:
                log.info("%s", action.reason, extra={"kind": action.kind, "object": action.name,
                                                     "revision": spec.revision})
            converged = plan.empty and not plan.notes and _all_ready(spec, observed)
            return PassResult(spec.revision, observed, tuple(done), plan.notes,
                              duration=time.perf_counter() - start, converged=converged)
        except KubeError as e:
            return PassResult(spec.revision, observed, tuple(done), error=str(e),
                              duration=time.perf_counter() - start)


def _all_ready(spec: ClusterSpec, observed: Observed) -> bool:
    """Converged means the machines are there, not only that the objects say so."""
    from agent.plan.upgrade import rollout_settled

    if observed.kcp is None or not rollout_settled(observed.kcp):
        return False
    for pool in spec.workers:
        md = observed.machine_deployments.get(capi.md_name(spec, pool))
        if md is None or not rollout_settled(md):
            return False
    return True
