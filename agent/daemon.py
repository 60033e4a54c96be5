"""Composition root of the agent: wires intake, reconcile, report, leader election and HTTP.

Shutdown order matters for an agent that must never leave half a change behind: stop being
ready, stop taking specs (drain NATS), let the pass in flight finish within the grace period,
hand the leader lease over, then stop serving. Any pass cut off anyway is repaired by the next
agent's first pass, because every pass re-plans from what it reads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from agent.http import make_app
from agent.intake import Intake, WatcherSettings
from agent.intake.bundles import BundleFetcher, ContentStore
from agent.kube import ApiKubeClient, KubeClient, KubeError
from agent.kube import resources as r
from agent.metrics import Metrics
from agent.plan.certs import expiries
from agent.plan.types import Observed
from agent.reconcile import PassResult, TopologyController
from agent.reconcile.addons import AddonController
from agent.reconcile.inventory import InventoryStore
from agent.report import EventType, Outbox, Publisher, compute_status
from agent.report.status import note_conditions
from agent.runtime import LeaderElector
from agent.runtime.contact import LastContact
from agent.runtime.supervisor import Supervisor, SupervisorFailed
from agent.settings import Settings
from agent.spec import ClusterSpec, Condition, StatusReport, load_public_keys, logfmt
from agent.spec.envelope import explain_settings

log = logging.getLogger("outpost.agent")


def agent_version() -> str:
    try:
        return version("outpost")
    except PackageNotFoundError:
        return "0.0.0+unknown"


class Agent:
    def __init__(self, settings: Settings, kube: KubeClient) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = Metrics()
        self.version = agent_version()
        keys = load_public_keys(settings.trusted_keys())
        if not keys:
            raise ValueError("no trusted gateway public key configured: set "
                             "OUTPOST_AGENT_PUBLIC_KEYS or OUTPOST_AGENT_PUBLIC_KEYS_FILE")
        state = settings.state_dir
        self.outbox = Outbox(state / "outbox")
        self.intake = Intake(
            WatcherSettings(servers=settings.nats_servers, cluster=settings.cluster_name,
                            name=f"outpost-agent-{settings.identity}",
                            user_credentials=str(settings.nats_credentials)
                            if settings.nats_credentials else None,
                            backoff_max=settings.retry_max_seconds),
            cache_dir=state / "spec", keys=keys, on_desired=self._on_desired,
            on_reject=self._on_reject, max_bytes=settings.max_spec_bytes)
        self.publisher = Publisher(self.outbox, settings.cluster_name,
                                   lambda: self.intake.watcher.status_nc,
                                   backoff_max=settings.retry_max_seconds,
                                   poll_interval=min(5.0, settings.retry_max_seconds))
        self.elector = LeaderElector(
            kube, name=settings.lease_name, namespace=settings.agent_namespace,
            identity=settings.identity, lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.renew_deadline_seconds,
            retry_period=settings.retry_period_seconds,
            on_change=self._on_leadership) if settings.leader_election else None
        # How long since the management plane was last heard from (the stale-spec guard).
        self.contact = LastContact(state / "last-contact.json")
        self.contact.load()
        self.intake.watcher.on_contact.append(self.contact.touch)
        self.metrics.last_contact_age.set_function(self.contact.age)
        self.controller = TopologyController(
            kube, lambda: self.intake.desired, on_pass=self._on_pass,
            is_leader=lambda: self.elector is None or self.elector.is_leader,
            resync=settings.resync_seconds, contact_age=self.contact.age)
        self.bundles = ContentStore(state / "bundles")
        self.addons = AddonController(
            kube, lambda: self.intake.desired, self.bundles,
            InventoryStore(state / "addons", kube, settings.agent_namespace),
            fetcher=BundleFetcher(lambda: self.intake.watcher.status_nc, self.bundles),
            is_leader=lambda: self.elector is None or self.elector.is_leader,
            on_change=self._addons_changed, resync=settings.resync_seconds,
            retry=min(2.0, settings.retry_max_seconds))
        self._addon_phases: dict[str, str] = {}
        self.supervisor = Supervisor(component="agent", registry=self.metrics.registry,
                                     backoff_max=settings.retry_max_seconds)
        self.ready = False
        self.stopping = False
        self.http_port = settings.http_port
        self.applied_revision = 0
        self.last_pass: PassResult | None = None
        self.notes: dict[str, str] = {}  # conditions from plan notes now holding: reason -> text
        self._failing: set[tuple[str, str, str]] = set()  # (kind, name, error) reported once
        self.last_status: StatusReport | None = None
        self._certs: list[tuple[str, datetime]] = []
        self._last_status_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop: asyncio.Event | None = None

    # -- callbacks -------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        """A short fire-and-forget job (an event, a report); its failure is logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job failed", exc_info=task.exception())

    def _on_desired(self, spec: ClusterSpec) -> None:
        self.metrics.revision_desired.set(spec.revision)
        log.info("desired spec revision %d", spec.revision, extra={"revision": spec.revision})
        self.controller.trigger("new desired spec")
        self.addons.trigger()
        self._spawn(self.publisher.emit("SpecAccepted", f"spec revision {spec.revision} "
                                        "accepted", revision=spec.revision))

    def _on_reject(self, reason: str, message: str, kv_revision: int) -> None:
        self.metrics.rejections.labels(reason=reason).inc()
        log.warning("rejected spec: %s", message, extra={"reason": reason,
                                                         "kvRevision": kv_revision})
        self._spawn(self.publisher.emit("SpecRejected", f"{reason}: {message}", type="Warning"))
        self._spawn(self._kube_event("Warning", "SpecRejected", f"{reason}: {message}"))
        self._spawn(self._report(force=True))

    def _on_leadership(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        if leader:
            self.controller.trigger("became leader")
            self.addons.trigger()

    async def _on_pass(self, result: PassResult) -> None:
        self.last_pass = result
        self.metrics.reconcile_duration.observe(result.duration)
        outcome = "error" if result.error else "converged" if result.converged else "progressing"
        self.metrics.reconciles.labels(result=outcome).inc()
        if result.crashed:
            self.metrics.reconcile_crashes.inc()
        self.metrics.queue_depth.set(self.controller.queue.depth)
        for action in result.done:
            verb = "delete" if type(action).__name__ == "Delete" else "apply"
            self.metrics.api_writes.labels(verb=verb).inc()
            await self.publisher.emit("Changed", action.reason, revision=result.revision,
                                      obj=f"{action.kind}/{self._ns()}/{action.name}")
        await self._report_failures(result)
        await self._report_notes(result)
        if result.converged and result.revision != self.applied_revision:
            self.applied_revision = result.revision
            self.metrics.revision_applied.set(result.revision)
            try:
                await self.intake.cache.save_applied_async(result.revision)
            except OSError as e:
                log.error("cannot persist the applied revision %d: %s", result.revision, e)
            await self.publisher.emit("SpecApplied", f"cluster converged to revision "
                                      f"{result.revision}", revision=result.revision)
        if result.observed is not None:
            found = expiries(result.observed.machines)
            if found:
                self.metrics.cert_expiry.set(found[0][1].timestamp())
            self.metrics.machine_cert_expiry.clear()
            for machine, expires in found:
                self.metrics.machine_cert_expiry.labels(machine=machine).set(
                    expires.timestamp())
        await self._report(force=bool(result.done) or result.error is not None)

    async def _report_failures(self, result: PassResult) -> None:
        """One Warning per object that starts failing (not one per retry)."""
        now = {(f.action.kind, f.action.name, f.error) for f in result.failures}
        for kind, name, error in sorted(now - self._failing):
            await self.publisher.emit("ApplyFailed", error, type="Warning",
                                      revision=result.revision, obj=f"{kind}/{self._ns()}/{name}")
            self._spawn(self._kube_event("Warning", "ApplyFailed", f"{kind}/{name}: {error}"))
        if result.error is None or result.failures:
            self._failing = now

    async def _report_notes(self, result: PassResult) -> None:
        """Plan notes are conditions: an Event when one starts holding and when it clears."""
        if result.error is not None and result.observed is None:
            return  # nothing was planned: the notes still hold as far as we know
        notes = note_conditions((n.reason, n.message) for n in result.notes)
        for reason, message in notes.items():
            if self.notes.get(reason) != message:
                kind: EventType = "Normal" if reason.startswith("Waiting") or reason in (
                    "Upgrading",) else "Warning"
                await self.publisher.emit(reason, message, type=kind, revision=result.revision)
                self._spawn(self._kube_event(kind, reason, message))
        for reason in self.notes.keys() - notes.keys():
            message = f"{reason} no longer holds"
            await self.publisher.emit("ConditionCleared", message, revision=result.revision)
            self._spawn(self._kube_event("Normal", "ConditionCleared", message))
        self.notes = notes

    def _addons_changed(self) -> None:
        """An add-on's status changed: metrics, an Event per phase change, a report."""
        report = self.addons.report()
        for phase in ("Pending", "Applying", "Ready", "Degraded", "Failed", "Pruning"):
            self.metrics.addons.labels(phase=phase).set(sum(a.phase == phase for a in report))
        self.metrics.addon_writes.set(self.addons.writes)
        if self.addons.fetcher is not None:
            self.metrics.bundle_bytes.set(self.addons.fetcher.fetched_bytes)
        now = {a.name: a for a in report}
        for name, a in now.items():
            if self._addon_phases.get(name) == a.phase:
                continue
            self._addon_phases[name] = a.phase
            kind: EventType = "Warning" if a.phase in ("Degraded", "Failed") else "Normal"
            text = f"add-on {name} {a.version}: {a.phase}" + (
                f": {a.last_error or a.message}" if (a.last_error or a.message) else "")
            self._spawn(self.publisher.emit(f"Addon{a.phase}", text, type=kind))
            self._spawn(self._kube_event(kind, f"Addon{a.phase}", text))
        for name in set(self._addon_phases) - set(now):
            del self._addon_phases[name]
            self._spawn(self._kube_event("Normal", "AddonRemoved", f"add-on {name} removed"))
        self._spawn(self._report(force=True))

    def _ns(self) -> str:
        spec = self.intake.desired
        return spec.namespace if spec else ""

    # -- reporting -------------------------------------------------------------------------
    async def _report(self, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        rej = self.intake.last_rejection
        result = self.last_pass
        observed = result.observed if result else None
        status = compute_status(
            self.settings.cluster_name, self.intake.desired,
            observed_revision=self.intake.observed_revision,
            applied_revision=self.applied_revision,
            control_plane=observed.kcp if observed else None,
            machine_deployments=list(observed.machine_deployments.values()) if observed else (),
            last_error=result.error if result else None,
            rejected_revision=rej.revision if rej else None,
            rejection=f"{rej.reason}: {rej.message}" if rej else None,
            connected=self.intake.watcher.connected, agent_version=self.version,
            now=datetime.now(UTC), previous=self.last_status, notes=self.notes.items(),
            addons=self.addons.report(), certificates=self._certificates(observed))
        self._tell_expiring(status)
        unchanged = self.last_status is not None and status.model_copy(
            update={"reported_at": self.last_status.reported_at}) == self.last_status
        due = loop.time() - self._last_status_at >= self.settings.status_interval_seconds
        if unchanged and not due and not force:
            return
        self.last_status = status
        self._last_status_at = loop.time()
        await self.publisher.publish_status(status)
        self.metrics.outbox_depth.set(self.outbox.depth)

    def _certificates(self, observed: Observed | None) -> list[tuple[str, datetime]]:
        """The machines' certificate expiries: the last known ones when a pass could not
        observe (an API error must not make the expiry, and its warning, come and go)."""
        if observed is not None:
            self._certs = expiries(observed.machines)
        return self._certs

    def _tell_expiring(self, status: StatusReport) -> None:
        """A Warning Event when certificates come within the rotation policy."""
        def expiring(report: StatusReport | None) -> Condition | None:
            found = next((c for c in (report.conditions if report else ())
                          if c.type == "CertificatesExpiring"), None)
            return found if found is not None and found.status == "True" else None

        now, before = expiring(status), expiring(self.last_status)
        if now is not None and before is None:
            self._spawn(self.publisher.emit("CertificatesExpiring", now.message,
                                            type="Warning"))
            self._spawn(self._kube_event("Warning", "CertificatesExpiring", now.message))

    async def _kube_event(self, type_: str, reason: str, message: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ns = self.settings.agent_namespace
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": "outpost-agent.", "namespace": ns},
                "involvedObject": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                   "name": self.settings.lease_name, "namespace": ns},
                "type": type_, "reason": reason, "message": message[:1024],
                "source": {"component": "outpost-agent", "host": self.settings.identity},
                "reportingComponent": "outpost-agent",
                "reportingInstance": self.settings.identity,
                "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        try:
            await self.kube.create(r.EVENT, body)
        except KubeError as e:
            log.debug("could not record a Kubernetes event: %s", e)

    async def _watch_connection(self) -> None:
        watcher = self.intake.watcher
        was = watcher.connected
        while True:
            await watcher.state_changed.wait()
            watcher.state_changed.clear()
            now = watcher.connected
            self.metrics.nats_connected.set(1 if now else 0)
            if now and not was:
                self.publisher.notify(reconnected=True)
                self._spawn(self._report(force=True))
            was = now

    async def _status_timer(self) -> None:
        dropped = self.outbox.dropped
        while True:
            await asyncio.sleep(self.settings.status_interval_seconds)
            await self._report()
            if self.outbox.dropped > dropped:
                self.metrics.outbox_dropped.inc(self.outbox.dropped - dropped)
                dropped = self.outbox.dropped
            self.metrics.outbox_depth.set(self.outbox.depth)
            self.metrics.queue_depth.set(self.controller.queue.depth)

    # -- life cycle ------------------------------------------------------------------------
    def _readiness(self) -> tuple[bool, str]:
        if self.stopping or (self._stop is not None and self._stop.is_set()):
            return False, "shutting down"
        if not self.ready:
            return False, "starting"
        return True, "ok"

    def _liveness(self) -> tuple[bool, str]:
        return self.supervisor.liveness()

    def _supervise(self) -> None:
        sup, c = self.supervisor, self.controller
        live = self.settings.liveness_seconds
        sup.add("nats-link", self.intake.watcher.link.run)
        sup.add("spec-follower", self.intake.watcher.follow)
        sup.add("publisher", self.publisher.run)
        sup.add("nats-state", self._watch_connection)
        sup.add("status-timer", self._status_timer)
        sup.add("last-contact", self.contact.run)
        if self.elector is not None:
            sup.add("leader-election", self.elector.run)
        sup.add("reconcile-worker", lambda: c.worker(sup.heartbeat("reconcile-worker")),
                liveness=live)
        sup.add("reconcile-resync", c.resync_loop)
        sup.add("informers", lambda: c.informers_loop(sup.heartbeat("informers")),
                liveness=live)
        a = self.addons
        for i in range(2):  # one add-on failing or slow never holds the others
            name = f"addon-worker-{i}"
            sup.add(name, lambda n=name: a.worker(sup.heartbeat(n)),  # type: ignore[misc]
                    liveness=live)
        sup.add("addon-resync", a.resync_loop)
        sup.add("addon-fetch", a.fetch_loop)
        sup.add("addon-watches", lambda: a.watches.run(sup.heartbeat("addon-watches")),
                liveness=live)

    async def run(self, stop: asyncio.Event) -> int:
        self._stop = stop  # not ready from the moment a stop is asked for
        runner = web.AppRunner(make_app(self.metrics, self._readiness, self._liveness),
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.http_port = int(sockets[0].getsockname()[1])
        supervised: asyncio.Task[None] | None = None
        code = 0
        try:
            await self.intake.start(watch=False)
            desired = self.intake.desired
            applied = await asyncio.to_thread(self.intake.cache.load_applied)
            if desired is not None and applied <= desired.revision:
                self.applied_revision = applied
                self.metrics.revision_applied.set(applied)
            self._supervise()
            supervised = asyncio.get_running_loop().create_task(self.supervisor.run(),
                                                                name="supervisor")
            await self._report(force=True)  # the applied revision is known before any pass
            self.ready = True
            log.info("agent %s started for cluster %s", self.version,
                     self.settings.cluster_name)
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopped, supervised}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if supervised.done() and isinstance(supervised.exception(), SupervisorFailed):
                log.critical("stopping: %s", supervised.exception())
                code = 1
            log.info("shutting down")
            self.stopping = True
            self.supervisor.quiesce()
            await self.supervisor.retire("spec-follower", "nats-link")
            await self.intake.stop()
            finished = await self.controller.drain(self.settings.shutdown_grace_seconds)
            if not finished:
                log.warning("a reconcile pass was still running after the grace period; the "
                            "next start repairs whatever it left undone")
            late = await self.supervisor.stop(timeout=2.0)
            if late:
                # Bounded: a NATS client stuck reconnecting may take its time to notice.
                log.warning("%d task(s) did not stop in time: %s", len(late), ", ".join(late))
            if self.elector is not None:
                await self.elector.release()
            await self._report(force=True)
            return code
        finally:
            if supervised is not None and not supervised.done():
                await self.supervisor.stop(timeout=2.0)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)
            self.outbox.close()
            await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    fields = "\n".join(
        f"  OUTPOST_AGENT_{name.upper():<34} {(f.description or '').strip()}"
        for name, f in Settings.model_fields.items())
    return argparse.ArgumentParser(
        prog="outpost-agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Outpost agent: keeps this cluster at the spec the management gateway "
                    "signed, whether or not the management plane is reachable.",
        epilog="Configuration comes from the environment (or --env-file):\n" + fields)


async def _amain(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.kubeconfig is not None:
        kube = await ApiKubeClient.from_kubeconfig(settings.kubeconfig)
    else:
        kube = ApiKubeClient.from_in_cluster()
    try:
        agent = Agent(settings, kube)
        return await agent.run(stop)
    finally:
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    parser.add_argument("--env-file", type=Path,
                        help="read OUTPOST_AGENT_* settings from this file too")
    args = parser.parse_args(argv)
    try:
        settings = Settings(_env_file=args.env_file) if args.env_file else Settings()  # type: ignore[call-arg]
    except ValidationError as e:
        print(f"outpost-agent: invalid configuration: {explain_settings(e, 'OUTPOST_AGENT_')} "
              "(see --help)", file=sys.stderr)
        return 2
    logfmt.setup(settings.log_level)
    try:
        return asyncio.run(_amain(settings))
    except (ValueError, KubeError) as e:
        log.error("cannot start: %s", e)
        print(f"outpost-agent: cannot start: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
