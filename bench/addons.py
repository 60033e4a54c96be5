"""Add-on figures: the agent's add-on controller over a 500-object, ~5 MB profile on the emulated
API and a real nats-server.

- bundle fetch: the agent's consumer-free chunked fetch of the bundle from the Object Store,
  next to nats-py's own (consumer-based) get of the same object;
- apply: time until all 500 objects are applied and healthy, next to 500 bare server-side
  applies of the same objects by one client (the floor);
- writes per converged resync (target 0);
- drift correction: a deleted ConfigMap back, p50 and p99 over 50 deletions;
- memory: the process's resident set before the controller starts and with the profile
  installed; then the real agent as its own process (`python -m agent.daemon`, as in its
  Deployment), converged on a spec without add-ons and again with this profile installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from nats.js.api import KeyValueConfig, ObjectStoreConfig

from agent.intake.bundles import BundleFetcher, ContentStore
from agent.kube import ApiKubeClient, NotFound
from agent.kube import resources as r
from agent.reconcile.addons import AddonController
from agent.reconcile.inventory import InventoryStore
from agent.reconcile.mapper import RestMapper
from agent.spec import ClusterSpec
from agent.spec.addons import Addon, Bundle, BundleRef, digest_of
from agent.spec.wire import BUNDLES_BUCKET, STATUS_BUCKET
from testbed.apiserver import ApiServer
from testbed.kubeconfig import write_kubeconfig
from testbed.natsd import NatsServer
from testbed.site import CLUSTER, Site, spec_dict

from .procs import proc_stats, start_agent, stop_agent

NS = "bench-addon"
OBJECTS = 500
DRIFTS = 50


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _objects(ns: str) -> list[dict[str, Any]]:
    rng = random.Random(7)
    out: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": ns}}]
    for i in range(OBJECTS - 1):
        kind = ("ConfigMap", "ConfigMap", "Secret", "ServiceAccount", "Service")[i % 5]
        meta = {"name": f"obj-{i:03d}", "namespace": ns}
        blob = "".join(rng.choices("abcdefghijklmnop\n", k=21_000))
        if kind == "ConfigMap":
            out.append({"apiVersion": "v1", "kind": kind, "metadata": meta,
                        "data": {"dashboard.json": blob}})
        elif kind == "Secret":
            out.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "type": "Opaque",
                        "data": {"key": base64.b64encode(blob[:4000].encode()).decode()}})
        elif kind == "ServiceAccount":
            out.append({"apiVersion": "v1", "kind": kind, "metadata": meta})
        else:
            out.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": {
                "ports": [{"port": 80 + i % 100, "protocol": "TCP"}],
                "selector": {"app": f"a{i}"}}})
    return out


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f}s")
        await asyncio.sleep(0.01)


async def _agent_process(bundle: Bundle, data: bytes, ref: BundleRef) -> None:
    """The agent process's resident memory, converged without add-ons and with the profile."""
    with tempfile.TemporaryDirectory() as tmp:
        site = await Site.create(Path(tmp))
        nc = await site.nats_client()
        try:
            await site.publish(ClusterSpec.model_validate(spec_dict(revision=1)))
            js = nc.jetstream()
            store = await js.create_object_store(BUNDLES_BUCKET)
            await store.put(ref.digest, data)
            status = await js.create_key_value(KeyValueConfig(bucket=STATUS_BUCKET))

            async def reported(revision: int, addons: int) -> bool:
                try:
                    st = json.loads((await status.get(CLUSTER)).value or b"{}")
                except nats.js.errors.KeyNotFoundError:
                    return False
                ready = [a for a in st.get("addons") or () if a.get("phase") == "Ready"]
                return bool(st.get("appliedRevision") == revision and len(ready) == addons)

            proc = await start_agent(site, "agent")
            try:
                await _until(lambda: reported(1, 0), 120, "revision 1 applied")
                await asyncio.sleep(5)  # idle: a few resyncs
                rss0, _, _ = proc_stats(proc.pid)
                addon = Addon(name="big", version="1", bundle=ref)
                t0 = time.perf_counter()
                await site.publish(ClusterSpec.model_validate(spec_dict(revision=2, profile={
                    "name": "bench", "version": "1",
                    "addons": [addon.model_dump(by_alias=True, mode="json")]})))
                await _until(lambda: reported(2, 1), 600, "the profile Ready")
                ready = time.perf_counter() - t0
                await asyncio.sleep(5)
                rss1, hwm, _ = proc_stats(proc.pid)
            finally:
                await stop_agent(proc)
            print(f"  agent process (python -m agent.daemon): {rss0:.0f} MiB resident converged "
                  f"without add-ons; {rss1:.0f} MiB with the {len(data) / 2**20:.1f} MiB, "
                  f"{len(bundle.objects)}-object profile installed (peak {hwm:.0f} MiB; "
                  f"fetched, applied and Ready in {ready:.1f}s)")
        finally:
            await nc.close()
            await site.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = ApiServer("workload")
        await server.start()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(server.stop)
            natsd = await stack.enter_async_context(NatsServer(root / "nats"))
            nc = await nats.connect(natsd.url)
            stack.push_async_callback(nc.close)
            kube = await ApiKubeClient.from_kubeconfig(
                write_kubeconfig(root / "kubeconfig", "workload", server.url))
            stack.push_async_callback(kube.close)
            await kube.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": "outpost-system"}},
                             field_manager="bench")

            bundle = Bundle(name="big", version="1", objects=tuple(_objects(NS)))
            data = bundle.encode()
            ref = BundleRef(digest=digest_of(data), size=len(data), objects=OBJECTS)
            js = nc.jetstream()
            objects = await js.create_object_store(BUNDLES_BUCKET, ObjectStoreConfig(
                bucket=BUNDLES_BUCKET))
            await objects.put(ref.digest, data)
            t0 = time.perf_counter()
            await objects.get(ref.digest)
            floor_fetch = time.perf_counter() - t0
            store = ContentStore(root / "bundles")
            fetcher = BundleFetcher(lambda: nc, store)
            t0 = time.perf_counter()
            await fetcher.fetch(ref)
            fetch = time.perf_counter() - t0
            mib = len(data) / 2**20
            print(f"  bundle of {OBJECTS} objects, {mib:.1f} MiB: fetched in {fetch:.2f}s "
                  f"({mib / fetch:.0f} MiB/s, chunk by chunk, no consumer); nats-py's own get "
                  f"{floor_fetch:.2f}s ({mib / floor_fetch:.0f} MiB/s)")

            # floor: the same objects applied one by one by a bare client
            floor_objs = _objects(NS + "-floor")
            mapper = RestMapper(kube)
            kinds = {o["kind"]: await mapper.resource(o) for o in floor_objs}
            t0 = time.perf_counter()
            for obj in floor_objs:
                await kube.apply(kinds[obj["kind"]], obj, field_manager="bench")
            floor_apply = time.perf_counter() - t0

            addon = Addon(name="big", version="1", bundle=ref)
            spec = ClusterSpec.model_validate(spec_dict(profile={
                "name": "bench", "version": "1",
                "addons": [addon.model_dump(by_alias=True, mode="json")]}))
            rss0 = _rss_mib()
            c = AddonController(kube, lambda: spec, store,
                                InventoryStore(root / "inventory", kube, "outpost-system"),
                                fetcher=fetcher, resync=3600, retry=0.2)
            tasks = [asyncio.create_task(c.worker()), asyncio.create_task(c.worker()),
                     asyncio.create_task(c.watches.run())]
            try:
                t0 = time.perf_counter()
                c.trigger()

                async def ready() -> bool:
                    st = c.status.get("big")
                    return st is not None and st.phase == "Ready"

                await _until(ready, 300, "the profile Ready")
                applied = time.perf_counter() - t0
                print(f"  apply: {OBJECTS} objects applied and healthy in {applied:.2f}s; "
                      f"floor ({OBJECTS} bare server-side applies) {floor_apply:.2f}s: "
                      f"{applied / floor_apply:.1f}x")
                writes = c.writes
                for _ in range(3):
                    await c.reconcile("big")
                print(f"  converged resync: {(c.writes - writes) / 3:.1f} writes per pass "
                      "(target 0)")
                rng = random.Random(1)
                lat: list[float] = []
                names = [o["metadata"]["name"] for o in bundle.objects
                         if o["kind"] == "ConfigMap"]
                for name in rng.sample(names, DRIFTS):
                    await kube.delete(r.CONFIG_MAP, name, NS)
                    t0 = time.perf_counter()

                    async def back(n: str = name) -> bool:
                        try:
                            await kube.get(r.CONFIG_MAP, n, NS)
                            return True
                        except NotFound:
                            return False

                    await _until(back, 30, f"ConfigMap {name} restored")
                    lat.append((time.perf_counter() - t0) * 1e3)
                print(f"  drift correction (a deleted ConfigMap back, {DRIFTS} times): "
                      f"p50 {statistics.median(lat):.0f} ms, p99 {_pct(lat, 99):.0f} ms")
                print(f"  memory: {rss0:.0f} MiB before the controller, {_rss_mib():.0f} MiB "
                      f"with the {mib:.1f} MiB profile installed (the emulated API and "
                      "NATS client share the process)")
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    await _agent_process(bundle, data, ref)
