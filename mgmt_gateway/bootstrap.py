"""The per-cluster steps: Requested → CapiCreated → FirstControlPlaneReady → AgentInstalled →
Pivoted → Managed (or Failed, with the reason), and retirement.

Each step is idempotent (server-side apply, a journaled pivot, a compare-and-set publish) and
its outcome is saved in the OutpostCluster's status with compare-and-set, so a gateway killed
at any moment resumes every cluster where it was, and a replica that lost the lease cannot
advance a cluster behind the new leader's back. The controller decides when to run a step;
this module only knows how.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.kube import ApiKubeClient, KubeClient, NotFound, Obj
from agent.kube import resources as r
from agent.spec import capi

from .clusters import MANAGER
from .kinds import resource_of
from .pivot import MoveReport, PivotError, PreconditionFailed, move
from .publish import PublishConflict, PublishUnavailable, SpecPublisher
from .render.bundle import agent_bundle, load_components
from .render.capi import render_cluster
from .state import ClusterRecord
from .store import ObjectJournal, OutpostClusters, owner_reference

log = logging.getLogger("outpost.gateway.bootstrap")


@dataclass
class AgentInstall:
    """What the agent in every workload cluster is given."""

    image: str
    nats_servers: list[str]
    public_keys: list[str]
    nats_credentials: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


class StepFailed(Exception):
    """A step that cannot succeed by retrying (bad input, missing prerequisite)."""


class Bootstrapper:
    """How each step is done. `may_write` raises before any write when this replica must not
    write (it lost the lease)."""

    def __init__(self, store: OutpostClusters, management: KubeClient,
                 publisher: SpecPublisher, *, components: Sequence[Path], agent: AgentInstall,
                 step_timeout: float = 900.0,
                 workload_client: Callable[[bytes], Awaitable[KubeClient]] | None = None,
                 may_write: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.management = management
        self.publisher = publisher
        self.components = list(components)
        self.agent = agent
        self.step_timeout = step_timeout
        self._workload_client = workload_client or functools.partial(
            ApiKubeClient.from_kubeconfig_data, user_agent=MANAGER)
        self.may_write = may_write
        #: The last pivot's report per cluster, for the status (moved and skipped objects).
        self.pivot_reports: dict[str, MoveReport] = {}

    # -- steps -----------------------------------------------------------------------------
    async def advance(self, rec: ClusterRecord) -> ClusterRecord | None:
        """Do the next step of `rec`; returns the saved record, or None when it must wait."""
        self.may_write()
        if rec.phase != "Requested" and self._timed_out(rec):
            raise StepFailed(f"no progress for {self.step_timeout:.0f}s")
        step = {
            "Requested": self._create_capi,
            "CapiCreated": self._await_first_node,
            "FirstControlPlaneReady": self._install,
            "AgentInstalled": self._pivot,
            "Pivoted": self._publish,
            "Managed": self._publish,
        }.get(rec.phase)
        if step is None:
            return None
        return await step(rec)

    def _timed_out(self, rec: ClusterRecord) -> bool:
        if not rec.steps or rec.phase == "Managed":
            return False
        started = rec.steps[-1].started_at.timestamp()
        return time.time() - started > self.step_timeout

    async def _apply_all(self, kube: KubeClient, objs: Sequence[dict[str, Any]]) -> None:
        for obj in objs:
            await kube.apply(resource_of(obj), obj, field_manager=MANAGER, force=True)

    async def _create_capi(self, rec: ClusterRecord) -> ClusterRecord:
        spec = rec.spec
        await self._ensure_namespace(self.management, spec.namespace)
        objs = render_cluster(spec)
        await self._apply_all(self.management, objs)
        return await self.store.update(rec.advanced(
            "CapiCreated", f"{len(objs)} objects in namespace {spec.namespace}"))

    async def _await_first_node(self, rec: ClusterRecord) -> ClusterRecord | None:
        spec = rec.spec
        try:
            kcp = await self.management.get(r.KUBEADM_CONTROL_PLANE, capi.kcp_name(spec),
                                             spec.namespace)
            await self.management.get(r.SECRET, f"{spec.cluster_name}-kubeconfig",
                                      spec.namespace)
        except NotFound:
            return None
        init = ((kcp.get("status") or {}).get("initialization") or {})
        if not init.get("controlPlaneInitialized"):
            return None
        return await self.store.update(rec.advanced("FirstControlPlaneReady",
                                                    "control plane initialized"))

    def _owner(self, rec: ClusterRecord) -> Obj:
        obj = self.store.object(f"{rec.spec.namespace}/{rec.name}")
        if obj is None:
            raise NotFound(f"OutpostCluster {rec.spec.namespace}/{rec.name} is gone")
        return obj

    async def workload(self, rec: ClusterRecord) -> KubeClient:
        """A client for the workload cluster, from its kubeconfig Secret, in memory only. The
        pivot moves CAPI's Secret out of the management cluster, so the gateway keeps a copy
        (`outpost-kubeconfig-<cluster>`, owned by the OutpostCluster, so it goes with it) and
        reads that first: a pivot resumed after a crash can still reach its target."""
        spec = rec.spec
        own = kubeconfig_secret(spec.cluster_name)
        try:
            secret = await self.management.get(r.SECRET, own, spec.namespace)
        except NotFound:
            secret = await self.management.get(r.SECRET, f"{spec.cluster_name}-kubeconfig",
                                               spec.namespace)
            self.may_write()
            await self.management.apply(r.SECRET, {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": own, "namespace": spec.namespace,
                             "labels": {"outpost.io/cluster": spec.cluster_name},
                             "ownerReferences": [owner_reference(self._owner(rec))]},
                "data": {"value": secret["data"]["value"]}}, field_manager=MANAGER)
        return await self._workload_client(base64.b64decode(secret["data"]["value"]))

    async def _install(self, rec: ClusterRecord) -> ClusterRecord | None:
        spec = rec.spec
        workload = await self.workload(rec)
        try:
            components = load_components(self.components)
            await self._apply_all(workload, components)
            try:
                bundle = agent_bundle(spec, nats_servers=self.agent.nats_servers,
                                      nats_credentials=self.agent.nats_credentials,
                                      public_keys=self.agent.public_keys,
                                      image=self.agent.image,
                                      extra_env=self.agent.extra_env or None)
            except (ValueError, OSError) as e:  # the gateway's own configuration is wrong
                raise StepFailed(f"cannot render the agent bundle: {e}") from e
            await self._apply_all(workload, bundle)
            deployments = [o for o in [*components, *bundle] if o.get("kind") == "Deployment"]
            for dep in deployments:
                meta = dep["metadata"]
                live = await workload.get(r.DEPLOYMENT, meta["name"], meta.get("namespace"))
                if not (live.get("status") or {}).get("availableReplicas"):
                    return None  # installed; not running yet
        finally:
            await _close(workload)
        return await self.store.update(rec.advanced(
            "AgentInstalled", f"{len(components)} component and {len(bundle)} agent objects"))

    async def _pivot(self, rec: ClusterRecord) -> ClusterRecord | None:
        spec = rec.spec
        workload = await self.workload(rec)
        try:
            journal = await ObjectJournal.open(self.management, self._owner(rec),
                                               self.may_write)
            report = await move(self.management, workload, spec.namespace, spec.cluster_name,
                                journal=journal)
        except PreconditionFailed as e:
            # e.g. a machine without its node yet: nothing was paused; try again later.
            log.info("cluster %s: not ready to pivot yet: %s", rec.name, e)
            return None
        except PivotError as e:
            raise StepFailed(str(e)) from e
        finally:
            await _close(workload)
        self.pivot_reports[rec.name] = report
        return await self.store.update(rec.advanced(
            "Pivoted", f"{len(report.moved)} objects moved, {len(report.skipped)} skipped"))

    async def _publish(self, rec: ClusterRecord) -> ClusterRecord | None:
        if rec.phase == "Managed" and rec.spec.revision <= rec.published_revision:
            return None
        try:
            kv_rev = await self.publisher.publish(
                rec.spec, last_kv_revision=rec.published_kv_revision or None)
        except PublishUnavailable as e:
            log.warning("cluster %s: cannot publish revision %d yet: %s", rec.name,
                        rec.spec.revision, e)
            return None
        except PublishConflict as e:
            raise StepFailed(f"the spec in NATS changed behind the gateway's back: {e}") from e
        updated = rec.model_copy(update={"published_revision": rec.spec.revision,
                                         "published_kv_revision": kv_rev})
        if rec.phase != "Managed":
            updated = updated.advanced("Managed", f"spec revision {rec.spec.revision} published")
        return await self.store.update(updated)

    async def retire(self, name: str, namespace: str, *, pivoted: bool) -> bool:
        """Retire a cluster; False while it must be waited for. Before the pivot its CAPI
        objects live here and are deleted (CAPI tears the machines down). After it the cluster
        governs itself: the gateway forgets it (its kubeconfig copy and pivot journal go); the
        site keeps running on its cached spec until it is decommissioned there."""
        if not pivoted:
            try:
                await self.management.get(r.CLUSTER, name, namespace)
                self.may_write()
                await self.management.delete(r.CLUSTER, name, namespace,
                                             propagation="Foreground")
                return False  # come back once CAPI has torn it down
            except NotFound:
                pass
        self.may_write()
        await self.management.delete(r.SECRET, kubeconfig_secret(name), namespace)
        await self.management.delete(r.CONFIG_MAP, ObjectJournal.object_name(name), namespace)
        log.info("cluster %s/%s retired%s", namespace, name,
                 " (self-managed: left running on its cached spec)" if pivoted else "")
        return True

    async def _ensure_namespace(self, kube: KubeClient, name: str) -> None:
        await kube.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": name}},
                         field_manager=MANAGER)


def kubeconfig_secret(cluster: str) -> str:
    """The gateway's copy of a workload cluster's kubeconfig (never named `<cluster>-...`, so
    the pivot does not take it for one of CAPI's Secrets)."""
    return f"outpost-kubeconfig-{cluster}"


async def _close(kube: KubeClient) -> None:
    close = getattr(kube, "close", None)
    if close is not None:
        await close()
