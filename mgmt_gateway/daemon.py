"""Composition root of the gateway: the OutpostCluster controller (informers, work queue,
workers, leader election), the REST façade, the spec publisher and the status collector.

Every background loop runs under the shared supervisor: a loop that fails is restarted with
backoff, /healthz fails while a worker or an informer stops making progress, and a loop that
cannot recover makes the process exit non-zero so Kubernetes restarts it with fresh state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web
from nats.aio.client import Client
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from agent.kube import AlreadyExists, ApiKubeClient, KubeClient, KubeError, NotFound
from agent.kube import resources as r
from agent.runtime.leader import LeaderElector
from agent.runtime.natslink import LinkSettings, NatsLink
from agent.runtime.supervisor import Supervisor
from agent.spec import logfmt, public_key_text
from agent.spec.envelope import explain_settings

from .adopt import adopt_records
from .api import ApiDeps, make_app
from .bootstrap import AgentInstall, Bootstrapper
from .clusters import CLUSTER_PROFILE, MANAGER, OUTPOST_CLUSTER
from .controller import ClusterController
from .events import EventRecorder
from .pivot import MemoryJournal, move
from .profiles import Sources
from .publish import SpecPublisher, StatusCollector, generate_signing_key, load_signing_key
from .render.helm import Helm
from .settings import GatewaySettings
from .store import OutpostClusters

log = logging.getLogger("outpost.gateway")


class Gateway:
    def _nc(self) -> Client | None:
        """The shared client while it is connected (publisher and collector never wait on a
        reconnecting one)."""
        nc = self.nats.nc
        return nc if nc is not None and nc.is_connected else None

    def __init__(self, settings: GatewaySettings, management: KubeClient) -> None:
        self.settings = settings
        self.management = management
        path = settings.signing_key_file
        key = load_signing_key(path) if path.exists() else generate_signing_key(path)
        self.public_keys = [public_key_text(key.public_key()), *settings.extra_trusted_keys]
        self.registry = CollectorRegistry()
        self.supervisor = Supervisor(
            component="gateway", registry=self.registry,
            backoff_initial=min(0.5, settings.retry_max_seconds),
            backoff_max=settings.retry_max_seconds)
        self.nats = NatsLink(LinkSettings(
            servers=settings.nats_servers, name="outpost-gateway",
            user_credentials=str(settings.nats_credentials) if settings.nats_credentials
            else None, backoff_initial=min(0.5, settings.retry_max_seconds),
            backoff_max=settings.retry_max_seconds))
        self.sources = Sources(Helm(settings.helm, settings.cache_dir / "charts"),
                               lambda digest: self.publisher.get_content(digest))
        self.fleet = OutpostClusters(management, sources=self.sources)
        self.publisher = SpecPublisher(self._nc, key, bundles=self.fleet.bundle)
        self.statuses = StatusCollector(self._nc, backoff_max=settings.retry_max_seconds)
        creds = (settings.agent_nats_credentials_file.read_text()
                 if settings.agent_nats_credentials_file else None)
        self.bootstrap = Bootstrapper(
            self.fleet, management, self.publisher, components=settings.components,
            agent=AgentInstall(image=settings.agent_image,
                               nats_servers=settings.agent_nats_servers or settings.nats_servers,
                               public_keys=self.public_keys, nats_credentials=creds,
                               extra_env=settings.agent_env()),
            step_timeout=settings.step_timeout_seconds)
        self.events = EventRecorder(management, MANAGER)
        self._adopted = False
        self._adopt_now = asyncio.Event()
        self.elector: LeaderElector | None = None
        if settings.leader_election:
            self.elector = LeaderElector(
                management, name="outpost-gateway", namespace=settings.namespace,
                identity=settings.identity, lease_duration=settings.lease_duration_seconds,
                field_manager=MANAGER)
        elector = self.elector
        self.controller = ClusterController(
            self.fleet, self.bootstrap, self.statuses, self.events,
            leading=(lambda: elector.is_leader) if elector else (lambda: True),
            workers=settings.workers, poll=settings.poll_seconds,
            retry_max=settings.retry_max_seconds, stale_after=settings.status_stale_seconds,
            last_seen_refresh=settings.last_seen_refresh_seconds, registry=self.registry)
        if elector is not None:
            elector.on_change = self._leadership
        self.ready = False
        self.http_port = settings.http_port

    def _leadership(self, leader: bool) -> None:
        if leader and not self._adopted:
            self._adopt_now.set()
        self.controller.leadership_changed(leader)

    def app(self) -> web.Application:
        return make_app(ApiDeps(
            fleet=self.fleet, statuses=self.statuses, tokens=self.settings.tokens(),
            ready=lambda: self.ready, live=self.supervisor.liveness, registry=self.registry,
            stale_after=self.settings.status_stale_seconds, upload=self.publisher.put_content))

    async def _adopt(self) -> None:
        """Once leading: adopt the ConfigMap records of an older gateway (retried on error)."""
        await self._adopt_now.wait()
        await self.fleet.synced(timeout=3600)
        count = await adopt_records(self.management, self.settings.namespace, self.events)
        if count:
            log.info("adopted %d cluster record(s) of an older gateway", count)
        self._adopted = True
        await asyncio.Event().wait()  # done; stay supervised without work

    async def _freeze_caches(self) -> None:
        """Once the informers hold the fleet, take what they hold out of the cyclic garbage
        collector's scans (it is freed by reference counting as usual): at 10,000 clusters each
        full collection otherwise walks every cached object, a pause of most of a second that
        every reconcile waits behind. Only what changes later is scanned."""
        await self.fleet.synced(timeout=3600)
        gc.freeze()
        log.info("caches filled; %d objects left out of garbage-collection scans",
                 gc.get_freeze_count())
        await asyncio.Event().wait()  # done; stay supervised without work

    def _supervise(self) -> None:
        sup = self.supervisor
        live = self.settings.liveness_seconds
        sup.add("nats", self.nats.run)
        sup.add("status-collector", self.statuses.run)
        sup.add("informer-outpostclusters", self.fleet.clusters.run)
        sup.add("informer-clusterprofiles", self.fleet.profiles.run)
        sup.add("freeze-caches", self._freeze_caches)
        if self.elector is not None:
            sup.add("leader-election", self.elector.run)
        else:
            self._adopt_now.set()
        sup.add("adopt-records", self._adopt)
        for i in range(self.settings.workers):
            name = f"worker-{i}"
            sup.add(name, lambda n=name: self.controller.run_worker(  # type: ignore[misc]
                sup.heartbeat(n), beat_every=min(5.0, live / 4)), liveness=live)

    async def _require_crds(self) -> None:
        for res in (OUTPOST_CLUSTER, CLUSTER_PROFILE):
            try:
                await self.management.get(r.CRD, f"{res.plural}.{res.group}")
            except NotFound:
                raise ValueError(
                    f"the management cluster does not serve {res.kind} ({res.api_version}): "
                    "apply the CRDs first (kubectl apply -f manifests/gateway/crds)") from None

    async def _ensure_namespace(self) -> None:
        """Its own namespace (the Lease lives there), created only when missing: a restart
        over a converged fleet writes nothing."""
        try:
            await self.management.get(r.NAMESPACE, self.settings.namespace)
        except NotFound:
            with contextlib.suppress(AlreadyExists):
                await self.management.create(r.NAMESPACE, {
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": self.settings.namespace}})

    async def run(self, stop: asyncio.Event) -> int:
        await self._require_crds()
        await self._ensure_namespace()
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.http_port = int(sockets[0].getsockname()[1])
        self._supervise()
        supervised = asyncio.create_task(self.supervisor.run(), name="supervisor")
        self.ready = True
        log.info("gateway listening on port %d", self.http_port)
        code = 0
        try:
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopped, supervised}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if supervised.done() and not supervised.cancelled():
                failure = supervised.exception()
                log.critical("stopping: %s", failure or "the supervisor ended")
                code = 1
            return code
        finally:
            self.ready = False
            late = await self.supervisor.stop(timeout=5)
            if late:
                log.warning("%d task(s) did not stop in time: %s", len(late), ", ".join(late))
            if not supervised.done():
                supervised.cancel()
            await asyncio.gather(supervised, return_exceptions=True)
            if self.elector is not None:
                await self.elector.release()
            await self.nats.stop()
            await self.sources.close()
            await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    fields = "\n".join(
        f"  OUTPOST_GATEWAY_{name.upper():<30} {(f.description or '').strip()}"
        for name, f in GatewaySettings.model_fields.items())
    parser = argparse.ArgumentParser(
        prog="outpost-gateway", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Outpost management gateway: creates clusters with Cluster API, installs "
                    "the agent, pivots, and publishes signed specs. Without a command it "
                    "serves the API and works the clusters.",
        epilog="Configuration comes from the environment:\n" + fields)
    sub = parser.add_subparsers(dest="command")
    plan = sub.add_parser(
        "move-plan", help="print what a pivot of a cluster would move (a dry run: reads only)",
        description="Dry run of the pivot (clusterctl move semantics): discover the cluster's "
                    "object graph in the management cluster, check the preconditions, and "
                    "print the move plan and what would be skipped. Changes nothing.")
    plan.add_argument("--namespace", required=True, help="namespace of the Cluster")
    plan.add_argument("--cluster", required=True, help="name of the Cluster")
    plan.add_argument("--target-kubeconfig", type=Path, required=True,
                      help="kubeconfig of the cluster it would move into")
    return parser


async def _management(settings: GatewaySettings) -> ApiKubeClient:
    """The management cluster's client; its User-Agent names the gateway in audit logs."""
    if settings.kubeconfig:
        return await ApiKubeClient.from_kubeconfig(settings.kubeconfig, user_agent=MANAGER)
    return ApiKubeClient.from_in_cluster(user_agent=MANAGER)


async def _move_plan(settings: GatewaySettings, args: argparse.Namespace) -> int:
    source = await _management(settings)
    target = await ApiKubeClient.from_kubeconfig(args.target_kubeconfig, user_agent=MANAGER)
    try:
        report = await move(source, target, args.namespace, args.cluster,
                            journal=MemoryJournal(), dry_run=True)
    finally:
        await source.close()
        await target.close()
    print(report.describe())
    return 1 if report.problems else 0


async def _amain(settings: GatewaySettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kube = await _management(settings)
    try:
        return await Gateway(settings, kube).run(stop)
    finally:
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = GatewaySettings()
    except ValidationError as e:
        print("outpost-gateway: invalid configuration: "
              f"{explain_settings(e, 'OUTPOST_GATEWAY_')} (see --help)", file=sys.stderr)
        return 2
    logfmt.setup(settings.log_level)
    try:
        if args.command == "move-plan":
            return asyncio.run(_move_plan(settings, args))
        return asyncio.run(_amain(settings))
    except (ValueError, KubeError, OSError) as e:
        print(f"outpost-gateway: cannot start: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
