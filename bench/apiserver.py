"""The emulated API's floor: request throughput for create/patch/get and watch delivery latency.

Later benchmarks (spec->applied latency, pivot time) are read against these numbers, measured
with the same client (kubernetes_asyncio over HTTP) the product uses.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from kubernetes_asyncio import client, watch

from testbed.apiserver import ApiServer

N = 500


def _cm(i: int) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"b{i}", labels={"b": "1"}),
                              data={"k": str(i)})


async def _rate(label: str, n: int, fn: object) -> None:
    start = time.perf_counter()
    for i in range(n):
        await fn(i)  # type: ignore[operator]
    dt = time.perf_counter() - start
    print(f"  {label:<28} {n / dt:8.0f} req/s   ({dt / n * 1e3:.2f} ms/req, n={n})")


async def main() -> None:
    server = ApiServer("bench")
    await server.start()
    cfg = client.Configuration()
    cfg.host = server.url
    try:
        async with client.ApiClient(cfg) as api:
            core = client.CoreV1Api(api)

            async def create(i: int) -> None:
                await core.create_namespaced_config_map("default", _cm(i))

            async def patch(i: int) -> None:
                await core.patch_namespaced_config_map(
                    f"b{i}", "default", {"data": {"k": f"p{i}"}},
                    _content_type="application/merge-patch+json")

            async def get(i: int) -> None:
                await core.read_namespaced_config_map(f"b{i}", "default")

            await _rate("create (ConfigMap)", N, create)
            await _rate("patch (merge-patch)", N, patch)
            await _rate("get", N, get)
            await _watch_latency(core)
            print(f"  objects stored: {server.store.count('configmaps')}, "
                  f"resourceVersion: {server.store.rv}")
    finally:
        await server.stop()


async def _watch_latency(core: client.CoreV1Api, n: int = 200) -> None:
    """Time from a write's response to its event reaching a kubernetes_asyncio Watch."""
    rv = (await core.list_namespaced_config_map("default", limit=1)).metadata.resource_version
    w = watch.Watch()
    seen: dict[str, float] = {}
    got = asyncio.Event()

    async def consume() -> None:
        async for ev in w.stream(core.list_namespaced_config_map, "default",
                                 resource_version=rv, label_selector="lat=1"):
            seen[ev["raw_object"]["metadata"]["name"]] = time.perf_counter()
            got.set()

    task = asyncio.create_task(consume())
    lat = []
    for i in range(n):
        got.clear()
        name = f"lat{i}"
        await core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, labels={"lat": "1"})))
        t0 = time.perf_counter()
        while name not in seen:
            await got.wait()
            got.clear()
        lat.append((seen[name] - t0) * 1e3)
    task.cancel()
    await w.close()
    lat.sort()
    p99 = lat[int(len(lat) * 0.99) - 1]
    print(f"  watch delivery after write   p50 {statistics.median(lat):.2f} ms   "
          f"p99 {p99:.2f} ms   (n={n})")
