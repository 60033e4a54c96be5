"""Composition root of the gateway: API, bootstrap worker, spec publisher, status collector.

Every background loop runs under the shared supervisor: a loop that fails is restarted with
backoff, /healthz fails while the bootstrap loop stops beating, and a loop that cannot recover
makes the process exit non-zero so Kubernetes restarts it with fresh state.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web
from nats.aio.client import Client
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from agent.kube import ApiKubeClient, KubeClient, KubeError
from agent.kube import resources as r
from agent.runtime.natslink import LinkSettings, NatsLink
from agent.runtime.supervisor import Supervisor
from agent.spec import logfmt, public_key_text
from agent.spec.envelope import explain_settings

from .api import ApiDeps, make_app
from .bootstrap import AgentInstall, Bootstrapper
from .pivot import MemoryJournal, move
from .publish import SpecPublisher, StatusCollector, generate_signing_key, load_signing_key
from .settings import GatewaySettings
from .state import RecordStore

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
        self.publisher = SpecPublisher(self._nc, key)
        self.statuses = StatusCollector(self._nc, backoff_max=settings.retry_max_seconds)
        self.store = RecordStore(management, settings.namespace)
        creds = (settings.agent_nats_credentials_file.read_text()
                 if settings.agent_nats_credentials_file else None)
        self.bootstrap = Bootstrapper(
            self.store, management, self.publisher, components=settings.components,
            agent=AgentInstall(image=settings.agent_image,
                               nats_servers=settings.agent_nats_servers or settings.nats_servers,
                               public_keys=self.public_keys, nats_credentials=creds,
                               extra_env=settings.agent_env()),
            work_dir=settings.work_dir, poll=settings.poll_seconds,
            step_timeout=settings.step_timeout_seconds, retry_max=settings.retry_max_seconds,
            registry=self.registry)
        self.ready = False
        self.http_port = settings.http_port

    def app(self) -> web.Application:
        return make_app(ApiDeps(
            records=self.store, statuses=self.statuses, wake=self.bootstrap.wake,
            tokens=self.settings.tokens(), ready=lambda: self.ready,
            live=self.supervisor.liveness, registry=self.registry))

    def _supervise(self) -> None:
        sup = self.supervisor
        sup.add("nats", self.nats.run)
        sup.add("status-collector", self.statuses.run)
        sup.add("bootstrap", lambda: self.bootstrap.run(sup.heartbeat("bootstrap")),
                liveness=self.settings.liveness_seconds)

    async def run(self, stop: asyncio.Event) -> int:
        await self.management.apply(r.NAMESPACE, {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": self.settings.namespace}}, field_manager="outpost-gateway")
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
            await self.nats.stop()
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


async def _move_plan(settings: GatewaySettings, args: argparse.Namespace) -> int:
    source = (await ApiKubeClient.from_kubeconfig(settings.kubeconfig) if settings.kubeconfig
              else ApiKubeClient.from_in_cluster())
    target = await ApiKubeClient.from_kubeconfig(args.target_kubeconfig)
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
    kube = (await ApiKubeClient.from_kubeconfig(settings.kubeconfig) if settings.kubeconfig
            else ApiKubeClient.from_in_cluster())
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
