"""The controller runtime: one work queue fed by the informers' events, timed requeues and a
resync.

Events only enqueue keys (on the event loop); a single worker then reconciles one key at a time
on its own thread, so a pass never interleaves with another pass (no self-inflicted conflicts)
and its blocking writes never stall the loop, which may be serving the very API written to.
Everything is level-triggered: a lost event costs at most one resync period.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from .api import CLUSTERS, Api, Kind, rkey
from .cache import Event
from .conditions import condition
from .util import PAUSED_ANNOTATION, Obj, annots, api_group, dig, meta, owner_refs

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (resource key, namespace, name)


class WorkloadApi(Protocol):
    """A workload cluster's own API (either testbed backend), as its kubeconfig Secret names
    it."""

    @property
    def url(self) -> str: ...
    def kubeconfig(self, context: str) -> dict[str, Any]: ...


@dataclass
class SimConfig:
    step_delay: float = 0.05  # time per machine phase (Pending->Provisioning->Provisioned->Running)
    never_ready: Callable[[dict[str, Any]], bool] | None = None  # such a machine never runs
    provision_delay: float = 0.0  # extra delay before infrastructure is provisioned
    resync: float = 1.0
    certificate_validity_days: int = 365


class Timers:
    """Monotonic "since when" marks per (uid, stage): how a simulated step takes its time
    without writing timestamps into objects on every pass."""

    def __init__(self) -> None:
        self._start: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # the worker asks, the event loop forgets

    def remaining(self, uid: str, stage: str, delay: float) -> float:
        """Seconds left before `delay` has passed since this stage was first asked about."""
        now = time.monotonic()
        with self._lock:
            start = self._start.setdefault((uid, stage), now)
        return max(0.0, start + delay - now)

    def forget(self, uid: str) -> None:
        with self._lock:
            for k in [k for k in self._start if k[0] == uid]:
                del self._start[k]


@dataclass
class Context:
    """What every reconciler shares: the API, the knobs, the clocks and the outside hooks."""

    api: Api
    config: SimConfig
    timers: Timers
    workload_api: Callable[[str, str], WorkloadApi | None]


class Reconciler:
    """Base of the simulated controllers: the shared context, and `reconcile` to provide."""

    kinds: tuple[Kind, ...] = ()  # the kinds this reconciler is responsible for

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.api = ctx.api

    def reconcile(self, obj: Obj) -> float | None:
        """Converge one object; returns seconds after which to look again, or None."""
        raise NotImplementedError

    def remaining(self, obj: Obj, stage: str, delay: float) -> float:
        """Seconds left of one simulated step of obj (0 once it has taken `delay`)."""
        return self.ctx.timers.remaining(meta(obj)["uid"], stage, delay)


def paused(cluster: Obj | None, obj: Obj) -> bool:
    """CAPI's pause rule: the Cluster's spec.paused, or the paused annotation on the object."""
    if PAUSED_ANNOTATION in annots(obj):
        return True
    return bool(cluster is not None and dig(cluster, "spec", "paused"))


class Runtime:
    def __init__(self, ctx: Context, reconcilers: list[Reconciler],
                 active: Callable[[], bool]) -> None:
        self.ctx = ctx
        self.active = active
        self._by_rkey: dict[str, Reconciler] = {}
        for r in reconcilers:
            for kind in r.kinds:
                self._by_rkey[rkey(kind)] = r
        self._pending: dict[Key, None] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._pass: asyncio.Future[float | None] | None = None  # the pass under way

    # -- intake -----------------------------------------------------------------------------
    def enqueue(self, key: Key) -> None:
        if not self._tasks or key[0] not in self._by_rkey:
            return  # not running: start() queues everything anyway
        self._pending[key] = None
        self._idle.clear()
        self._wake.set()

    def enqueue_after(self, key: Key, delay: float) -> None:
        if self._loop is None or not self._tasks:
            return
        when = self._loop.time() + delay
        handle = self._timers.get(key)
        if handle is not None and not handle.cancelled() and handle.when() <= when:
            return
        if handle is not None:
            handle.cancel()
        self._timers[key] = self._loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    def on_event(self, ev: Event) -> None:
        """Map a change to the keys whose state may depend on it (never write from here)."""
        try:
            self._map_event(ev)
        except Exception:  # a listener must never stop an informer
            log.exception("mapping event for %s failed", ev.rkey)

    def _map_event(self, ev: Event) -> None:
        m = meta(ev.obj)
        ns = m.get("namespace", "")
        if ev.type == "DELETED" and m.get("uid"):
            self.ctx.timers.forget(m["uid"])
        self.enqueue((ev.rkey, ns, m.get("name", "")))
        refs = [(api_group(r), r) for r in owner_refs(ev.obj)]
        # Providers wait on what their consumer says (e.g. an infra machine on its Machine's
        # bootstrap data): wake the objects this one references too.
        for path in (("infrastructureRef",), ("bootstrap", "configRef"), ("controlPlaneRef",)):
            ref = dig(ev.obj, "spec", *path)
            if isinstance(ref, dict):
                refs.append((str(ref.get("apiGroup", "")), ref))
        for group, ref in refs:
            rt = self.ctx.api.type_of_kind(group, str(ref.get("kind", "")))
            if rt is not None:
                self.enqueue((rt.key, ns, str(ref.get("name", ""))))
        if ev.rkey in self._by_rkey and ev.rkey != rkey(CLUSTERS):
            # Clusters summarise everything below them; infra clusters and control planes
            # are found through the Cluster's references before owner references exist.
            for cns, cname in self._cluster_keys(ns):
                self.enqueue((rkey(CLUSTERS), cns, cname))
        if ev.rkey == rkey(CLUSTERS):
            # Pause, initialization and endpoint of a Cluster gate every object below it.
            self.enqueue_namespace(ns)

    def _cluster_keys(self, ns: str) -> list[tuple[str, str]]:
        rt = self.ctx.api.type(CLUSTERS)
        return list(self.ctx.api.iter_keys(rt, ns)) if rt is not None else []

    def enqueue_namespace(self, ns: str | None) -> None:
        for rk in self._by_rkey:
            rt = self.ctx.api.cache.types.get(rk)
            if rt is None:
                continue
            for kns, name in self.ctx.api.iter_keys(rt, ns):
                self.enqueue((rk, kns, name))

    # -- work -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="capi-sim-worker")
        self._tasks = [self._loop.create_task(self._work(), name="capi-sim-worker"),
                       self._loop.create_task(self._resync(), name="capi-sim-resync")]

    async def stop(self) -> None:
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        for t in self._tasks:
            t.cancel()
        failure: BaseException | None = None
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception as e:  # the worker died: reported once everything is stopped
                failure = failure or e
        if self._pass is not None:  # let a pass end while the loop still answers its writes
            await asyncio.wait([self._pass])
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        self._tasks = []
        self._idle.set()
        if failure is not None:
            raise failure

    def scheduled(self, ns: str | None = None) -> list[Key]:
        """The keys (of namespace ns, or all) waiting for a timed requeue."""
        return [k for k, h in self._timers.items()
                if not h.cancelled() and (ns is None or k[1] == ns)]

    async def wait_idle(self) -> None:
        """Return once the queue is empty; raise if the worker has died (it would never be)."""
        while True:
            await self._idle_or_dead()
            await asyncio.sleep(0)
            if self._idle.is_set():
                return

    async def _idle_or_dead(self) -> None:
        worker = self._tasks[0] if self._tasks else None
        if worker is None:
            await self._idle.wait()
            return
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait({idle, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        if worker.done() and not self._idle.is_set():
            cause = None if worker.cancelled() else worker.exception()
            raise RuntimeError("the simulator's worker has stopped") from cause

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.config.resync)
            self.ctx.api.cache.rediscover()  # kinds installed since (CRDs) join in
            self.enqueue_namespace(None)

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                key = next(iter(self._pending))
                del self._pending[key]
                assert self._loop is not None and self._thread is not None
                self._pass = self._loop.run_in_executor(self._thread, self._process, key)
                delay = await asyncio.shield(self._pass)
                self._pass = None
                if delay is not None:
                    self.enqueue_after(key, max(delay, 0.001))
            self._idle.set()

    def _process(self, key: Key) -> float | None:
        """One pass over one key, on the worker thread; seconds until the next, or None."""
        if not self.active():
            return None  # the resync brings everything back once the controllers are installed
        if self.ctx.api.cache.stale:
            return 0.05  # part of the cache is being listed again: never act on a partial view
        rk, ns, name = key
        reconciler = self._by_rkey.get(rk)
        rt = self.ctx.api.cache.types.get(rk)
        if reconciler is None or rt is None:
            return None
        obj = self.ctx.api.get_typed(rt, ns or None, name)
        if obj is None:
            return None
        try:
            cluster = self.ctx.api.cluster_of(obj) if rk != rkey(CLUSTERS) else obj
            if paused(cluster, obj):
                self._mark_paused(obj)
                return None
            return reconciler.reconcile(obj)
        except Exception:  # never crash on a half-formed object: log, skip, resync retries
            log.exception("reconciling %s %s/%s failed", rt.kind, ns, name)
            return None

    def _mark_paused(self, obj: Obj) -> None:
        """A paused object only learns that it is paused; nothing else about it changes."""
        self.ctx.api.set_conditions(obj, [condition("Paused", True, "Paused")])
