"""What the simulated controllers read: an in-memory copy of the cluster, kept by list and watch.

One informer per served kind the simulator cares about (CRDs installed later are found by
discovery again when a CustomResourceDefinition changes, and on every resync). Each change is
handed to a listener on the event loop; reads come from the worker thread, so the maps are
guarded by a lock and every read returns a copy. A write's answer goes into the cache at once
(when it is newer), so a pass never acts twice on its own stale view.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from agent.runtime.backoff import Backoff
from testbed.apiserver.errors import ApiError

from .http import KubeHttp, Obj, ServedType

log = logging.getLogger(__name__)

CRDS = "customresourcedefinitions.apiextensions.k8s.io"
WATCH_SECONDS = 240


@dataclass(frozen=True)
class Event:
    type: str  # ADDED, MODIFIED or DELETED
    rkey: str
    obj: Obj


def _rv(obj: Obj | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _at(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace") or "", obj["metadata"]["name"]


class _Relist(Exception):
    """The watch cannot go on from where it is (410 Gone, an ERROR event): list again."""


class Cache:
    """Informers over `http` for the kinds of `groups` that `wanted` accepts."""

    def __init__(self, http: KubeHttp, groups: tuple[str, ...],
                 wanted: Callable[[ServedType], bool], listener: Callable[[Event], None]) -> None:
        self.http = http
        self.groups = groups
        self.wanted = wanted
        self.listener = listener
        self.types: dict[str, ServedType] = {}
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        # The resourceVersion each deleted object was last seen at: a write's answer that
        # arrives after the deletion's event must not bring the object back.
        self._gone: dict[str, dict[tuple[str, str], int]] = {}
        self._lock = threading.Lock()
        self._informers: dict[str, asyncio.Task[None]] = {}
        # Kinds whose watch broke and that have not been listed again since: what the cache
        # holds of them may miss objects, so the simulator waits rather than act on it.
        self.stale: set[str] = set()
        self._listed: dict[str, asyncio.Event] = {}
        self._rediscover = asyncio.Event()
        self._discoverer: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Discover, list every kind and keep watching; returns once each kind is listed."""
        await self.discover()
        self._discoverer = asyncio.get_running_loop().create_task(
            self._discover_loop(), name="capi-sim-discovery")

    async def stop(self) -> None:
        tasks = [*self._informers.values()]
        if self._discoverer is not None:
            tasks.append(self._discoverer)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._informers.clear()
        self._discoverer = None

    def rediscover(self) -> None:
        self._rediscover.set()

    async def discover(self) -> None:
        """Start an informer for each wanted kind served now; wait until each has listed."""
        served = {t.key: t for t in await self.http.served_types(self.groups)
                  if self.wanted(t)}
        loop = asyncio.get_running_loop()
        for key, t in served.items():
            if self.types.get(key) == t and key in self._informers:
                continue
            old = self._informers.pop(key, None)
            if old is not None:
                old.cancel()
            self.types[key] = t
            self.stale.add(key)  # nothing of it is known until its first list
            self._listed[key] = asyncio.Event()
            self._informers[key] = loop.create_task(self._inform(t), name=f"informer-{key}")
        for key in [k for k in self.types if k not in served]:
            self.types.pop(key)
            self.stale.discard(key)
            task = self._informers.pop(key, None)
            if task is not None:
                task.cancel()
            with self._lock:
                self._objects.pop(key, None)
        await asyncio.gather(*(self._listed[k].wait() for k in served))

    async def _discover_loop(self) -> None:
        while True:
            await self._rediscover.wait()
            self._rediscover.clear()
            try:
                await self.discover()
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                log.debug("discovery failed, tried again at the next resync: %s", e)
            except Exception:  # the loop goes on; the next resync rings again
                log.exception("discovery failed")

    # -- reads (any thread) ----------------------------------------------------------------
    def get(self, key: str, ns: str | None, name: str) -> Obj | None:
        with self._lock:
            obj = self._objects.get(key, {}).get((ns or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def items(self, key: str, ns: str | None = None) -> list[Obj]:
        with self._lock:
            objs = [o for (ons, _), o in sorted(self._objects.get(key, {}).items())
                    if ns is None or ons == ns]
            return copy.deepcopy(objs)

    def keys(self, key: str, ns: str | None = None) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(k for k in self._objects.get(key, {}) if ns is None or k[0] == ns)

    # -- writes' answers -------------------------------------------------------------------
    def put(self, t: ServedType, obj: Obj) -> None:
        """Keep what a write answered, unless the cache has seen a newer version already."""
        with self._lock:
            objs = self._objects.setdefault(t.key, {})
            seen = max(_rv(objs.get(_at(obj))), self._gone.get(t.key, {}).get(_at(obj), 0))
            if seen < _rv(obj):
                objs[_at(obj)] = copy.deepcopy(obj)

    # -- informers -------------------------------------------------------------------------
    async def _inform(self, t: ServedType) -> None:
        backoff = Backoff(initial=0.05, maximum=2.0)
        while True:
            try:
                items, rv = await self.http.list(t)
                self._replace(t, items, rv)
                self.stale.discard(t.key)
                self._listed[t.key].set()
                backoff.reset()
                while True:
                    rv = await self._watch(t, rv)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.code == 404:  # the kind went away: discovery ends this informer
                    self.rediscover()
                self.stale.add(t.key)
                log.debug("informer %s: %s %s; listing again", t.key, e.code, e.message)
            except (_Relist, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                self.stale.add(t.key)
                log.debug("informer %s: %r; listing again", t.key, e)
            except Exception:  # anything else (a line too long, a malformed event) too
                self.stale.add(t.key)
                log.exception("informer %s failed; listing again", t.key)
            await asyncio.sleep(backoff.next())

    async def _watch(self, t: ServedType, rv: str) -> str:
        """Follow one watch until the server ends it; the resourceVersion to go on from."""
        async for ev in self.http.watch(t, rv, WATCH_SECONDS):
            obj = ev.get("object") or {}
            if ev.get("type") == "ERROR":
                raise _Relist(obj.get("message", "watch error"))
            rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
            if ev.get("type") == "BOOKMARK":
                continue
            obj["apiVersion"], obj["kind"] = t.api_version(), t.kind
            self._apply(t, str(ev["type"]), obj)
        return rv

    def _apply(self, t: ServedType, typ: str, obj: Obj) -> None:
        with self._lock:
            objs = self._objects.setdefault(t.key, {})
            if typ == "DELETED":
                objs.pop(_at(obj), None)
                self._gone.setdefault(t.key, {})[_at(obj)] = _rv(obj)
            elif _rv(objs.get(_at(obj))) < _rv(obj):
                objs[_at(obj)] = obj
        self._notify(Event(typ, t.key, obj))

    def _replace(self, t: ServedType, items: list[Obj], list_rv: str) -> None:
        """A fresh list: what changed since the last one is told as events. What the cache
        learnt after the list was read (a write's answer, a deletion) is kept."""
        at_rv = int(list_rv) if list_rv.isdigit() else 0
        fresh = {_at(o): o for o in items}
        with self._lock:
            old = self._objects.get(t.key, {})
            gone = {at: rv for at, rv in self._gone.get(t.key, {}).items() if rv > at_rv}
            for at, o in old.items():
                if _rv(o) > at_rv and _rv(o) > _rv(fresh.get(at)):
                    fresh[at] = o
            for at, rv in gone.items():
                if at in fresh and _rv(fresh[at]) <= rv:
                    del fresh[at]
            self._objects[t.key] = fresh
            self._gone[t.key] = gone
        for at, o in fresh.items():
            if at not in old or _rv(old[at]) != _rv(o):
                self._notify(Event("ADDED" if at not in old else "MODIFIED", t.key, o))
        for at, o in old.items():
            if at not in fresh:
                self._notify(Event("DELETED", t.key, o))

    def _notify(self, ev: Event) -> None:
        if ev.rkey == CRDS:
            self.rediscover()
        try:
            self.listener(ev)
        except Exception:  # a listener must never stop an informer
            log.exception("handling an event of %s failed", ev.rkey)

    # -- for tests -------------------------------------------------------------------------
    async def synced(self, timeout: float = 60.0) -> None:
        """Return once the cache holds what a fresh list of every kind holds (what was written
        before the call has arrived); a bound only ends a hang."""
        deadline = time.monotonic() + timeout
        while True:
            behind: list[str] = []
            for key, t in list(self.types.items()):
                items, _ = await self.http.list(t)
                want = {_at(o): _rv(o) for o in items}
                with self._lock:
                    have = {at: _rv(o) for at, o in self._objects.get(key, {}).items()}
                if want != have:
                    behind.append(key)
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the simulator's cache is behind the API for {behind}")
            await asyncio.sleep(0.02)
