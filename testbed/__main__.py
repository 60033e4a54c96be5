"""`python -m testbed up --state-dir DIR`: the local environment for trying Outpost by hand."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .backends import BACKENDS
from .capi import SimConfig
from .controlplane.launcher import ControlPlaneError
from .env import Testbed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m testbed",
        description="Local Outpost testbed: a management and a workload Kubernetes API "
                    "(emulated with simulated Cluster API, or real control planes built from the "
                    "pinned Go modules) and a real NATS JetStream server.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the testbed up and keep it running until Ctrl-C or "
                                   "SIGTERM")
    up.add_argument("--state-dir", type=Path, required=True,
                    help="directory for kubeconfigs, nats.url and the NATS store")
    up.add_argument("--management-port", type=int, default=0,
                    help="port of the management API (default: a free one)")
    up.add_argument("--workload-port", type=int, default=0,
                    help="port of the workload API (default: a free one)")
    up.add_argument("--api", choices=BACKENDS, default="emulated",
                    help="emulated: the in-process API server (no Go needed, up in a second); "
                         "real: etcd, kube-apiserver, controller manager and scheduler per "
                         "cluster (run `make controlplane` first) (default: emulated)")
    up.add_argument("--step-delay", type=float, default=0.5,
                    help="seconds per simulated machine phase (default: 0.5)")
    up.add_argument("--no-nats", action="store_true", help="do not start nats-server")
    up.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    return p


async def _up(args: argparse.Namespace) -> int:
    tb = Testbed(args.state_dir.resolve(), sim=SimConfig(step_delay=args.step_delay),
                 nats=not args.no_nats, management_port=args.management_port,
                 workload_port=args.workload_port, api=args.api)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await tb.start()
    except ControlPlaneError as e:
        print(f"error: {e}", file=sys.stderr)
        await tb.stop()
        return 1
    try:
        print(f"management API  {tb.management.url}   kubeconfig {tb.management_kubeconfig}")
        print(f"workload API    {tb.workload.url}   kubeconfig {tb.workload_kubeconfig}")
        if tb.nats is not None:
            print(f"NATS            {tb.nats.url}   (also in {tb.nats_url_file})")
        print()
        print("Try:")
        print(f"  export KUBECONFIG={tb.management_kubeconfig}")
        print("  kubectl get crds")
        print("  kubectl api-resources --api-group=cluster.x-k8s.io")
        print("(kubectl is in the project's virtual environment: .venv/bin/kubectl)")
        print("Ctrl-C to stop.", flush=True)
        await stop.wait()
    finally:
        print("stopping...", flush=True)
        await tb.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format='{"level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    if args.command == "up":
        return asyncio.run(_up(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
