"""The per-cluster state machine: Requested → CapiCreated → FirstControlPlaneReady →
AgentInstalled → Pivoted → Managed (or Failed, with the reason).

Each step is idempotent (create-or-update with server-side apply, a journaled pivot, a
compare-and-set publish) and the record is saved after each step with compare-and-set, so a
gateway killed at any moment resumes every cluster where it was on restart, and two replicas
working the same cluster cannot both advance it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.kube import ApiKubeClient, Conflict, KubeClient, KubeError, NotFound
from agent.kube import resources as r
from agent.spec import capi

from .kinds import resource_of
from .pivot import PivotError, PreconditionFailed, move
from .publish import PublishConflict, PublishUnavailable, SpecPublisher
from .render.bundle import agent_bundle, load_components
from .render.capi import render_cluster
from .state import ClusterRecord, RecordStore

log = logging.getLogger("outpost.gateway.bootstrap")
MANAGER = "outpost-gateway"


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


class RecordJournal:
    """The pivot's progress, persisted in the cluster record (compare-and-set)."""

    def __init__(self, store: RecordStore, record: ClusterRecord) -> None:
        self.store = store
        self.current = record
        self.done: set[str] = set(record.pivot_journal)

    async def record(self, step: str) -> None:
        self.done.add(step)
        updated = self.current.model_copy(update={"pivot_journal": tuple(sorted(self.done))})
        self.current = await self.store.update(updated)


class Bootstrapper:
    def __init__(self, store: RecordStore, management: KubeClient, publisher: SpecPublisher, *,
                 components: Sequence[Path], agent: AgentInstall, work_dir: Path,
                 poll: float = 1.0, step_timeout: float = 900.0,
                 workload_client: Callable[[Path], Awaitable[KubeClient]] | None = None,
                 on_step: Callable[[ClusterRecord], None] | None = None) -> None:
        self.store = store
        self.management = management
        self.publisher = publisher
        self.components = list(components)
        self.agent = agent
        self.work_dir = work_dir
        self.poll = poll
        self.step_timeout = step_timeout
        self._workload_client = workload_client or ApiKubeClient.from_kubeconfig
        self.on_step = on_step
        self._wake = asyncio.Event()
        self._busy: set[str] = set()

    def wake(self, name: str = "") -> None:
        self._wake.set()

    # -- loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        while True:
            try:
                for rec in await self.store.list():
                    if rec.name in tasks and not tasks[rec.name].done():
                        continue
                    if rec.phase == "Failed" or (
                            rec.phase == "Managed"
                            and rec.spec.revision <= rec.published_revision):
                        continue
                    tasks[rec.name] = asyncio.create_task(self._drive(rec.name),
                                                          name=f"bootstrap-{rec.name}")
            except KubeError as e:
                log.warning("cannot list cluster records: %s", e)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    async def _drive(self, name: str) -> None:
        """Advance one cluster as far as it goes now."""
        while True:
            rec = await self.store.get(name)
            if rec is None:
                return
            try:
                nxt = await self.advance(rec)
            except Conflict:
                continue  # another replica moved it: re-read
            except KubeError as e:
                log.warning("cluster %s: %s step failed, will retry: %s", name, rec.phase, e)
                await asyncio.sleep(self.poll)
                return
            except StepFailed as e:
                log.error("cluster %s failed in %s: %s", name, rec.phase, e)
                with contextlib.suppress(KubeError):
                    await self.store.update(rec.failed(f"{rec.phase}: {e}"))
                return
            if nxt is None:  # waiting on the cluster; come back later
                return
            if self.on_step is not None:
                self.on_step(nxt)
            if nxt.phase == "Managed" and nxt.spec.revision <= nxt.published_revision:
                return

    # -- steps -----------------------------------------------------------------------------
    async def advance(self, rec: ClusterRecord) -> ClusterRecord | None:
        """Do the next step of `rec`; returns the saved record, or None when it must wait."""
        if rec.phase != "Requested" and self._timed_out(rec):
            raise StepFailed(f"no progress for {self.step_timeout:.0f}s")
        step = {
            "Requested": self._create_capi,
            "CapiCreated": self._await_first_node,
            "FirstControlPlaneReady": self._install,
            "AgentInstalled": self._pivot,
            "Pivoted": self._publish,
            "Managed": self._publish,
            "Deleting": self._delete,
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

    async def workload(self, rec: ClusterRecord) -> KubeClient:
        """A client for the workload cluster. The pivot moves CAPI's kubeconfig Secret out of
        the management cluster, so the gateway keeps its own copy (next to its records) and
        reads that first: a pivot resumed after a crash can still reach its target."""
        spec = rec.spec
        own = f"outpost-workload-{spec.cluster_name}"
        try:
            secret = await self.management.get(r.SECRET, own, self.store.namespace)
        except NotFound:
            secret = await self.management.get(r.SECRET, f"{spec.cluster_name}-kubeconfig",
                                               spec.namespace)
            await self.management.apply(r.SECRET, {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": own, "namespace": self.store.namespace,
                             "labels": {"outpost.io/cluster": spec.cluster_name}},
                "data": {"value": secret["data"]["value"]}}, field_manager=MANAGER)
        data = base64.b64decode(secret["data"]["value"])
        path = self.work_dir / f"{spec.cluster_name}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600)
        return await self._workload_client(path)

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
        journal = RecordJournal(self.store, rec)
        try:
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
        rec = journal.current
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

    async def _delete(self, rec: ClusterRecord) -> ClusterRecord | None:
        """Retire a cluster. Before the pivot its CAPI objects live here and are deleted (CAPI
        tears the machines down). After it the cluster governs itself: the gateway stops
        managing it and forgets it; the site keeps running on its cached spec until it is
        decommissioned there."""
        spec = rec.spec
        pivoted = any(s.phase == "Pivoted" for s in rec.steps)
        if not pivoted:
            try:
                await self.management.get(r.CLUSTER, spec.cluster_name, spec.namespace)
                await self.management.delete(r.CLUSTER, spec.cluster_name, spec.namespace,
                                             propagation="Foreground")
                return None  # come back once CAPI has torn it down
            except NotFound:
                pass
        await self.management.delete(r.SECRET, f"outpost-workload-{spec.cluster_name}",
                                     self.store.namespace)
        await self.store.delete(rec.name)
        log.info("cluster %s retired%s", rec.name,
                 " (self-managed: left running on its cached spec)" if pivoted else "")
        return None

    async def _ensure_namespace(self, kube: KubeClient, name: str) -> None:
        await kube.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": name}},
                         field_manager=MANAGER)


async def _close(kube: KubeClient) -> None:
    close = getattr(kube, "close", None)
    if close is not None:
        await close()
