"""Agent figures: spec->applied latency against the raw floor, API calls per converged resync,
and the idle agent's memory and CPU.

The floor is measured in the same run: one KV put reaching a KV watcher, plus one merge PATCH on
the emulated API — the least any agent must spend to turn a published spec into a write.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from kubernetes_asyncio import client

from agent.spec import sign
from agent.spec.wire import SPECS_BUCKET
from testbed.apiserver.store import Event
from testbed.site import CLUSTER, NS, Site, make_spec

from .procs import proc_stats, start_agent, stop_agent

REVISIONS = 200


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(p * len(ordered)) - 1)]


def _settle_control_plane(site: Site) -> None:
    """No simulated machines here: mark the control plane settled so only the agent is timed."""
    rt = site.api.registry.type_for("controlplane.cluster.x-k8s.io", "v1beta2",
                                    "kubeadmcontrolplanes")
    kcp = site.api.registry.get(rt, NS, "edge-1-control-plane")
    kcp["status"] = {"observedGeneration": kcp["metadata"]["generation"], "replicas": 1,
                     "readyReplicas": 1, "upToDateReplicas": 1, "version": "v1.35.2"}
    site.api.registry.update(rt, NS, "edge-1-control-plane", kcp, subresource="status",
                             manager="bench")


async def _floor(site: Site, n: int = 100) -> tuple[float, float]:
    nc = await nats.connect(site.nats.url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="bench-floor")
    got: asyncio.Queue[float] = asyncio.Queue()
    watcher = await kv.watch("k")

    async def pump() -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                got.put_nowait(time.perf_counter())

    task = asyncio.create_task(pump())
    kv_lat = []
    for i in range(n):
        t0 = time.perf_counter()
        await kv.put("k", str(i).encode())
        kv_lat.append((await got.get()) - t0)
    task.cancel()
    await nc.close()
    cfg = client.Configuration()
    cfg.host = site.api.url
    patch_lat = []
    async with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_config_map(NS, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="floor")))
        for i in range(n):
            t0 = time.perf_counter()
            await core.patch_namespaced_config_map("floor", NS, {"data": {"i": str(i)}},
                                                   _content_type="application/merge-patch+json")
            patch_lat.append(time.perf_counter() - t0)
    return statistics.median(kv_lat), statistics.median(patch_lat)


async def _latency(site: Site) -> list[float]:
    written: dict[int, float] = {}
    wrote = asyncio.Event()

    def on_event(ev: Event) -> None:
        if ev.rkey.startswith("machinedeployments.") and ev.type in ("ADDED", "MODIFIED"):
            written[int(ev.obj["spec"]["replicas"])] = time.perf_counter()
            wrote.set()

    async def wait_for(replicas: int) -> None:
        while replicas not in written:
            wrote.clear()
            await wrote.wait()

    site.api.store.subscribe(on_event)
    agent = await site.start_agent(resync_seconds=30.0)
    await site.publish(make_spec(revision=1, workers={"bench": 1}))
    await wait_for(1)
    nc = await nats.connect(site.nats.url)
    kv = await nc.jetstream().key_value(SPECS_BUCKET)
    lat = []
    for rev in range(2, REVISIONS + 2):
        replicas = rev  # every revision a new value, so each needs exactly one write
        raw = sign(make_spec(revision=rev, workers={"bench": replicas}), site.key)
        await asyncio.sleep(0.02)  # let the previous change's follow-up pass finish
        t0 = time.perf_counter()
        await kv.put(CLUSTER, raw)
        await wait_for(replicas)
        lat.append(written[replicas] - t0)
    await nc.close()
    await agent.shutdown()
    return lat


async def _resync_cost(site: Site) -> tuple[float, float]:
    agent = await site.start_agent("resync", resync_seconds=3600.0)
    await site.publish(make_spec(revision=REVISIONS + 10, workers={"bench": 3}))
    await asyncio.sleep(1.0)
    kube: Any = agent.agent.kube
    writes = ("create", "apply", "patch", "delete")
    before_w = sum(kube.requests[v] for v in writes)
    before_r = kube.requests["get"] + kube.requests["list"]
    passes = 20
    for _ in range(passes):
        await agent.agent.controller.reconcile_once()
    w = (sum(kube.requests[v] for v in writes) - before_w) / passes
    r = (kube.requests["get"] + kube.requests["list"] - before_r) / passes
    await agent.shutdown()
    return w, r


async def _idle(site: Site, seconds: float = 10.0) -> tuple[float, float]:
    proc = await start_agent(site, "idle")
    try:
        await asyncio.sleep(5.0)  # start, take the lease, converge
        rss0, _, cpu0 = proc_stats(proc.pid)
        await asyncio.sleep(seconds)
        rss1, _, cpu1 = proc_stats(proc.pid)
        return max(rss0, rss1), (cpu1 - cpu0) / seconds * 100
    finally:
        await stop_agent(proc)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = await Site.create(Path(tmp), simulate=False)
        try:
            _settle_control_plane(site)
            kv_floor, patch_floor = await _floor(site)
            floor = kv_floor + patch_floor
            lat = await _latency(site)
            p50, p99 = statistics.median(lat), _pct(lat, 0.99)
            print(f"  raw floor (KV put->watch {kv_floor * 1e3:.2f} ms + PATCH "
                  f"{patch_floor * 1e3:.2f} ms)   {floor * 1e3:.2f} ms")
            print(f"  spec->applied over {len(lat)} revisions   p50 {p50 * 1e3:.2f} ms   "
                  f"p99 {p99 * 1e3:.2f} ms   (p50 = {p50 / floor:.1f}x floor; target <= 5x)")
            writes, reads = await _resync_cost(site)
            print(f"  converged resync: {writes:.1f} API writes (target 0), {reads:.1f} reads "
                  "per pass")
            rss, cpu = await _idle(site)
            print(f"  idle converged agent: RSS {rss:.1f} MiB (target <= 40), CPU {cpu:.2f}% "
                  "of one core")
        finally:
            await site.close()
