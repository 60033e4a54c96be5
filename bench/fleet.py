"""Management-plane figures at fleet scale: the real `outpost-gateway` process (default settings,
leader election on) over 100, 1,000 and 10,000 OutpostClusters in the emulated management API
and a real nats-server.

The fleet is written straight into the API's store as it stands after a migration: every cluster
Managed (its agent runs on site), nothing published yet. Then, per size:

- first start: time until every cluster's spec is signed and in the KV bucket, and what it cost
  the API (counted on the server by User-Agent and verb, as an audit log would);
- steady state: the API calls of a quiet fleet over a window (the target is ~0: nothing lists on
  a timer; the Lease renewal is the one fixed cost);
- edits: `spec.workers` of random clusters patched at a steady rate; time from the PATCH's
  answer until the new signed revision is on NATS, p50 and p99, next to a floor measured in the
  same run (one API PATCH round trip + one NATS publish delivered to a subscriber);
- restart: a new gateway process over the converged fleet: time until every cluster had a
  reconcile pass, and its API calls (the target: lists and watches only, zero writes);
- the gateway's resident memory (VmRSS now, VmHWM its peak).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from agent.kube import ApiKubeClient
from agent.spec.wire import SPECS_BUCKET, kv_subject
from mgmt_gateway.clusters import FINALIZER, OUTPOST_CLUSTER
from testbed.apiserver import ApiServer
from testbed.crds import gateway_crd_files
from testbed.demo import request
from testbed.gateway import GatewayProcess
from testbed.kubeconfig import write_kubeconfig
from testbed.natsd import NatsServer

SIZES = (100, 1_000, 10_000)
EDITS = 200
# Edits per second. The emulated API shares this process; at 10,000 clusters its full garbage
# collections take 0.3-0.9 s (seen with gc.callbacks), so at 20/s its pauses, not the gateway,
# make the tail (p99 ~250 ms); at 5/s the tail is the gateway's.
EDIT_RATE = float(os.environ.get("OUTPOST_BENCH_EDIT_RATE", "5"))
QUIET = 30.0  # seconds of steady state observed
NS = "fleet"
GATEWAY = "outpost-gateway"
BENCH = "outpost-bench"
_OK = re.compile(r'^outpost_gateway_reconciles_total\{result="ok"\} (\S+)$', re.M)


def _name(i: int) -> str:
    return f"site-{i:05d}"


def _seed(server: ApiServer, n: int) -> None:
    """N Managed OutpostClusters with the gateway's finalizer, written into the store."""
    reg = server.registry
    rt = reg.type_for(OUTPOST_CLUSTER.group, OUTPOST_CLUSTER.version, OUTPOST_CLUSTER.plural)
    ns = reg.type_for("", "v1", "namespaces")
    reg.create(ns, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
               manager=BENCH)
    spec = {k: v for k, v in request(3, 2).items() if k not in ("name", "namespace")}
    at = "2026-01-01T00:00:00Z"
    for i in range(n):
        name = _name(i)
        obj = reg.create(rt, NS, {
            "apiVersion": OUTPOST_CLUSTER.api_version, "kind": OUTPOST_CLUSTER.kind,
            "metadata": {"name": name, "namespace": NS, "finalizers": [FINALIZER]},
            "spec": spec}, manager=BENCH)
        obj["status"] = {"phase": "Managed", "steps": [
            {"phase": "Managed", "startedAt": at, "finishedAt": at, "detail": "adopted"}]}
        reg.update(rt, NS, name, obj, subresource="status", manager=BENCH)


class Published:
    """Every spec the gateway puts into the KV bucket, as a plain subscriber sees it."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}  # key -> when its latest value arrived
        self.count = 0
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.at[msg.subject.rsplit(".", 1)[1]] = time.perf_counter()
        self.count += 1
        self.changed.set()


def _calls(server: ApiServer, client: str, since: Counter[tuple[str, str, str]]
           ) -> Counter[tuple[str, str]]:
    now = server.calls.copy()
    now.subtract(since)
    out: Counter[tuple[str, str]] = Counter()
    for (who, verb, res), n in now.items():
        if who == client and n > 0:
            out[(verb, res)] += n
    return out


def _describe(calls: Counter[tuple[str, str]]) -> str:
    if not calls:
        return "none"
    return ", ".join(f"{verb} {res} {n}" for (verb, res), n in sorted(
        calls.items(), key=lambda kv: (-kv[1], kv[0])))


def _writes(calls: Counter[tuple[str, str]], *, leases: bool = False) -> int:
    return sum(n for (verb, res), n in calls.items()
               if verb in ("create", "update", "patch", "delete")
               and (leases or res != "leases"))


async def _reconciled(port: int | None, http: aiohttp.ClientSession) -> float:
    """The gateway's count of successful reconcile passes, from its /metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        m = _OK.search(await resp.text())
    return float(m.group(1)) if m else 0.0


async def _until(ready: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f}s")
        await asyncio.sleep(0.1)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _floor(nc: Client, kube: ApiKubeClient, samples: int = 100) -> tuple[float, float]:
    """p50 of one API PATCH round trip and of one NATS publish reaching a subscriber (ms)."""
    got = asyncio.Event()

    async def arrived(_msg: Msg) -> None:
        got.set()

    sub = await nc.subscribe("bench.floor", cb=arrived)
    nats_ms: list[float] = []
    for _ in range(samples):
        got.clear()
        t0 = time.perf_counter()
        await nc.publish("bench.floor", b"x" * 512)
        await got.wait()
        nats_ms.append((time.perf_counter() - t0) * 1e3)
    await sub.unsubscribe()
    api_ms: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        await kube.patch(OUTPOST_CLUSTER, _name(0), {"metadata": {"annotations": {
            "bench/floor": str(i)}}}, NS, field_manager=BENCH)
        api_ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(api_ms), statistics.median(nats_ms)


async def _edits(n: int, kube: ApiKubeClient, published: Published) -> list[float]:
    """EDITS patches of spec.workers at EDIT_RATE; ms from each PATCH's answer to its spec on
    NATS."""
    rng = random.Random(n)
    names = rng.sample([_name(i) for i in range(n)], min(EDITS, n))
    done: list[float] = []

    async def one(name: str, replicas: int) -> None:
        spec = request(3, replicas)
        await kube.patch(OUTPOST_CLUSTER, name, {"spec": {"workers": spec["workers"]}}, NS,
                         field_manager=BENCH)
        sent = time.perf_counter()
        while published.at.get(name, 0.0) < sent:
            published.changed.clear()
            try:
                await asyncio.wait_for(published.changed.wait(), 120)
            except TimeoutError:
                raise RuntimeError(f"{name}: edit not published after 120s") from None
        done.append((published.at[name] - sent) * 1e3)

    tasks = []
    for i, name in enumerate(names):
        tasks.append(asyncio.create_task(one(name, 3 + i % 5)))
        await asyncio.sleep(1 / EDIT_RATE)
    await asyncio.gather(*tasks)
    return done


async def _size(n: int, root: Path) -> float:
    """The figures for a fleet of `n`; returns the gateway's resident MiB after the edits."""
    async with contextlib.AsyncExitStack() as stack:
        # Unwound in reverse: the gateway stops first, the API server last.
        server = ApiServer("management")
        await server.start()
        stack.push_async_callback(server.stop)
        server.load_crds(gateway_crd_files())
        t0 = time.perf_counter()
        _seed(server, n)
        seeded = time.perf_counter() - t0
        kubeconfig = write_kubeconfig(root / "management.kubeconfig", "management", server.url)
        natsd = await stack.enter_async_context(NatsServer(root / "nats"))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        nc = await nats.connect(natsd.url)
        stack.push_async_callback(nc.close)
        published = Published()
        await nc.subscribe(kv_subject(SPECS_BUCKET, "*"), cb=published.on_msg)
        kube = await ApiKubeClient.from_kubeconfig(kubeconfig, user_agent=BENCH)
        stack.push_async_callback(kube.close)
        env = {"OUTPOST_GATEWAY_KUBECONFIG": str(kubeconfig),
               "OUTPOST_GATEWAY_NATS_SERVERS": natsd.url,
               "OUTPOST_GATEWAY_SIGNING_KEY_FILE": str(root / "signing-key.pem"),
               "OUTPOST_GATEWAY_HTTP_HOST": "127.0.0.1", "OUTPOST_GATEWAY_HTTP_PORT": "0"}
        gateways: list[GatewayProcess] = []

        async def stop_gateways() -> None:
            for g in gateways:
                await g.stop()

        stack.push_async_callback(stop_gateways)
        print(f"  {n} clusters (seeded in {seeded:.1f}s)")

        # first start: every cluster published
        before = server.calls.copy()
        gateway = GatewayProcess(env)
        gateways.append(gateway)
        t0 = time.perf_counter()
        await gateway.start()

        async def all_published() -> bool:
            return len(published.at) >= n

        await _until(all_published, 60 + n * 0.05, "first publication of the fleet")
        first = time.perf_counter() - t0
        await asyncio.sleep(2)  # the status writes that follow the last publish
        calls = _calls(server, GATEWAY, before)
        print(f"    first start: all {n} specs on NATS in {first:.1f}s "
              f"({n / first:.0f} clusters/s); {sum(calls.values())} API calls, "
              f"{_writes(calls) / n:.1f} writes per cluster: {_describe(calls)}")

        # steady state
        before = server.calls.copy()
        published_before = published.count
        await asyncio.sleep(QUIET)
        calls = _calls(server, GATEWAY, before)
        print(f"    steady state, {QUIET:.0f}s: {sum(calls.values())} API calls "
              f"({_describe(calls)}), {published.count - published_before} publishes; "
              "target ~0 but the Lease")

        # edits
        api_ms, nats_ms = await _floor(nc, kube)
        before = server.calls.copy()
        lat = await _edits(n, kube, published)
        calls = _calls(server, GATEWAY, before)
        floor = api_ms + nats_ms
        p50, p99 = _pct(lat, 50), _pct(lat, 99)
        print(f"    edit -> signed spec on NATS ({len(lat)} edits at {EDIT_RATE:.0f}/s): "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(lat):.0f} ms; floor "
              f"{floor:.1f} ms (API PATCH {api_ms:.1f} + NATS delivery {nats_ms:.2f}): "
              f"p50 {p50 / floor:.0f}x, p99 {p99 / floor:.0f}x; "
              f"{_writes(calls) / max(1, len(lat)):.1f} gateway writes per edit")
        after_edits, hwm = gateway.memory_mib()
        print(f"    gateway memory: {after_edits:.0f} MiB resident, peak {hwm:.0f} MiB")

        # restart over the converged fleet
        await gateway.stop()
        await asyncio.sleep(1)
        before = server.calls.copy()
        published_before = published.count
        gateway = GatewayProcess(env)
        gateways.append(gateway)
        t0 = time.perf_counter()
        await gateway.start()
        g = gateway

        async def all_reconciled() -> bool:
            return await _reconciled(g.port, http) >= n

        # A fresh process has no lease; the old holder released it on SIGTERM.
        await _until(all_reconciled, 60 + n * 0.05, "every cluster reconciled after restart")
        resync = time.perf_counter() - t0
        await asyncio.sleep(2)
        calls = _calls(server, GATEWAY, before)
        rss, hwm = gateway.memory_mib()
        print(f"    restart: every cluster reconciled in {resync:.1f}s; {sum(calls.values())}"
              f" API calls, {_writes(calls)} writes (target 0) besides the Lease, "
              f"{published.count - published_before} publishes: {_describe(calls)}; "
              f"{rss:.0f} MiB resident")
        return after_edits


async def main(sizes: tuple[int, ...] = SIZES) -> None:
    print(f"  the real gateway process, default settings; API calls counted on the server "
          f"(User-Agent {GATEWAY}); python {sys.version.split()[0]}")
    rss: dict[int, float] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rss[n] = await _size(n, Path(tmp))
    if len(rss) > 1:
        lo, hi = min(rss), max(rss)
        print(f"  gateway memory per added cluster: "
              f"{(rss[hi] - rss[lo]) * 1024 / (hi - lo):.1f} KiB ({lo} -> {hi} clusters)")


def _env_sizes() -> tuple[int, ...]:
    raw = os.environ.get("OUTPOST_BENCH_FLEET_SIZES")
    return tuple(int(s) for s in raw.split(",")) if raw else SIZES


if __name__ == "__main__":
    asyncio.run(main(_env_sizes()))
