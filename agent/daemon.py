"""Composition root of the agent: wires intake, reconcile, report, leader election and HTTP.

Shutdown order matters for an agent that must never leave half a change behind: stop being
ready, stop taking specs (drain NATS), let the pass in flight finish within the grace period,
hand the leader lease over, then stop serving. Any pass cut off anyway is repaired by the next
agent's first pass, because every pass re-plans from what it reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from agent.kube import ApiKubeClient, KubeClient, KubeError
from agent.kube import resources as r
from agent.metrics import Metrics
from agent.plan.certs import earliest_expiry
from agent.reconcile import PassResult, TopologyController
from agent.report import Outbox, Publisher, compute_status
from agent.runtime import LeaderElector
from agent.settings import Settings
from agent.spec import ClusterSpec, StatusReport, load_public_keys, logfmt
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
            on_change=self._on_leadership) if settings.leader_election else None
        self.controller = TopologyController(
            kube, lambda: self.intake.desired, on_pass=self._on_pass,
            is_leader=lambda: self.elector is None or self.elector.is_leader,
            resync=settings.resync_seconds)
        self.ready = False
        self.stopping = False
        self.http_port = settings.http_port
        self.applied_revision = 0
        self.last_pass: PassResult | None = None
        self.last_status: StatusReport | None = None
        self._last_status_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- callbacks -------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_desired(self, spec: ClusterSpec) -> None:
        self.metrics.revision_desired.set(spec.revision)
        log.info("desired spec revision %d", spec.revision, extra={"revision": spec.revision})
        self.controller.trigger("new desired spec")
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

    async def _on_pass(self, result: PassResult) -> None:
        self.last_pass = result
        self.metrics.reconcile_duration.observe(result.duration)
        outcome = "error" if result.error else "converged" if result.converged else "progressing"
        self.metrics.reconciles.labels(result=outcome).inc()
        self.metrics.queue_depth.set(self.controller.queue.depth)
        for action in result.done:
            verb = "delete" if type(action).__name__ == "Delete" else "apply"
            self.metrics.api_writes.labels(verb=verb).inc()
            await self.publisher.emit("Changed", action.reason, revision=result.revision,
                                      obj=f"{action.kind}/{self._ns()}/{action.name}")
        if result.converged and result.revision > self.applied_revision:
            self.applied_revision = result.revision
            self.metrics.revision_applied.set(result.revision)
            await self.publisher.emit("SpecApplied", f"cluster converged to revision "
                                      f"{result.revision}", revision=result.revision)
        if result.observed is not None:
            expiry = earliest_expiry(result.observed.machines)
            if expiry is not None:
                self.metrics.cert_expiry.set(expiry.timestamp())
        await self._report(force=bool(result.done) or result.error is not None)

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
            now=datetime.now(UTC), previous=self.last_status)
        unchanged = self.last_status is not None and status.model_copy(
            update={"reported_at": self.last_status.reported_at}) == self.last_status
        due = loop.time() - self._last_status_at >= self.settings.status_interval_seconds
        if unchanged and not due and not force:
            return
        self.last_status = status
        self._last_status_at = loop.time()
        await self.publisher.publish_status(status)
        self.metrics.outbox_depth.set(self.outbox.depth)

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
        if self.stopping:
            return False, "shutting down"
        if not self.ready:
            return False, "starting"
        return True, "ok"

    def _liveness(self) -> tuple[bool, str]:
        return True, "ok"

    async def run(self, stop: asyncio.Event) -> int:
        runner = web.AppRunner(make_app(self.metrics, self._readiness, self._liveness),
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.http_port = int(sockets[0].getsockname()[1])
        background: list[asyncio.Task[Any]] = []
        try:
            await self.intake.start()
            loop = asyncio.get_running_loop()
            background.append(loop.create_task(self.publisher.run(), name="publisher"))
            background.append(loop.create_task(self._watch_connection(), name="nats-state"))
            background.append(loop.create_task(self._status_timer(), name="status-timer"))
            if self.elector is not None:
                background.append(loop.create_task(self.elector.run(), name="leader-election"))
            controller = loop.create_task(self.controller.run(), name="controller")
            self.ready = True
            log.info("agent %s started for cluster %s", self.version,
                     self.settings.cluster_name)
            await stop.wait()
            log.info("shutting down")
            self.stopping = True
            await self.intake.stop()
            finished = await self.controller.drain(self.settings.shutdown_grace_seconds)
            if not finished:
                log.warning("a reconcile pass was still running after the grace period; the "
                            "next start repairs whatever it left undone")
            controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller
            if self.elector is not None:
                await self.elector.release()
            await self._report(force=True)
            return 0
        finally:
            tasks = [*background, *self._tasks]
            for task in tasks:
                task.cancel()
            if tasks:
                # Bounded: a NATS client stuck reconnecting may take its time to notice.
                _, late = await asyncio.wait(tasks, timeout=2.0)
                if late:
                    log.warning("%d background task(s) did not stop in time: %s", len(late),
                                ", ".join(t.get_name() for t in late))
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
