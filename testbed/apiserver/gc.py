"""Controllers every real cluster runs beside the apiserver: garbage collector and namespaces.

They run asynchronously after writes, as kube-controller-manager's do, so clients see the same
eventual (not instant) cascading deletion a real cluster gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging

from .errors import ApiError
from .registry import NS_KEY, Registry
from .store import Event, Obj

log = logging.getLogger(__name__)


class ClusterControllers:
    def __init__(self, registry: Registry, delay: float = 0.02) -> None:
        self.registry = registry
        self._delay = delay
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        registry.store.subscribe(self._on_event)

    def _on_event(self, ev: Event) -> None:
        self._wake.set()
        if ev.type == "ADDED" and ev.rkey == NS_KEY:
            self._default_service_account(ev.obj["metadata"]["name"])

    def _default_service_account(self, ns: str) -> None:
        rt = self.registry.type_for("", "v1", "serviceaccounts")
        with contextlib.suppress(ApiError):
            self.registry.create(rt, ns, {"metadata": {"name": "default"}},
                                 manager="kube-controller-manager")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="testbed-gc")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._delay)
            try:
                self.sweep()
            except Exception:  # a controller keeps running, as kube-controller-manager does
                log.exception("garbage collector sweep failed")

    def sweep(self) -> None:
        """One pass: collect orphans, finish foreground deletions, empty terminating namespaces."""
        reg = self.registry
        store = reg.store
        dependents: dict[str, list[tuple[str, Obj]]] = {}
        for rkey, obj in list(store.all_items()):
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents.setdefault(ref.get("uid", ""), []).append((rkey, obj))
        for rkey, obj in list(store.all_items()):
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not meta.get("deletionTimestamp"):
                alive = [r for r in refs if self._owner_alive(r, meta.get("namespace", ""))]
                if not alive:
                    self._delete(rkey, obj, "Background")
                elif len(alive) != len(refs):
                    self._set_owner_refs(rkey, obj, alive)
            if meta.get("deletionTimestamp") and "foregroundDeletion" in (
                    meta.get("finalizers") or []):
                self._foreground(rkey, obj, dependents.get(meta["uid"], []))
        for ns in list(store.items(NS_KEY)):
            if ns["metadata"].get("deletionTimestamp"):
                self._terminate_namespace(ns)

    def _owner_alive(self, ref: dict[str, object], ns: str) -> bool:
        hit = self.registry.store.by_uid(str(ref.get("uid", "")))
        if hit is None:
            return False
        _, owner = hit
        # A deleted-and-recreated owner with the same name but a new uid is not the owner.
        return bool(owner["metadata"]["name"] == ref.get("name"))

    def _delete(self, rkey: str, obj: Obj, policy: str) -> None:
        rt = self.registry.type_of(rkey)
        if rt is None:
            return
        with contextlib.suppress(ApiError):
            self.registry.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 propagation=policy)

    def _set_owner_refs(self, rkey: str, obj: Obj, refs: list[dict[str, object]]) -> None:
        rt = self.registry.type_of(rkey)
        if rt is None:
            return
        new = copy.deepcopy(obj)
        new["metadata"]["ownerReferences"] = refs
        with contextlib.suppress(ApiError):
            self.registry.update(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 new, manager="garbage-collector")

    def _remove_finalizer(self, rkey: str, obj: Obj, finalizer: str) -> None:
        rt = self.registry.type_of(rkey)
        if rt is None:
            return
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [
            f for f in new["metadata"].get("finalizers") or [] if f != finalizer]
        with contextlib.suppress(ApiError):
            self.registry.update(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 new, manager="garbage-collector")

    def _foreground(self, rkey: str, obj: Obj, deps: list[tuple[str, Obj]]) -> None:
        blocking = False
        for drkey, dep in deps:
            current = self.registry.store.peek(
                drkey, (dep["metadata"].get("namespace", ""), dep["metadata"]["name"]))
            if current is None:
                continue
            ref = next((r for r in current["metadata"].get("ownerReferences") or []
                        if r.get("uid") == obj["metadata"]["uid"]), None)
            if ref is None:
                continue
            if ref.get("blockOwnerDeletion"):
                blocking = True
            if not current["metadata"].get("deletionTimestamp"):
                self._delete(drkey, current, "Foreground")
        if not blocking:
            self._remove_finalizer(rkey, obj, "foregroundDeletion")

    def _terminate_namespace(self, ns: Obj) -> None:
        name = ns["metadata"]["name"]
        remaining = 0
        for rt in self.registry.types():
            if not rt.namespaced:
                continue
            for obj in list(self.registry.store.items(rt.key, name)):
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    self._delete(rt.key, obj, "Background")
        if remaining:
            return
        rt = self.registry.type_for("", "v1", "namespaces")
        new = copy.deepcopy(ns)
        new.setdefault("spec", {})["finalizers"] = []
        current = self.registry.store.peek(NS_KEY, ("", name))
        if current is None:
            return
        with contextlib.suppress(ApiError):
            if (current.get("spec") or {}).get("finalizers"):
                self.registry.update(rt, None, name, new, manager="namespace-controller")
            current = self.registry.store.peek(NS_KEY, ("", name))
            if current is not None and not current["metadata"].get("finalizers"):
                self.registry.store.remove(NS_KEY, copy.deepcopy(current))
