"""Informers: a list+watch kept in memory per resource, as controller-runtime's cache does.

Passes read observed state from here instead of the API, so a periodic resync of a converged
cluster costs no API calls at all, and every change to a watched object also triggers a pass.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from agent.kube.errors import Gone, KubeError
from agent.kube.types import KubeClient, Obj, Resource

log = logging.getLogger(__name__)


def _rv(obj: Obj) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Informer:
    def __init__(self, kube: KubeClient, res: Resource, namespace: str | None, *,
                 label_selector: str | None = None,
                 on_change: Callable[[str], None] = lambda why: None,
                 watch_timeout: int = 300) -> None:
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.items: dict[str, Obj] = {}
        self.synced = asyncio.Event()

    def get(self, name: str) -> Obj | None:
        return self.items.get(name)

    def store(self, obj: Obj) -> None:
        """Write-through after our own write, so the next pass does not act on stale data."""
        name = obj["metadata"]["name"]
        current = self.items.get(name)
        if current is None or _rv(obj) >= _rv(current):
            self.items[name] = obj

    def forget(self, name: str) -> None:
        self.items.pop(name, None)

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                listed = await self.kube.list(self.res, self.namespace,
                                              label_selector=self.label_selector)
                self.items = {o["metadata"]["name"]: o for o in listed.items}
                self.synced.set()
                backoff = 0.2
                self.on_change(f"listed {self.res.kind}")
                rv = listed.resource_version
                while True:
                    async for ev in self.kube.watch(
                            self.res, self.namespace, label_selector=self.label_selector,
                            resource_version=rv, timeout_seconds=self.watch_timeout):
                        rv = ev.resource_version or rv
                        if ev.type == "BOOKMARK":
                            continue
                        name = ev.object["metadata"]["name"]
                        if ev.type == "DELETED":
                            self.items.pop(name, None)
                        else:
                            self.items[name] = ev.object
                        self.on_change(f"{ev.type} {self.res.kind}/{name}")
                    # The server ended the watch (timeout): resume where we were.
            except Gone:
                log.debug("%s watch expired; relisting", self.res.plural)
            except KubeError as e:
                self.synced.clear()  # until relisted, passes read from the API directly
                log.warning("watch on %s failed, relisting in %.1fs: %s", self.res.plural,
                            backoff, e)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 30.0)
