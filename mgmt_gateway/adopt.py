"""Adopt the cluster records of older gateways (one ConfigMap per cluster) as OutpostClusters,
so nothing is lost on upgrade: each readable record becomes a resource with its spec, its
progress in the status (phase, revisions, steps), its pivot journal and kubeconfig copy moved
to where the controller reads them; then the ConfigMap goes. A record that cannot be read is
left in place, logged and reported as a Warning Event on it, once."""

from __future__ import annotations

import contextlib
import hashlib
import logging

from agent.kube import AlreadyExists, KubeClient, NotFound
from agent.kube import resources as r

from .bootstrap import kubeconfig_secret
from .clusters import (
    API_VERSION,
    CLUSTER_PROFILE,
    MANAGER,
    OUTPOST_CLUSTER,
    spec_hash,
    status_of,
)
from .events import EventRecorder
from .state import ClusterRecord, RecordStore
from .store import ObjectJournal, owner_reference

log = logging.getLogger("outpost.gateway.adopt")


async def adopt_records(kube: KubeClient, namespace: str, events: EventRecorder) -> int:
    """Adopt every record in `namespace`; returns how many were adopted."""
    store = RecordStore(kube, namespace)
    scan = await store.scan()
    for u in scan.unreadable:
        log.error("cannot adopt cluster record %s: %s; to fix it, %s", u.object_name,
                  u.describe(), u.remedy(), extra={"object": u.object_name})
        await events.record({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": u.object_name, "namespace": u.namespace,
                                          "resourceVersion": u.resource_version}},
                            "UnreadableRecord", f"{u.reason}; it was not adopted as an "
                            f"OutpostCluster. To fix it, {u.remedy()}", "Warning")
    for rec in scan.records:
        await _adopt(kube, store, rec)
        log.info("adopted cluster record %s as OutpostCluster %s/%s (phase %s)",
                 store.object_name(rec.name), rec.spec.namespace, rec.name, rec.phase)
    return len(scan.records)


async def _adopt(kube: KubeClient, store: RecordStore, rec: ClusterRecord) -> None:
    spec = rec.spec
    body = spec.model_dump(by_alias=True, mode="json", exclude_defaults=True,
                           exclude={"cluster_name", "namespace", "revision", "profile"})
    await kube.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": spec.namespace}}, field_manager=MANAGER)
    if spec.profile is not None:
        profile = spec.profile
        body["profile"] = {"name": profile.name, "version": profile.version}
        with contextlib.suppress(AlreadyExists):
            await kube.create(CLUSTER_PROFILE, {
                "apiVersion": API_VERSION, "kind": "ClusterProfile",
                "metadata": {"name": f"{profile.name}-{profile.version}".lower()[:253],
                             "namespace": spec.namespace},
                "spec": profile.model_dump(by_alias=True, mode="json")})
    try:
        obj = await kube.create(OUTPOST_CLUSTER, {
            "apiVersion": API_VERSION, "kind": "OutpostCluster",
            "metadata": {"name": rec.name, "namespace": spec.namespace}, "spec": body})
    except AlreadyExists:
        obj = await kube.get(OUTPOST_CLUSTER, rec.name, spec.namespace)
    if not (obj.get("status") or {}).get("phase"):
        # The same hash the controller computes from the resource: no new revision results.
        status = status_of(rec, obj, spec_digest=spec_hash(spec), invalid=None, agent=None,
                           now=rec.updated_at)
        obj = await kube.replace_status(OUTPOST_CLUSTER, {**obj, "status": status},
                                        field_manager=MANAGER)
    if rec.pivot_journal:
        journal = await ObjectJournal.open(kube, obj)
        missing = {hashlib.sha256(step.encode()).hexdigest()[:24]: step
                   for step in rec.pivot_journal if step not in journal.done}
        if missing:
            await kube.patch(r.CONFIG_MAP, journal.name, {"data": missing}, journal.namespace,
                             field_manager=MANAGER)
    try:
        old = await kube.get(r.SECRET, f"outpost-workload-{rec.name}", store.namespace)
        await kube.apply(r.SECRET, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": kubeconfig_secret(rec.name), "namespace": spec.namespace,
                         "labels": {"outpost.io/cluster": rec.name},
                         "ownerReferences": [owner_reference(obj)]},
            "data": {"value": old["data"]["value"]}}, field_manager=MANAGER)
        await kube.delete(r.SECRET, old["metadata"]["name"], store.namespace)
    except NotFound:
        pass
    await store.delete(rec.name)
