"""Watches on every kind of object the add-ons applied, so drift is seen within moments.

One informer per resource type, across namespaces, limited to objects carrying the add-on
label; each change enqueues the add-on the object belongs to. The cache keeps only what passes
read (metadata, the agent's own managedFields entry reduced to a digest, the few spec fields
health needs, status), so watching an 800 KB CRD costs a few hundred bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from agent.kube import KubeClient, NotFound, Obj, Resource
from agent.plan.addons import ADDON_LABEL
from agent.runtime.informer import Informer, object_key

log = logging.getLogger(__name__)

FIELDS_DIGEST = "outpost.io/fields-digest"  # where the slim cache keeps the managedFields digest
_SPEC_KEPT = ("replicas", "updateStrategy", "type")


def fields_digest(obj: Obj, manager: str) -> str:
    """Digest of `manager`'s apply entry in managedFields: it changes when anyone else takes or
    removes a field the manager set, so "unchanged" means "nobody touched what we own"."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or ():
        if (entry.get("manager") == manager and entry.get("operation") == "Apply"
                and not entry.get("subresource")):
            doc = json.dumps([entry.get("apiVersion"), entry.get("fieldsV1")], sort_keys=True)
            return hashlib.sha256(doc.encode()).hexdigest()[:32]
    return ""


def slim(manager: str) -> Callable[[Obj], Obj]:
    def transform(obj: Obj) -> Obj:
        meta = obj.get("metadata") or {}
        kept: dict[str, Any] = {k: meta[k] for k in (
            "name", "namespace", "uid", "resourceVersion", "generation", "labels",
            "deletionTimestamp") if k in meta}
        kept["annotations"] = {FIELDS_DIGEST: fields_digest(obj, manager)}
        out: Obj = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                    "metadata": kept}
        spec = obj.get("spec")
        if isinstance(spec, dict):
            out["spec"] = {k: spec[k] for k in _SPEC_KEPT if k in spec}
        if "status" in obj:
            out["status"] = obj["status"]
        return out

    return transform


class ObjectWatches:
    """Informers for the resource types the add-ons use, started as they are first needed."""

    def __init__(self, kube: KubeClient, manager: str, on_addon: Callable[[str], None], *,
                 watch_timeout: int = 300) -> None:
        self.kube = kube
        self.manager = manager
        self.on_addon = on_addon
        self.watch_timeout = watch_timeout
        self.informers: dict[Resource, Informer] = {}
        self._tasks: dict[Resource, asyncio.Task[None]] = {}
        self._wanted = asyncio.Event()
        self._transform = slim(manager)
        self._owner: dict[tuple[Resource, str], str] = {}

    def want(self, res: Resource) -> None:
        if res not in self.informers:
            inf = Informer(self.kube, res, None, label_selector=ADDON_LABEL,
                           watch_timeout=self.watch_timeout, transform=self._transform)
            inf.on_object = lambda key, i=inf: self._changed(i, key)
            self.informers[res] = inf
            self._wanted.set()

    def _changed(self, inf: Informer, key: str) -> None:
        obj = inf.get(key)
        if obj is None:  # deleted: the cache no longer says whose it was, this map does
            addon = self._owner.pop((inf.res, key), None)
        else:
            addon = ((obj.get("metadata") or {}).get("labels") or {}).get(ADDON_LABEL)
            if addon:
                self._owner[(inf.res, key)] = str(addon)
        if addon:
            self.on_addon(str(addon))

    async def get(self, res: Resource, obj: Obj) -> Obj | None:
        """The live object (slimmed) from the cache once synced, else from the API."""
        inf = self.informers.get(res)
        key = object_key(obj) if res.namespaced else str(obj["metadata"]["name"])
        if inf is not None and inf.synced.is_set():
            return inf.get(key)
        meta = obj["metadata"]
        try:
            live = await self.kube.get(res, meta["name"], meta.get("namespace") if
                                       res.namespaced else None)
        except NotFound:
            return None
        return self._transform(live)

    def store(self, res: Resource, obj: Obj) -> None:
        """Write-through after our own apply."""
        inf = self.informers.get(res)
        if inf is not None:
            inf.store(obj)

    def stalled(self, limit: float) -> list[str]:
        return [res.plural for res, inf in self.informers.items() if inf.stalled(limit)]

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        """Run every wanted informer; an informer that dies ends this (the supervisor restarts
        it, relisting everything)."""
        try:
            while True:
                beat()
                for res, inf in self.informers.items():
                    if res not in self._tasks:
                        self._tasks[res] = asyncio.create_task(inf.run(),
                                                               name=f"watch-{res.plural}")
                for res, task in self._tasks.items():
                    if task.done():
                        task.result()
                        raise RuntimeError(f"the watch on {res.plural} ended")
                self._wanted.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # not wait_for: see AddonController
                        await self._wanted.wait()
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
