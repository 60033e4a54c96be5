"""`outpost-demo`: the six steps of Outpost, end to end, on the embedded testbed.

It brings up a management and a workload cluster (emulated APIs with simulated Cluster API), a
real NATS server and the gateway; creates an OutpostCluster with `outpostctl`; follows it through
bootstrap, agent install and pivot until the agent in the workload cluster has scaled it to the
full spec and installed the add-ons of its cluster profile (pushed first with `outpostctl profile
push`) in order; then scales it with `outpostctl` (day 2), cuts the link to the management plane,
breaks the cluster and an add-on by hand and shows the agent repairing both from its cache, and
the cluster's status catching up afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.kube import ApiKubeClient
from agent.kube import resources as r
from mgmt_gateway.clusters import OUTPOST_CLUSTER
from mgmt_gateway.daemon import Gateway
from mgmt_gateway.settings import GatewaySettings

from . import demo_addons
from .backends import BACKENDS, Backend
from .capi import SimConfig
from .controlplane.launcher import ControlPlaneError
from .crds import components_files
from .env import Testbed

TOKEN = "demo-token"
CLUSTER = "edge-1"
NS = "fleet"
AGENT_ENV = {"OUTPOST_AGENT_RESYNC_SECONDS": "2", "OUTPOST_AGENT_STATUS_INTERVAL_SECONDS": "1",
             "OUTPOST_AGENT_LEASE_DURATION_SECONDS": "6", "OUTPOST_AGENT_RETRY_MAX_SECONDS": "2",
             "OUTPOST_AGENT_LOG_LEVEL": "INFO"}


def request(cp: int, workers: int) -> dict[str, Any]:
    return {
        "name": CLUSTER, "namespace": NS, "kubernetesVersion": "v1.35.2",
        "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": cp, "machine": {"provider": "dev"}},
        "workers": [{"name": "line-a", "replicas": workers, "machine": {"provider": "dev"}}],
        "certificates": {"rotateBeforeDays": 30},
        "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoOnlyKey ops@factory-7"],
    }


@dataclass
class Step:
    title: str
    seconds: float = 0.0
    detail: str = ""
    ok: bool = False


class Demo:
    def __init__(self, state: Path, step_delay: float, timeout: float, out: Any) -> None:
        self.state = state
        self.step_delay = step_delay
        self.timeout = timeout
        self.out = out
        self.steps: list[Step] = []
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    async def step(self, title: str, fn: Callable[[], Awaitable[str]]) -> bool:
        s = Step(title)
        self.steps.append(s)
        self.say(f"▶ {title}")
        start = time.monotonic()
        try:
            s.detail = await asyncio.wait_for(fn(), self.timeout)
            s.ok = True
        except TimeoutError:
            s.detail = f"timed out after {self.timeout:.0f}s"
        except Exception as e:  # a demo reports what broke and goes on to the summary
            s.detail = f"{type(e).__name__}: {e}"
        s.seconds = time.monotonic() - start
        self.say(f"  {'✓' if s.ok else '✗'} {s.detail} ({s.seconds:.1f}s)")
        return s.ok

    def summary(self) -> str:
        width = max(len(s.title) for s in self.steps)
        lines = [f"{'step':<{width}}  {'result':<6}  {'time':>7}  detail",
                 "-" * (width + 40)]
        for s in self.steps:
            lines.append(f"{s.title:<{width}}  {'ok' if s.ok else 'FAILED':<6}  "
                         f"{s.seconds:6.1f}s  {s.detail}")
        return "\n".join(lines)


async def _poll(fn: Callable[[], Awaitable[Any]], interval: float = 0.2) -> Any:
    while True:
        result = await fn()
        if result:
            return result
        await asyncio.sleep(interval)


def cluster_yaml(cp: int, workers: int) -> str:
    """The OutpostCluster the demo asks for, as a platform team would keep it in Git."""
    spec = {k: v for k, v in request(cp, workers).items() if k not in ("name", "namespace")}
    spec["profile"] = {"name": demo_addons.PROFILE, "version": demo_addons.VERSION}
    return yaml.safe_dump({"apiVersion": "outpost.io/v1alpha1", "kind": "OutpostCluster",
                           "metadata": {"name": CLUSTER, "namespace": NS}, "spec": spec},
                          sort_keys=False)


async def outpostctl(kubeconfig: Path, *args: str, say: Callable[[str], None]) -> str:
    """Run `outpostctl` as a user would (its output shown), raising if it fails."""
    say(f"  $ outpostctl {' '.join(args)}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mgmt_gateway.ctl", "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    text = out.decode().rstrip()
    for line in text.splitlines():
        say(f"    {line}")
    if proc.returncode:
        raise RuntimeError(f"outpostctl {args[0]} exited {proc.returncode}: "
                           f"{err.decode().strip()}")
    return text


async def run(state: Path, step_delay: float, timeout: float, out: Any = sys.stdout,
              api: Backend = "emulated") -> int:
    demo = Demo(state, step_delay, timeout, out)
    demo.say(f"starting the testbed: management + workload API ({api}), simulated CAPI, NATS")
    async with Testbed(state, sim=SimConfig(step_delay=step_delay, resync=0.5), api=api) as tb:
        assert tb.nats is not None
        nats = tb.nats
        settings = GatewaySettings(
            kubeconfig=tb.management_kubeconfig, nats_servers=[tb.nats.url],
            signing_key_file=state / "gateway" / "signing-key.pem",
            components=components_files(), api_tokens=[TOKEN], http_host="127.0.0.1",
            http_port=0, poll_seconds=0.2, agent_image="outpost:dev",
            status_stale_seconds=3)  # the outage shows in the status within seconds
        kubeconfig = tb.management_kubeconfig
        mgmt = await ApiKubeClient.from_kubeconfig(kubeconfig)
        workload = await ApiKubeClient.from_kubeconfig(tb.workload_kubeconfig)
        await mgmt.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": NS}}, field_manager="outpost-demo")
        gateway = Gateway(settings, mgmt)
        gateway.bootstrap.agent.extra_env.update(AGENT_ENV)
        stop = asyncio.Event()
        gw_task = asyncio.create_task(gateway.run(stop))
        await _poll(lambda: _true(gateway.ready))
        demo.say(f"gateway running; management cluster: export KUBECONFIG={kubeconfig}")

        async def get_cluster() -> dict[str, Any]:
            obj = await _get(mgmt, OUTPOST_CLUSTER, CLUSTER)
            return dict((obj or {}).get("status") or {})

        def phase_reached(phase: str) -> Callable[[], Awaitable[str]]:
            async def wait() -> str:
                rec = await _poll(lambda: _phase(get_cluster, phase))
                step: dict[str, Any] = next(
                    (s for s in rec.get("steps", []) if s.get("phase") == phase), {})
                return str(step.get("detail") or f"phase {phase}")
            return wait

        async def submit() -> str:
            manifest = state / f"{CLUSTER}.yaml"
            manifest.write_text(cluster_yaml(3, 2))
            await outpostctl(kubeconfig, "create", "cluster", "-f", str(manifest),
                             say=demo.say)
            return f"OutpostCluster {NS}/{CLUSTER} created from {manifest.name}"

        async def publish_profile() -> str:
            profile = demo_addons.write_profile(state / "profile", NS)
            token = state / "gateway-token"
            token.write_text(TOKEN)
            args = ("profile", "push", "-f", str(profile), "--gateway",
                    f"http://127.0.0.1:{gateway.http_port}", "--token-file", str(token))

            async def pushed() -> str:
                try:
                    return await outpostctl(kubeconfig, *args, say=demo.say)
                except RuntimeError as e:
                    if "unavailable" not in str(e):  # the gateway's NATS link comes up
                        raise
                    return ""
            await _poll(pushed, interval=0.5)
            names = ", ".join(a[0] for a in demo_addons.ADDONS)
            return (f"ClusterProfile {demo_addons.PROFILE} {demo_addons.VERSION} ({names}): "
                    "manifests uploaded to the gateway")

        ok = await demo.step("0. publish a cluster profile with outpostctl", publish_profile)
        ok = ok and await demo.step("1. request a cluster (3 control-plane, 2 workers)",
                                    submit)
        for title, phase in [
            ("2. CAPI objects created in the management cluster", "CapiCreated"),
            ("3. first control-plane node up (kubeconfig Secret)", "FirstControlPlaneReady"),
            ("4a. CAPI controllers + agent installed in the workload", "AgentInstalled"),
            ("4b. CAPI objects pivoted into the workload cluster", "Pivoted"),
            ("5. signed spec published; cluster Managed", "Managed"),
        ]:
            ok = ok and await demo.step(title, phase_reached(phase))

        async def full_spec() -> str:
            async def ready() -> str:
                kcp = await _get(workload, r.KUBEADM_CONTROL_PLANE, f"{CLUSTER}-control-plane")
                md = await _get(workload, r.MACHINE_DEPLOYMENT, f"{CLUSTER}-line-a")
                k = (kcp or {}).get("status", {}).get("readyReplicas", 0)
                w = (md or {}).get("status", {}).get("readyReplicas", 0)
                return f"control plane {k}/3 ready, workers {w}/2 ready" if (
                    k == 3 and w == 2) else ""
            return str(await _poll(ready))

        ok = ok and await demo.step("6a. the agent scales the cluster to the full spec",
                                    full_spec)

        async def addons_installed() -> str:
            return await _addons_in_order(get_cluster, workload, demo.say)

        ok = ok and await demo.step("6b. the agent installs the profile's add-ons in order",
                                    addons_installed)

        async def day2() -> str:
            await outpostctl(kubeconfig, "scale", CLUSTER, "-n", NS, "--workers", "line-a=4",
                             say=demo.say)

            async def scaled() -> str:
                md = await _get(workload, r.MACHINE_DEPLOYMENT, f"{CLUSTER}-line-a")
                ready = (md or {}).get("status", {}).get("readyReplicas", 0)
                return f"workers {ready}/4 ready (revision 2)" if ready == 4 else ""
            return str(await _poll(scaled))

        ok = ok and await demo.step("day 2: scale workers 2 -> 4 with outpostctl", day2)

        async def disconnected() -> str:
            await nats.stop()
            demo.say("  NATS stopped: the site is cut off from the management plane")
            await workload.patch(r.MACHINE_DEPLOYMENT, f"{CLUSTER}-line-a",
                                 {"spec": {"replicas": 1}}, NS, field_manager="kubectl")
            demo.say("  someone scaled the workers to 1 by hand on site")
            await workload.delete(r.CONFIG_MAP, "fluent-bit", "logging")
            demo.say("  and deleted the logging add-on's ConfigMap logging/fluent-bit")

            async def repaired() -> str:
                md = await _get(workload, r.MACHINE_DEPLOYMENT, f"{CLUSTER}-line-a")
                spec_replicas = (md or {}).get("spec", {}).get("replicas")
                ready = (md or {}).get("status", {}).get("readyReplicas", 0)
                return "agent restored 4 workers from its cache" if (
                    spec_replicas == 4 and ready == 4) else ""

            async def addon_repaired() -> str:
                cm = await _get_in(workload, r.CONFIG_MAP, "fluent-bit", "logging")
                return "the logging add-on's ConfigMap restored" if cm else ""

            async def shown_disconnected() -> str:
                c = await get_cluster()
                return "the OutpostCluster shows connected=false" if c.get(
                    "connected") is False else ""
            return (f"{await _poll(repaired)}; {await _poll(addon_repaired)}; "
                    f"{await _poll(shown_disconnected)}")

        ok = ok and await demo.step("link down: drift corrected from the agent's cache",
                                    disconnected)

        async def reconnected() -> str:
            cut = int(time.time())  # status times have whole seconds
            await nats.start()

            async def caught_up() -> str:
                c = await get_cluster()
                seen = _ts(c.get("lastSeen"))
                return (f"OutpostCluster status: applied revision {c.get('appliedRevision')}, "
                        f"connected={c.get('connected')}") if (
                    c.get("connected") and seen is not None and seen >= cut) else ""
            return str(await _poll(caught_up))

        ok = ok and await demo.step("link back: the cluster's status catches up", reconnected)
        final = ""
        with contextlib.suppress(Exception):
            final = await outpostctl(kubeconfig, "get", "clusters", "-A", say=lambda _: None)
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gw_task, 10)
        await mgmt.close()
        await workload.close()
    print("\n" + demo.summary(), file=out)
    if final:
        print(f"\n$ outpostctl get clusters -A\n{final}", file=out)
    failed = [s for s in demo.steps if not s.ok]
    print(f"\n{'all steps passed' if not failed else f'{len(failed)} step(s) failed'} in "
          f"{time.monotonic() - demo.t0:.0f}s", file=out)
    return 0 if ok and not failed else 1


async def _addons_in_order(get_cluster: Callable[[], Awaitable[dict[str, Any]]],
                           workload: ApiKubeClient, say: Callable[[str], None]) -> str:
    """Wait until the OutpostCluster shows every add-on of the profile Ready; then tell, in the
    order the agent recorded it (its AddonReady Events, by the API's resourceVersion), what each
    installed (its inventory in the workload cluster). Fails if an add-on became Ready before
    one of a lower order."""
    orders = {name: order for order, (name, *_) in enumerate(demo_addons.ADDONS)}

    async def all_ready() -> bool:
        addons = (await get_cluster()).get("addons") or ()
        for a in addons:
            if a.get("phase") == "Failed":
                raise RuntimeError(f"add-on {a['name']} failed: {a.get('lastError')}")
        return {a["name"] for a in addons if a.get("phase") == "Ready"} == set(orders)

    async def recorded() -> list[str]:
        events = (await workload.list(r.EVENT, "outpost-system")).items
        ready = sorted((e for e in events if e.get("reason") == "AddonReady"),
                       key=lambda e: int(e["metadata"]["resourceVersion"]))
        names = [str(e["message"]).split()[1] for e in ready]
        return names if set(names) >= set(orders) else []

    await _poll(all_ready)
    ready = list(dict.fromkeys(await _poll(recorded)))
    for name in ready:
        say(f"  add-on {name} (order {orders[name]}) Ready: "
            f"{await _installed(workload, name)}")
    seen = [orders[n] for n in ready]
    if seen != sorted(seen):
        raise RuntimeError(f"add-ons became Ready out of order: {', '.join(ready)}")
    return ", ".join(f"{n} (order {orders[n]})" for n in ready) + " Ready, in that order"


async def _installed(workload: ApiKubeClient, addon: str) -> str:
    """What the agent's inventory says an add-on installed, by kind."""
    import json

    cm = await _get_in(workload, r.CONFIG_MAP, f"outpost-addon-{addon}", "outpost-system")
    if cm is None:
        return "(no inventory in the cluster yet)"
    entries = json.loads(cm["data"]["inventory.json"]).get("entries") or ()
    kinds: dict[str, list[str]] = {}
    for e in sorted(entries, key=lambda e: int(e.get("stage", 0))):  # in the order applied
        kinds.setdefault(e["kind"], []).append(e["name"])
    return "; ".join(f"{k} {', '.join(v)}" for k, v in kinds.items())


async def _true(value: bool) -> bool:
    return value


async def _phase(get: Callable[[], Awaitable[dict[str, Any]]], phase: str) -> dict[str, Any]:
    from mgmt_gateway.state import PHASES

    rec = await get()
    if rec.get("phase") == "Failed":
        raise RuntimeError(f"cluster failed: {rec.get('failedReason')}")
    current = rec.get("phase")
    if current in PHASES and PHASES.index(current) >= PHASES.index(phase):
        return rec
    return {}


def _ts(value: Any) -> float | None:
    from datetime import datetime

    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def _get(kube: ApiKubeClient, res: Any, name: str) -> dict[str, Any] | None:
    return await _get_in(kube, res, name, NS)


async def _get_in(kube: ApiKubeClient, res: Any, name: str, ns: str) -> dict[str, Any] | None:
    from agent.kube import NotFound

    try:
        return await kube.get(res, name, ns)
    except NotFound:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="outpost-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", type=Path, default=None,
                   help="keep the testbed's files here (default: a temporary directory)")
    p.add_argument("--step-delay", type=float, default=0.25,
                   help="seconds per simulated machine phase (default: 0.25)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds each step may take before it counts as failed")
    p.add_argument("--api", choices=BACKENDS, default="emulated",
                   help="emulated: the in-process API servers (no Go needed, up in a second); "
                        "real: etcd, kube-apiserver, controller manager and scheduler per "
                        "cluster, built by `make controlplane` (default: emulated)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the components' logs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(name)s %(levelname)s %(message)s")
    try:
        if args.state_dir is not None:
            return asyncio.run(run(args.state_dir.resolve(), args.step_delay, args.timeout,
                                   api=args.api))
        with tempfile.TemporaryDirectory(prefix="outpost-demo-") as tmp:
            return asyncio.run(run(Path(tmp), args.step_delay, args.timeout, api=args.api))
    except ControlPlaneError as e:
        print(f"outpost-demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
