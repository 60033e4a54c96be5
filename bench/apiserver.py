"""Both API backends side by side: start-up time, request latency for create/patch/get, and
watch delivery, measured with the client the product uses (kubernetes_asyncio over HTTP).

Each backend's floor is `GET /version` on the same connection: the cost of a round trip that
does no storage work. The real backend is measured through the fault proxy (what the tests
use) and directly, so the proxy's share is visible.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubernetes_asyncio import client, watch

from testbed.backends import BACKENDS, Backend, KubeApi, make_api
from testbed.controlplane.launcher import ControlPlaneError

N = 300


def _cm(i: int, prefix: str = "b") -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"{prefix}{i}",
                                                           labels={"b": "1"}),
                              data={"k": str(i)})


async def _latency(n: int, fn: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await fn(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _row(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[max(0, int(len(ms) * 0.99) - 1)]
    return (f"    {label:<24} p50 {statistics.median(ms):7.2f} ms   p99 {p99:7.2f} ms   "
            f"(n={len(ms)})")


async def _measure(cfg: client.Configuration, prefix: str) -> list[str]:
    rows = []
    async with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        version = client.VersionApi(api)
        await version.get_code()  # connection set up before anything is timed
        rows.append(_row("GET /version (floor)", await _latency(N, lambda i: version.get_code())))

        async def create(i: int) -> None:
            await core.create_namespaced_config_map("default", _cm(i, prefix))

        async def patch(i: int) -> None:
            await core.patch_namespaced_config_map(
                f"{prefix}{i}", "default", {"data": {"k": f"p{i}"}},
                _content_type="application/merge-patch+json")

        async def get(i: int) -> None:
            await core.read_namespaced_config_map(f"{prefix}{i}", "default")

        rows.append(_row("create (ConfigMap)", await _latency(N, create)))
        rows.append(_row("patch (merge-patch)", await _latency(N, patch)))
        rows.append(_row("get", await _latency(N, get)))
        rows.append(_row("watch delivery", await _watch_latency(core, prefix)))
    return rows


async def _watch_latency(core: client.CoreV1Api, prefix: str, n: int = 100) -> list[float]:
    """From sending a write to its event reaching a kubernetes_asyncio Watch."""
    rv = (await core.list_namespaced_config_map("default", limit=1)).metadata.resource_version
    w = watch.Watch()
    seen: dict[str, float] = {}
    got = asyncio.Event()
    label = f"lat-{prefix}"

    async def consume() -> None:
        async for ev in w.stream(core.list_namespaced_config_map, "default",
                                 resource_version=rv, label_selector=f"{label}=1"):
            seen[ev["raw_object"]["metadata"]["name"]] = time.perf_counter()
            got.set()

    task = asyncio.create_task(consume())
    lat = []
    try:
        for i in range(n):
            name = f"{label}{i}"
            t0 = time.perf_counter()
            await core.create_namespaced_config_map("default", client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=name, labels={label: "1"})))
            while name not in seen:
                got.clear()
                await got.wait()
            lat.append((seen[name] - t0) * 1e3)
    finally:
        task.cancel()
        await w.close()
    return lat


async def _backend(backend: Backend, root: Path) -> None:
    api: KubeApi = make_api(backend, "bench", root / backend)
    began = time.perf_counter()
    try:
        await api.start()
    except ControlPlaneError as e:
        print(f"  {backend}: not measured: {e}")
        return
    try:
        print(f"  {backend}: started in {(time.perf_counter() - began) * 1e3:.0f} ms")
        for row in await _measure(api.client_configuration(), "p"):
            print(row)
        direct = getattr(api, "direct_url", None)
        if direct is not None:
            cfg = api.client_configuration()
            cfg.host = direct
            print(f"  {backend}, bypassing the fault proxy:")
            for row in await _measure(cfg, "d"):
                print(row)
    finally:
        await api.stop()


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="outpost-bench-") as tmp:
        for backend in BACKENDS:
            await _backend(backend, Path(tmp))
