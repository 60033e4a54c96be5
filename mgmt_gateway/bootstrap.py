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
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.kube import AlreadyExists, ApiKubeClient, Conflict, KubeClient, KubeError, NotFound
from agent.kube import resources as r
from agent.runtime import Backoff
from agent.spec import capi

from .kinds import resource_of
from .pivot import PivotError, PreconditionFailed, move
from .publish import PublishConflict, PublishUnavailable, SpecPublisher
from .render.bundle import agent_bundle, load_components
from .render.capi import render_cluster
from .state import ClusterRecord, RecordStore, Unreadable, UnreadableRecord, now

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
    """Works every cluster record through the state machine, each cluster in its own task.

    Nothing one cluster does stops the others: an unreadable record is skipped and reported,
    an error in a cluster's step (of any type) is logged with its traceback, counted, saved as
    the record's `lastError`, and retried after that cluster's own backoff. The loop itself
    survives anything but cancellation, and beats `heartbeat` on every pass so a stuck loop
    fails liveness.
    """

    def __init__(self, store: RecordStore, management: KubeClient, publisher: SpecPublisher, *,
                 components: Sequence[Path], agent: AgentInstall, work_dir: Path,
                 poll: float = 1.0, step_timeout: float = 900.0, retry_max: float = 60.0,
                 workload_client: Callable[[Path], Awaitable[KubeClient]] | None = None,
                 on_step: Callable[[ClusterRecord], None] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.management = management
        self.publisher = publisher
        self.components = list(components)
        self.agent = agent
        self.work_dir = work_dir
        self.poll = poll
        self.step_timeout = step_timeout
        self.retry_max = max(retry_max, poll)
        self._workload_client = workload_client or ApiKubeClient.from_kubeconfig
        self.on_step = on_step
        self._wake = asyncio.Event()
        self._backoff: dict[str, Backoff] = {}
        self._not_before: dict[str, float] = {}  # cluster -> loop time of its next attempt
        self.unreadable: dict[str, Unreadable] = {}  # object name -> its current problem
        self._loop_error = ""
        self.unreadable_gauge = Gauge(
            "outpost_gateway_unreadable_records",
            "Cluster record ConfigMaps the gateway cannot read and skips (see the fleet view "
            "for which and why)", registry=registry)
        self.unreadable_seen = Counter(
            "outpost_gateway_unreadable_records_seen",
            "Distinct unreadable record problems found (object, version, reason)",
            registry=registry)
        self.step_errors = Counter(
            "outpost_gateway_bootstrap_step_errors",
            "Bootstrap steps that raised and will be retried, by phase and error type",
            ["phase", "error"], registry=registry)
        self.loop_errors = Counter(
            "outpost_gateway_bootstrap_loop_errors",
            "Passes of the bootstrap loop that could not list the cluster records",
            registry=registry)

    def wake(self, name: str = "") -> None:
        """Look at the records now; a named cluster is also let out of its backoff (its spec
        changed, so the next attempt may well succeed)."""
        if name:
            self._not_before.pop(name, None)
        self._wake.set()

    # -- loop ------------------------------------------------------------------------------
    async def run(self, heartbeat: Callable[[], None] = lambda: None) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                heartbeat()
                try:
                    await self._pass(tasks)
                except Exception as e:  # the loop must outlive any one pass
                    self.loop_errors.inc()
                    self._log_loop_error(e)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)
        finally:
            for task in tasks.values():
                task.cancel()
            if tasks:
                await asyncio.wait(tasks.values(), timeout=5)

    async def _pass(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        scan = await self.store.scan()
        if self._loop_error:
            log.info("cluster records readable again after: %s", self._loop_error)
            self._loop_error = ""
        await self._report_unreadable(scan.unreadable)
        now = asyncio.get_running_loop().time()
        for rec in scan.records:
            task = tasks.get(rec.name)
            if task is not None and not task.done():
                continue
            if rec.phase == "Failed" or (
                    rec.phase == "Managed" and rec.spec.revision <= rec.published_revision):
                continue
            if self._not_before.get(rec.name, 0.0) > now:
                continue
            tasks[rec.name] = asyncio.create_task(self._drive(rec.name),
                                                  name=f"bootstrap-{rec.name}")
        known = {rec.name for rec in scan.records}
        for name in [n for n in tasks if n not in known and tasks[n].done()]:
            del tasks[name]
        for name in [n for n in self._backoff if n not in known]:
            self._backoff.pop(name, None)
            self._not_before.pop(name, None)

    def _log_loop_error(self, e: Exception) -> None:
        why = f"{type(e).__name__}: {e}"
        if why == self._loop_error:  # once per distinct problem, not on every poll
            log.debug("still cannot list cluster records: %s", why)
            return
        self._loop_error = why
        if isinstance(e, KubeError):
            log.warning("cannot list cluster records, retrying every %.1fs: %s", self.poll, e)
        else:
            log.error("listing cluster records failed unexpectedly; retrying every %.1fs",
                      self.poll, exc_info=e)

    async def _report_unreadable(self, found: Sequence[Unreadable]) -> None:
        """Log, count and record an Event once per distinct problem; note the ones fixed."""
        current = {u.object_name: u for u in found}
        for u in found:
            before = self.unreadable.get(u.object_name)
            if before is not None and before.key == u.key:
                continue
            self.unreadable_seen.inc()
            log.error("skipping cluster record %s: %s; the other clusters proceed. To fix it, "
                      "%s", u.object_name, u.describe(), u.remedy(),
                      extra={"cluster": u.name, "object": u.object_name,
                             "resource_version": u.resource_version})
            await self._record_event(u)
        for object_name in [o for o in self.unreadable if o not in current]:
            log.info("cluster record %s is readable again or gone", object_name,
                     extra={"object": object_name})
        self.unreadable = current
        self.unreadable_gauge.set(len(current))

    async def _record_event(self, u: Unreadable) -> None:
        """A Warning Event on the ConfigMap, so `kubectl describe` shows it. Its name is
        derived from the problem, so replicas and restarts record each problem once."""
        digest = hashlib.sha256("\0".join(u.key).encode()).hexdigest()[:12]
        stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{u.object_name}.unreadable-{digest}",
                             "namespace": u.namespace},
                "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap",
                                   "name": u.object_name, "namespace": u.namespace,
                                   "resourceVersion": u.resource_version},
                "type": "Warning", "reason": "UnreadableRecord",
                "message": f"{u.reason}; the gateway skips this cluster. To fix it, "
                           f"{u.remedy()}"[:1024],
                "source": {"component": MANAGER}, "reportingComponent": MANAGER,
                "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}
        try:
            await self.management.create(r.EVENT, body)
        except AlreadyExists:
            pass
        except KubeError as e:
            log.debug("could not record an Event on %s: %s", u.object_name, e)

    async def _drive(self, name: str) -> None:
        """Advance one cluster as far as it goes now; never raises (but for cancellation)."""
        rec: ClusterRecord | None = None
        try:
            while True:
                rec = await self.store.get(name)
                if rec is None:
                    return
                try:
                    nxt = await self.advance(rec)
                except Conflict:
                    continue  # another replica moved it: re-read
                except StepFailed as e:
                    log.error("cluster %s failed in %s: %s", name, rec.phase, e,
                              extra={"cluster": name, "phase": rec.phase})
                    with contextlib.suppress(KubeError):
                        await self.store.update(rec.failed(f"{rec.phase}: {e}"))
                    return
                self._backoff.pop(name, None)  # the step went through
                if nxt is None:  # waiting on the cluster; come back later
                    return
                if self.on_step is not None:
                    self.on_step(nxt)
                if nxt.phase == "Managed" and nxt.spec.revision <= nxt.published_revision:
                    return
        except UnreadableRecord:
            return  # the loop reports it and skips it from now on
        except Exception as e:  # one cluster must never stop the others
            await self._step_error(name, rec, e)

    async def _step_error(self, name: str, rec: ClusterRecord | None, e: Exception) -> None:
        phase = rec.phase if rec is not None else "unknown"
        backoff = self._backoff.setdefault(name, Backoff(self.poll, self.retry_max))
        wait = backoff.next()
        self._not_before[name] = asyncio.get_running_loop().time() + wait
        self.step_errors.labels(phase=phase, error=type(e).__name__).inc()
        why = f"{phase}: {type(e).__name__}: {e}"[:1000]
        extra = {"cluster": name, "phase": phase, "retry_in": round(wait, 2)}
        if isinstance(e, KubeError):  # expected now and then: no traceback needed
            log.warning("cluster %s: %s step failed, retrying in %.1fs: %s", name, phase,
                        wait, e, extra=extra)
        else:
            log.error("cluster %s: %s step raised unexpectedly, retrying in %.1fs", name,
                      phase, wait, exc_info=e, extra=extra)
        if rec is None or rec.last_error == why:
            return
        try:  # the operator sees it in the fleet view; best effort, the retry stands anyway
            latest = await self.store.get(name)
            if latest is not None and latest.last_error != why:
                await self.store.update(latest.model_copy(update={"last_error": why}))
        except Exception as save:  # best effort
            log.debug("cluster %s: could not save its last error: %s", name, save)

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
