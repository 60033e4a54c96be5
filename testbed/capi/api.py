"""In-process access to the emulated apiserver's registry, the way a controller's client is used.

Writes go through the registry's REST semantics (validation, optimistic concurrency, generation),
exactly as an HTTP client's would, but without the network. A failed write is logged and
reported as None: controllers are level-triggered, so the next pass simply tries again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

from testbed.apiserver.errors import ApiError
from testbed.apiserver.registry import Registry
from testbed.apiserver.resources import ResourceType

from .util import (
    BOOTSTRAP_GROUP,
    CLUSTER_NAME_LABEL,
    CONTROLPLANE_GROUP,
    CORE_GROUP,
    VERSION,
    Obj,
    dig,
    labels,
    meta,
)

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
    """Typed reads and error-tolerant writes on one registry, under one field manager."""

    def __init__(self, registry: Registry, manager: str = "capi-simulator") -> None:
        self.registry = registry
        self.manager = manager

    # -- types ------------------------------------------------------------------------------
    def type(self, kind: Kind) -> ResourceType | None:
        group, plural = kind
        rt = self.registry.find_type(group, VERSION, plural)
        if rt is None:
            rt = next((t for t in self.registry.types()
                       if t.group == group and t.plural == plural), None)
        return rt

    def type_of_kind(self, group: str, kind: str) -> ResourceType | None:
        """The served type of an object reference's apiGroup and kind (versions differ per
        provider, v1beta2 references carry none)."""
        return next((t for t in self.registry.types() if t.group == group and t.kind == kind),
                    None)

    # -- reads ------------------------------------------------------------------------------
    def get(self, kind: Kind, ns: str | None, name: str | None) -> Obj | None:
        rt = self.type(kind)
        if rt is None or not name:
            return None
        return self.get_typed(rt, ns, name)

    def get_typed(self, rt: ResourceType, ns: str | None, name: str) -> Obj | None:
        obj = self.registry.store.get(rt.key, (ns or "", name))
        if obj is None:
            return None
        obj["apiVersion"] = rt.api_version()
        obj["kind"] = rt.kind
        return obj

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
        return self.list_type(rt, ns) if rt is not None else []

    def list_type(self, rt: ResourceType, ns: str | None = None) -> list[Obj]:
        out = []
        for obj in self.registry.store.items(rt.key, ns):
            o = copy.deepcopy(obj)
            o["apiVersion"] = rt.api_version()
            o["kind"] = rt.kind
            out.append(o)
        return out

    def iter_keys(self, rt: ResourceType, ns: str | None = None) -> Iterator[tuple[str, str]]:
        for obj in self.registry.store.items(rt.key, ns):
            yield meta(obj).get("namespace", ""), meta(obj)["name"]

    # -- cluster lookup ---------------------------------------------------------------------
    def cluster_of(self, obj: Obj) -> Obj | None:
        """An object's Cluster: spec.clusterName, the cluster-name label, a Cluster owner, or
        a Cluster whose infrastructureRef / controlPlaneRef names it."""
        ns = meta(obj).get("namespace")
        name = dig(obj, "spec", "clusterName") or labels(obj).get(CLUSTER_NAME_LABEL)
        if not name:
            ref = next((r for r in meta(obj).get("ownerReferences") or []
                        if isinstance(r, dict) and r.get("kind") == "Cluster"
                        and str(r.get("apiVersion", "")).startswith(CORE_GROUP + "/")), None)
            name = ref.get("name") if ref else None
        if isinstance(name, str) and name:
            return self.get(CLUSTERS, ns, name)
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        for cluster in self.list_of(CLUSTERS, ns):
            for field in ("infrastructureRef", "controlPlaneRef"):
                ref = dig(cluster, "spec", field)
                if (isinstance(ref, dict) and ref.get("name") == meta(obj).get("name")
                        and ref.get("kind") == obj.get("kind") and ref.get("apiGroup") == group):
                    return cluster
        return None

    # -- writes -----------------------------------------------------------------------------
    def create(self, kind: Kind | ResourceType, ns: str | None, body: Obj) -> Obj | None:
        rt = kind if isinstance(kind, ResourceType) else self.type(kind)
        if rt is None:
            log.warning("cannot create %s: kind not served", kind)
            return None
        try:
            return self.registry.create(rt, ns, body, manager=self.manager)
        except ApiError as e:
            self._log(e, "create", rt, meta(body).get("name"))
            return None

    def update(self, obj: Obj, status: bool = False) -> Obj | None:
        """Write obj back (its resourceVersion is the precondition); None on any API error."""
        rt = self._rt_of(obj)
        if rt is None:
            return None
        try:
            return self.registry.update(rt, meta(obj).get("namespace"), meta(obj)["name"], obj,
                                        manager=self.manager,
                                        subresource="status" if status else None)
        except ApiError as e:
            self._log(e, "update status of" if status else "update", rt, meta(obj).get("name"))
            return None

    def set_status(self, obj: Obj, status: Obj) -> Obj | None:
        """Write status only when it differs: a converged object costs no write."""
        if obj.get("status") == status:
            return obj
        new = dict(obj)
        new["status"] = status
        return self.update(new, status=True)

    def delete(self, obj: Obj) -> bool:
        rt = self._rt_of(obj)
        if rt is None or meta(obj).get("deletionTimestamp"):
            return False
        try:
            self.registry.delete(rt, meta(obj).get("namespace"), meta(obj)["name"],
                                 preconditions={"uid": meta(obj).get("uid")})
        except ApiError as e:
            self._log(e, "delete", rt, meta(obj).get("name"))
            return False
        return True

    def _rt_of(self, obj: Obj) -> ResourceType | None:
        api_version = str(obj.get("apiVersion", ""))
        group = api_version.rpartition("/")[0]
        rt = self.type_of_kind(group, str(obj.get("kind", "")))
        if rt is None:
            log.warning("no served type for %s %s", api_version, obj.get("kind"))
        return rt

    @staticmethod
    def _log(e: ApiError, verb: str, rt: ResourceType, name: Any) -> None:
        level = logging.DEBUG if e.code in (404, 409) else logging.WARNING
        log.log(level, "%s %s %s: %s %s", verb, rt.kind, name, e.code, e.message)
