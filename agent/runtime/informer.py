"""Informers: a list+watch kept in memory per resource, as controller-runtime's cache does.

Passes read observed state from here instead of the API, so a periodic resync of a converged
cluster costs no API calls at all, and every change to a watched object also triggers a pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from agent.kube.errors import Gone, KubeError
from agent.kube.types import KubeClient, Obj, Resource

from .backoff import Backoff

log = logging.getLogger(__name__)


def object_key(obj: Obj) -> str:
    """`namespace/name` for a namespaced object, `name` for a cluster-scoped one (the key of a
    work queue item, as controller-runtime's NamespacedName)."""
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


def _rv(obj: Obj) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


Indexer = Callable[[Obj], Iterable[str]]
"""The values an object is found under in one index (client-go's IndexFunc)."""


class Informer:
    def __init__(self, kube: KubeClient, res: Resource, namespace: str | None, *,
                 label_selector: str | None = None,
                 on_change: Callable[[str], None] = lambda why: None,
                 on_object: Callable[[str], None] | None = None,
                 watch_timeout: int = 300,
                 indexers: Mapping[str, Indexer] | None = None,
                 transform: Callable[[Obj], Obj] | None = None) -> None:
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        #: Called with the key of each object listed, added, changed or deleted: a
        #: controller's event handler enqueues it.
        self.on_object = on_object
        self.watch_timeout = watch_timeout
        #: Monotonic time of the last list, event, watch renewal or retry: only a call that
        #: never returns (a stuck watch) stops it.
        self.progress = time.monotonic()
        #: By name when the informer watches one namespace (or a cluster-scoped type), by
        #: `namespace/name` (object_key) when it watches a namespaced type in all namespaces.
        #: Read it freely; change it only through store() and forget(), which keep the
        #: indexes in step.
        self.items: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self._key = (object_key if namespace is None and res.namespaced
                     else lambda o: str(o["metadata"]["name"]))
        #: What the cache keeps of each object (client-go's SetTransform): dropping what no
        #: pass reads keeps a watch on large objects (CRDs, dashboards) from costing memory.
        self._transform = transform
        self._indexers = dict(indexers or {})
        self._indexes: dict[str, dict[str, set[str]]] = {n: {} for n in self._indexers}

    def stalled(self, limit: float) -> bool:
        """True when nothing came from the API for longer than `limit` seconds (a healthy watch
        is renewed every `watch_timeout` at the latest)."""
        return time.monotonic() - self.progress > limit

    def get(self, name: str) -> Obj | None:
        return self.items.get(name)

    def by_index(self, index: str, value: str) -> list[Obj]:
        """The cached objects `index` files under `value`, in O(matches): a fleet-wide
        lookup by name must not scan 10,000 objects on every pass."""
        keys = self._indexes[index].get(value, ())
        return [self.items[k] for k in keys if k in self.items]

    def store(self, obj: Obj) -> None:
        """Write-through after our own write, so the next pass does not act on stale data."""
        name = self._key(obj)
        current = self.items.get(name)
        if current is None or _rv(obj) >= _rv(current):
            self._put(name, obj)

    def forget(self, name: str) -> None:
        old = self.items.pop(name, None)
        if old is not None:
            self._unindex(name, old)

    def _put(self, key: str, obj: Obj) -> None:
        if self._transform is not None:
            obj = self._transform(obj)
        old = self.items.get(key)
        if old is not None:
            self._unindex(key, old)
        self.items[key] = obj
        for index, values_of in self._indexers.items():
            for value in values_of(obj):
                self._indexes[index].setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: Obj) -> None:
        for index, values_of in self._indexers.items():
            table = self._indexes[index]
            for value in values_of(obj):
                keys = table.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del table[value]

    def _replace(self, objs: Iterable[Obj]) -> None:
        self.items = {}
        self._indexes = {n: {} for n in self._indexers}
        for o in objs:
            self._put(self._key(o), o)

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion, forever. Any failure (an API
        error, a malformed event) relists after a backoff; a 410 relists at once."""
        backoff = Backoff(0.2, 30.0)
        while True:
            try:
                await self._list_and_watch(backoff)
            except Gone:
                log.debug("%s watch expired; relisting", self.res.plural)
            except Exception as e:
                self.synced.clear()  # until relisted, passes read from the API directly
                # A failing API is not a stuck informer: retrying counts as progress, so an
                # outage of the API server does not make the kubelet restart the agent.
                self.progress = time.monotonic()
                delay = backoff.next()
                if isinstance(e, KubeError):
                    log.warning("watch on %s failed, relisting in %.1fs: %s", self.res.plural,
                                delay, e)
                else:
                    log.error("informer for %s failed, relisting in %.1fs", self.res.plural,
                              delay, exc_info=e)
                await asyncio.sleep(delay)

    async def _list_and_watch(self, backoff: Backoff) -> None:
        listed = await self.kube.list(self.res, self.namespace,
                                      label_selector=self.label_selector)
        self._replace(listed.items)
        self.synced.set()
        self.progress = time.monotonic()
        backoff.reset()
        self._changed(f"listed {self.res.kind}")
        for key in list(self.items):
            self._object_changed(key)
        rv = listed.resource_version
        while True:
            async for ev in self.kube.watch(
                    self.res, self.namespace, label_selector=self.label_selector,
                    resource_version=rv, timeout_seconds=self.watch_timeout):
                self.progress = time.monotonic()
                rv = ev.resource_version or rv
                if ev.type == "BOOKMARK":
                    continue
                name = self._key(ev.object)
                if ev.type == "DELETED":
                    self.forget(name)
                else:
                    self._put(name, ev.object)
                self._changed(f"{ev.type} {self.res.kind}/{name}")
                self._object_changed(name)
            # The server ended the watch (timeout): resume where we were.
            self.progress = time.monotonic()

    def _object_changed(self, key: str) -> None:
        if self.on_object is None:
            return
        try:
            self.on_object(key)
        except Exception:
            log.exception("the object handler of the %s informer failed", self.res.plural)

    def _changed(self, why: str) -> None:
        try:
            self.on_change(why)
        except Exception:
            log.exception("the change handler of the %s informer failed", self.res.plural)
