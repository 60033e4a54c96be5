"""The fleet as the gateway reads and writes it: OutpostCluster resources.

Reads come from informers (one list+watch per type, shared by the API façade and the
controller), so the steady state costs the management API nothing. Writes are the resource's
own: the façade writes `spec` (what a user asks), the controller writes `status` through the
subresource, always with the resourceVersion it read as compare-and-set, so two replicas, or a
user and the controller, never overwrite each other's decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from agent.kube import AlreadyExists, KubeClient, NotFound, Obj
from agent.kube import resources as r
from agent.runtime.informer import Informer, object_key

from .clusters import (
    CLUSTER_PROFILE,
    MANAGER,
    OUTPOST_CLUSTER,
    AgentView,
    Invalid,
    desired,
    record_of,
    same_status,
    spec_hash,
    status_of,
)
from .profiles import NotRendered, Profile, RenderContext, Sources, addons_of, profile_of
from .render.addons import RenderError
from .state import ClusterRecord, Scan, Unreadable, UnreadableRecord

AgentLookup = Callable[[str], AgentView | None]


def _now() -> datetime:
    return datetime.now(UTC)


def _without_managed_fields(obj: Obj) -> Obj:
    """What the cache keeps of an OutpostCluster: no pass reads managedFields, and at fleet
    scale they are a third of what the informer would hold."""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def _namespace(obj: Obj) -> tuple[str]:
    return (str(obj["metadata"].get("namespace") or ""),)


class NotSynced(Exception):
    """The informers have not listed yet (the gateway is starting or cannot reach the API)."""


class OutpostClusters:
    """Every OutpostCluster and ClusterProfile, cached; the cluster name is fleet-wide unique
    (it keys NATS), the oldest resource keeping a name that two namespaces both use."""

    def __init__(self, kube: KubeClient, *, agents: AgentLookup = lambda name: None,
                 clock: Callable[[], datetime] = _now,
                 on_cluster: Callable[[str], None] | None = None,
                 on_profile: Callable[[str], None] | None = None,
                 sources: Sources | None = None) -> None:
        self.kube = kube
        self.agents = agents
        self.clock = clock
        self.clusters = Informer(kube, OUTPOST_CLUSTER, None, on_object=on_cluster,
                                 indexers={"name": lambda o: (o["metadata"]["name"],)},
                                 transform=_without_managed_fields)
        self.profiles = Informer(kube, CLUSTER_PROFILE, None, on_object=on_profile,
                                 indexers={"namespace": _namespace})
        self._rendered: dict[tuple[str, str, str], Profile | Exception] = {}
        #: Fetches and renders add-on sources that are not inline (None: inline only).
        self.sources = sources

    # -- reads ----------------------------------------------------------------------------
    async def synced(self, timeout: float = 3.0) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(self.clusters.synced.wait(),
                                                  self.profiles.synced.wait()), timeout)
        except TimeoutError:
            raise NotSynced("the gateway has not read the OutpostClusters yet (starting, or "
                            "the management API is unreachable); retry shortly") from None

    def object(self, key: str) -> Obj | None:
        return self.clusters.get(key)

    def named(self, name: str) -> list[Obj]:
        """The OutpostClusters called `name`, oldest first (normally one)."""
        return sorted(self.clusters.by_index("name", name), key=_age)

    def owner_of(self, name: str) -> Obj | None:
        found = self.named(name)
        return found[0] if found else None

    def profiles_in(self, namespace: str) -> list[Obj]:
        return self.profiles.by_index("namespace", namespace)

    def desired(self, obj: Obj) -> tuple[Any, str] | Invalid:
        """The desired ClusterSpec of `obj` and its hash, or why there is none (an invalid
        spec, a missing profile, a name another namespace already uses)."""
        meta = obj["metadata"]
        owner = self.owner_of(meta["name"])
        if owner is not None and owner["metadata"].get("uid") != meta.get("uid"):
            return Invalid("NameInUse", f"OutpostCluster {meta['name']} already exists in "
                                        f"namespace {owner['metadata'].get('namespace')}: "
                                        "cluster names are unique across the fleet (they key "
                                        "its NATS subjects); rename this one")
        return desired(obj, self.profiles_in(str(meta.get("namespace"))), self.rendered)

    def rendered(self, profile: Obj, ctx: RenderContext) -> Profile:
        """A ClusterProfile rendered for a cluster's context, once per version of the object (a
        published profile never changes) and context; its bundles kept for the publisher.
        Raises what profile_of raises; NotRendered is never cached (prepare() fixes it)."""
        meta = profile["metadata"]
        key = (str(meta.get("uid")), str(meta.get("resourceVersion")),
               json.dumps([ctx.kube_version, ctx.values], sort_keys=True, default=str))
        found = self._rendered.get(key)
        if found is None:
            sources = self.sources
            objects = ((lambda a, apis: sources.objects(a, ctx, apis)) if sources is not None
                       else None)
            try:
                found = profile_of(profile, ctx, objects)
            except NotRendered:
                raise
            except (ValidationError, RenderError) as e:
                found = e
            self._rendered[key] = found
            if len(self._rendered) > 256:  # old versions, other clusters' contexts
                self._rendered.pop(next(iter(self._rendered)))
        if isinstance(found, Exception):
            raise found
        return found

    async def prepare(self, obj: Obj) -> None:
        """Fetch and render what the cluster's profile needs (charts, URLs, uploads) before a
        pass builds its spec; cached, so a converged fleet costs nothing here."""
        if self.sources is None:
            return
        spec = obj.get("spec") or {}
        ref = spec.get("profile") or {}
        if not ref.get("name"):
            return
        for profile in self.profiles_in(str(obj["metadata"].get("namespace"))):
            pspec = profile.get("spec") or {}
            if pspec.get("name") != ref.get("name") or str(pspec.get("version")) != str(
                    ref.get("version")):
                continue
            try:
                addons = addons_of(profile)
            except ValidationError:
                return  # desired() says what is wrong with it
            if all(a.inline for a in addons):
                return
            ctx = RenderContext(str(spec.get("kubernetesVersion")), ref.get("values") or {})
            await self.sources.prepare(addons, ctx)

    def bundle(self, digest: str) -> bytes | None:
        """The bytes of a bundle some cached profile refers to (None: none does)."""
        for found in self._rendered.values():
            if not isinstance(found, Exception) and digest in found.bundles:
                return found.bundles[digest]
        return None

    def record(self, obj: Obj) -> ClusterRecord:
        """The working record of a valid OutpostCluster; raises UnreadableRecord."""
        found = self.desired(obj)
        if isinstance(found, Invalid):
            meta = obj["metadata"]
            raise UnreadableRecord(Unreadable(
                name=meta["name"], object_name=meta["name"], namespace=meta.get("namespace", ""),
                resource_version=str(meta.get("resourceVersion", "")),
                reason=f"{found.reason}: {found.message}", kind="OutpostCluster"))
        return record_of(obj, found[0])

    async def get(self, name: str) -> ClusterRecord | None:
        """None when no OutpostCluster has that name; raises UnreadableRecord for one whose
        spec cannot be used now."""
        await self.synced()
        obj = self.owner_of(name)
        return None if obj is None else self.record(obj)

    async def scan(self) -> Scan:
        await self.synced()
        records: list[ClusterRecord] = []
        unreadable: list[Unreadable] = []
        seen: set[str] = set()
        for obj in sorted(self.clusters.items.values(), key=_age):
            if obj["metadata"]["name"] in seen:
                continue  # a duplicate name: its own status says so
            seen.add(obj["metadata"]["name"])
            try:
                records.append(self.record(obj))
            except UnreadableRecord as e:
                unreadable.append(e.problem)
        return Scan(sorted(records, key=lambda c: c.name),
                    sorted(unreadable, key=lambda u: u.name))

    # -- spec writes (the façade) -----------------------------------------------------------
    async def create(self, body: Obj) -> Obj:
        """Create an OutpostCluster; raises AlreadyExists (also when another namespace has
        the name) and Invalid when the API server's schema refuses it."""
        await self.synced()
        name = body["metadata"]["name"]
        if self.owner_of(name) is not None:
            raise AlreadyExists(f"an OutpostCluster named {name} exists")
        obj = await self.kube.create(OUTPOST_CLUSTER, body)
        self.clusters.store(obj)
        return obj

    async def replace_spec(self, obj: Obj, spec: dict[str, Any]) -> Obj:
        """Replace the spec of `obj` as read (compare-and-set); raises Conflict."""
        meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        new = await self.kube.replace(OUTPOST_CLUSTER, {**obj, "metadata": meta, "spec": spec},
                                      field_manager=MANAGER)
        self.clusters.store(new)
        return new

    async def delete(self, name: str) -> None:
        obj = self.owner_of(name)
        if obj is not None:
            await self.kube.delete(OUTPOST_CLUSTER, name, obj["metadata"]["namespace"],
                                   uid=obj["metadata"].get("uid"))

    # -- status writes (the controller) -----------------------------------------------------
    async def write_status(self, obj: Obj, status: dict[str, Any]) -> Obj:
        """Replace the status of `obj` as read (compare-and-set); nothing is sent when it
        would not change."""
        if same_status(obj.get("status") or {}, status):
            return obj
        meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        new = await self.kube.replace_status(
            OUTPOST_CLUSTER, {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                              "metadata": meta, "spec": obj.get("spec"), "status": status},
            field_manager=MANAGER)
        self.clusters.store(new)
        return new

    async def update(self, rec: ClusterRecord) -> ClusterRecord:
        """Save a record's progress in its OutpostCluster's status (compare-and-set on the
        record's resourceVersion); raises Conflict when it changed meanwhile."""
        obj = self.object(f"{rec.spec.namespace}/{rec.name}")
        if obj is None:
            raise NotFound(f"OutpostCluster {rec.spec.namespace}/{rec.name} is gone")
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": rec.resource_version}}
        status = status_of(rec, obj, spec_digest=spec_hash(rec.spec), invalid=None,
                           agent=self.agents(rec.name), now=self.clock())
        new = await self.write_status(obj, status)
        return record_of(new, rec.spec)


def _age(obj: Obj) -> tuple[bool, str, str]:
    """Who holds a name two namespaces use: the one the gateway already accepted, else the
    oldest (creation times have one-second resolution: then the namespace decides, so every
    replica and every pass agrees)."""
    meta = obj["metadata"]
    accepted = bool((obj.get("status") or {}).get("specHash"))
    return (not accepted, str(meta.get("creationTimestamp") or ""),
            str(meta.get("namespace") or ""))


# -- the pivot journal ------------------------------------------------------------------------
class ObjectJournal:
    """The pivot's progress in a ConfigMap of its own (`outpost-pivot-<cluster>`, owned by the
    OutpostCluster): one data key per completed step, appended with a merge patch that carries
    that step alone, so a pivot of n objects costs n small writes, never a rewrite of a record
    that grows with n."""

    def __init__(self, kube: KubeClient, name: str, namespace: str, done: set[str],
                 may_write: Callable[[], None] = lambda: None) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.done = done
        self.may_write = may_write

    @staticmethod
    def object_name(cluster: str) -> str:
        return f"outpost-pivot-{cluster}"

    @classmethod
    async def open(cls, kube: KubeClient, owner: Obj,
                   may_write: Callable[[], None] = lambda: None) -> ObjectJournal:
        meta = owner["metadata"]
        name, namespace = cls.object_name(meta["name"]), meta["namespace"]
        try:
            found = await kube.get(r.CONFIG_MAP, name, namespace)
        except NotFound:
            may_write()
            found = await kube.apply(r.CONFIG_MAP, {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"outpost.io/pivot-journal": meta["name"]},
                             "ownerReferences": [owner_reference(owner)]}},
                field_manager=MANAGER)
        return cls(kube, name, namespace, set((found.get("data") or {}).values()), may_write)

    async def record(self, step: str) -> None:
        self.may_write()
        key = hashlib.sha256(step.encode()).hexdigest()[:24]
        await self.kube.patch(r.CONFIG_MAP, self.name, {"data": {key: step}}, self.namespace,
                              field_manager=MANAGER)
        self.done.add(step)


def owner_reference(owner: Obj) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"]}


__all__ = ["NotSynced", "ObjectJournal", "OutpostClusters", "object_key", "owner_reference"]
