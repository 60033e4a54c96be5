"""The simulated controllers' client: reads from the informers' cache, writes over HTTP.

Reconcilers are plain synchronous functions run one at a time on the simulator's worker thread;
a write blocks that thread until the API answers (the event loop, which may be serving that very
API, stays free). A failed write is logged and reported as None: controllers are
level-triggered, so the next pass simply tries again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp

from testbed.apiserver.errors import ApiError

from .cache import Cache
from .conditions import with_conditions
from .http import KubeHttp, ServedType
from .util import (
    BOOTSTRAP_GROUP,
    CLUSTER_NAME_LABEL,
    CONTROLPLANE_GROUP,
    CORE_GROUP,
    Obj,
    api_group,
    children,
    claimed,
    deleting,
    dig,
    labels,
    meta,
    owner_of_kind,
    owner_refs,
)

T = TypeVar("T")
_WRITE_TIMEOUT = 60.0

log = logging.getLogger(__name__)

# (group, plural) of the kinds the simulator reads or writes by name.
CLUSTERS = (CORE_GROUP, "clusters")
MACHINES = (CORE_GROUP, "machines")
MACHINESETS = (CORE_GROUP, "machinesets")
MACHINEDEPLOYMENTS = (CORE_GROUP, "machinedeployments")
KCPS = (CONTROLPLANE_GROUP, "kubeadmcontrolplanes")
KUBEADMCONFIGS = (BOOTSTRAP_GROUP, "kubeadmconfigs")
SECRETS = ("", "secrets")

Kind = tuple[str, str]


def rkey(kind: Kind) -> str:
    group, plural = kind
    return f"{plural}.{group}" if group else plural


class Api:
    """Typed reads from the cache and error-tolerant writes through `http`."""

    def __init__(self, cache: Cache, http: KubeHttp, loop: asyncio.AbstractEventLoop) -> None:
        self.cache = cache
        self.http = http
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.writes = 0  # writes that succeeded (how a caller tells the simulator is quiet)

    # -- types ------------------------------------------------------------------------------
    def type(self, kind: Kind) -> ServedType | None:
        return self.cache.types.get(rkey(kind))

    def type_of_kind(self, group: str, kind: str) -> ServedType | None:
        """The served type of an object reference's apiGroup and kind (versions differ per
        provider, v1beta2 references carry none)."""
        return next((t for t in list(self.cache.types.values())
                     if t.group == group and t.kind == kind), None)

    # -- reads ------------------------------------------------------------------------------
    def get(self, kind: Kind, ns: str | None, name: str | None) -> Obj | None:
        rt = self.type(kind)
        if rt is None or not name:
            return None
        return self.get_typed(rt, ns, name)

    def get_typed(self, rt: ServedType, ns: str | None, name: str) -> Obj | None:
        return self.cache.get(rt.key, ns, name)

    def get_ref(self, ref: Any, ns: str | None) -> Obj | None:
        """The object a v1beta2 ContractVersionedObjectReference ({apiGroup, kind, name}) names."""
        if not isinstance(ref, dict):
            return None
        rt = self.type_of_kind(str(ref.get("apiGroup") or ""), str(ref.get("kind") or ""))
        name = ref.get("name")
        if rt is None or not isinstance(name, str) or not name:
            return None
        return self.get_typed(rt, ns, name)

    def list_of(self, kind: Kind, ns: str | None = None) -> list[Obj]:
        rt = self.type(kind)
        return [] if rt is None else self.cache.items(rt.key, ns)

    def children(self, kind: Kind, owner: Obj) -> list[Obj]:
        """The objects of a kind that owner controls, oldest first."""
        return children(self.list_of(kind, meta(owner).get("namespace", "")), owner)

    def machine_of(self, part: Obj) -> Obj | None:
        """The Machine owning an infra machine or bootstrap config (None until one does)."""
        ref = owner_of_kind(part, "Machine")
        if ref is None:
            return None
        return self.get(MACHINES, meta(part).get("namespace"), str(ref.get("name", "")))

    def iter_keys(self, rt: ServedType, ns: str | None = None) -> Iterator[tuple[str, str]]:
        yield from self.cache.keys(rt.key, ns)

    # -- cluster lookup ---------------------------------------------------------------------
    def cluster_of(self, obj: Obj) -> Obj | None:
        """An object's Cluster: spec.clusterName, the cluster-name label, a Cluster owner, or
        a Cluster whose infrastructureRef / controlPlaneRef names it."""
        ns = meta(obj).get("namespace")
        name = dig(obj, "spec", "clusterName") or labels(obj).get(CLUSTER_NAME_LABEL)
        if not name:
            ref = next((r for r in owner_refs(obj) if r.get("kind") == "Cluster"
                        and str(r.get("apiVersion", "")).startswith(CORE_GROUP + "/")), None)
            name = ref.get("name") if ref else None
        if isinstance(name, str) and name:
            return self.get(CLUSTERS, ns, name)
        group = api_group(obj)
        for cluster in self.list_of(CLUSTERS, ns):
            for field in ("infrastructureRef", "controlPlaneRef"):
                ref = dig(cluster, "spec", field)
                if (isinstance(ref, dict) and ref.get("name") == meta(obj).get("name")
                        and ref.get("kind") == obj.get("kind") and ref.get("apiGroup") == group):
                    return cluster
        return None

    # -- writes -----------------------------------------------------------------------------
    def _call(self, what: str, rt: ServedType, name: Any,
              coro: Coroutine[Any, Any, T]) -> T | None:
        """Run one request on the event loop and wait for its answer (None when it failed)."""
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise RuntimeError("the simulator writes from its worker thread, never the loop")
        try:
            out = asyncio.run_coroutine_threadsafe(coro, self.loop).result(_WRITE_TIMEOUT)
            self.writes += 1
            return out
        except ApiError as e:
            level = logging.DEBUG if e.code in (404, 409) else logging.WARNING
            log.log(level, "%s %s %s: %s %s", what, rt.kind, name, e.code, e.message)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("%s %s %s: %r", what, rt.kind, name, e)
        return None

    def create(self, kind: Kind | ServedType, ns: str | None, body: Obj) -> Obj | None:
        rt = kind if isinstance(kind, ServedType) else self.type(kind)
        if rt is None:
            log.warning("cannot create %s: kind not served", kind)
            return None
        out = self._call("create", rt, meta(body).get("name"), self.http.create(rt, ns, body))
        if out is not None:
            self.cache.put(rt, out)
        return out

    def update(self, obj: Obj, status: bool = False) -> Obj | None:
        """Write obj back (its resourceVersion is the precondition); None on any API error."""
        rt = self._rt_of(obj)
        if rt is None:
            return None
        out = self._call("update status of" if status else "update", rt, meta(obj).get("name"),
                         self.http.update(rt, obj, status=status))
        if out is not None:
            self.cache.put(rt, out)
        return out

    def update_spec(self, obj: Obj, **fields: object) -> Obj | None:
        """Write obj with these top-level spec fields set; None on any API error."""
        new = copy.deepcopy(obj)
        new.setdefault("spec", {}).update(copy.deepcopy(fields))
        return self.update(new)

    def claim(self, obj: Obj, owner: Obj | None = None, *, controller: bool = False,
              cluster: str | None = None, finalizer: str | None = None) -> Obj | None:
        """Make obj owned, labelled and finalized as `claimed` says. Returns the written object,
        obj itself when nothing needed writing, None when the write failed."""
        new = claimed(obj, owner, controller=controller, cluster=cluster, finalizer=finalizer)
        return obj if new is None else self.update(new)

    def set_status(self, obj: Obj, status: Obj) -> Obj | None:
        """Write status only when it differs: a converged object costs no write."""
        if obj.get("status") == status:
            return obj
        new = dict(obj)
        new["status"] = status
        return self.update(new, status=True)

    def set_conditions(self, obj: Obj, conds: list[Obj], **fields: object) -> Obj | None:
        """Merge conds into obj's status and set these status fields, keeping all others."""
        status = {**(obj.get("status") or {}), **fields}
        return self.set_status(obj, with_conditions(status, obj, conds))

    def delete(self, obj: Obj) -> bool:
        rt = self._rt_of(obj)
        if rt is None or deleting(obj):
            return False
        done = self._call("delete", rt, meta(obj).get("name"), self._delete(rt, obj))
        return done is not None

    async def _delete(self, rt: ServedType, obj: Obj) -> bool:
        await self.http.delete(rt, meta(obj).get("namespace"), meta(obj)["name"],
                               meta(obj).get("uid"))
        return True

    def _rt_of(self, obj: Obj) -> ServedType | None:
        rt = self.type_of_kind(api_group(obj), str(obj.get("kind", "")))
        if rt is None:
            log.warning("no served type for %s %s", obj.get("apiVersion"), obj.get("kind"))
        return rt
