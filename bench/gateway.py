"""Gateway figures: pivot time and API calls against the size of the cluster's object graph, and
the time from a cluster request to Managed on the testbed, phase by phase.

Pivot: one small cluster per size is brought up by the simulated Cluster API in an emulated
management API; the simulator is then stopped (the graph holds still) and synthetic members are
written straight into the store (ConfigMaps and Secrets owned by the Cluster, DevMachineTemplates
labelled with its name) until the graph has the wanted size. Each is then moved into a second
emulated API over HTTP, and the calls both clients made are counted by verb.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent.kube import ApiKubeClient, Obj, Resource
from agent.kube import resources as r
from mgmt_gateway.daemon import Gateway
from mgmt_gateway.pivot import MemoryJournal, discover, move
from mgmt_gateway.settings import GatewaySettings
from mgmt_gateway.state import PHASES, ClusterRecord
from testbed.apiserver import ApiServer
from testbed.capi import CapiSimulator, SimConfig
from testbed.crds import components_files, crd_files
from testbed.demo import AGENT_ENV, CLUSTER, TOKEN, request
from testbed.env import Testbed
from testbed.kubeconfig import write_kubeconfig

SIZES = (10, 100, 1000)
STEP_DELAYS = (0.02, 0.25)  # the second is the demo's default
V1 = "v1.35.2"
LABEL = "cluster.x-k8s.io/cluster-name"
INFRA = "infrastructure.cluster.x-k8s.io"
CP = "controlplane.cluster.x-k8s.io"
KUBELET = {"nodeRegistration": {"kubeletExtraArgs": [
    {"name": "eviction-hard", "value": "nodefs.available<0%"}]}}


# -- pivot -------------------------------------------------------------------------------------
def _ref(group: str, kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": group, "kind": kind, "name": name}


def _cluster_objects(name: str) -> list[tuple[Resource, Obj]]:
    """A dev-provider cluster with one control-plane replica and no workers."""
    return [
        (r.DEV_CLUSTER, {"metadata": {"name": name}, "spec": {"backend": {"inMemory": {}}}}),
        (r.DEV_MACHINE_TEMPLATE, {"metadata": {"name": f"{name}-cp"}, "spec": {
            "template": {"spec": {"backend": {"inMemory": {}}}}}}),
        (r.KUBEADM_CONTROL_PLANE, {"metadata": {"name": f"{name}-cp"}, "spec": {
            "replicas": 1, "version": V1,
            "machineTemplate": {"spec": {"infrastructureRef": _ref(
                INFRA, "DevMachineTemplate", f"{name}-cp")}},
            "kubeadmConfigSpec": {"initConfiguration": KUBELET, "joinConfiguration": KUBELET}}}),
        (r.CLUSTER, {"metadata": {"name": name}, "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
            "controlPlaneRef": _ref(CP, "KubeadmControlPlane", f"{name}-cp"),
            "infrastructureRef": _ref(INFRA, "DevCluster", name)}}),
    ]


async def _provisioned(src: ApiKubeClient, ns: str, name: str, timeout: float = 30.0) -> None:
    """Until the Cluster passes the move's preconditions (provisioned, control plane initialized,
    every Machine with a Node) and its kubeconfig Secret exists."""
    deadline = time.monotonic() + timeout
    while True:
        c = await src.get(r.CLUSTER, name, ns)
        init = (c.get("status") or {}).get("initialization") or {}
        machines = (await src.list(r.MACHINE, ns)).items
        secrets = {s["metadata"]["name"] for s in (await src.list(r.SECRET, ns)).items}
        if (init.get("infrastructureProvisioned") and init.get("controlPlaneInitialized")
                and machines and all((m.get("status") or {}).get("nodeRef") for m in machines)
                and f"{name}-kubeconfig" in secrets):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster {ns}/{name} not provisioned after {timeout:.0f}s")
        await asyncio.sleep(0.05)


def _grow(server: ApiServer, ns: str, cluster: Obj, extra: int) -> None:
    """Add `extra` graph members straight into the store: ConfigMaps and Secrets owned by the
    Cluster, and DevMachineTemplates labelled with its name, in turn."""
    reg = server.registry
    cm = reg.type_for("", "v1", "configmaps")
    secret = reg.type_for("", "v1", "secrets")
    dmt = reg.type_for(INFRA, "v1beta2", "devmachinetemplates")
    name = cluster["metadata"]["name"]
    owner = [{"apiVersion": cluster["apiVersion"], "kind": "Cluster", "name": name,
              "uid": cluster["metadata"]["uid"]}]
    for i in range(extra):
        meta: dict[str, Any] = {"name": f"{name}-extra-{i}", "namespace": ns}
        if i % 3 == 0:
            reg.create(cm, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                **meta, "ownerReferences": owner}, "data": {"i": str(i)}}, manager="bench")
        elif i % 3 == 1:
            reg.create(secret, ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {
                **meta, "ownerReferences": owner}, "type": "Opaque",
                "data": {"i": base64.b64encode(str(i).encode()).decode()}}, manager="bench")
        else:
            reg.create(dmt, ns, {"apiVersion": f"{INFRA}/v1beta2", "kind": "DevMachineTemplate",
                                 "metadata": {**meta, "labels": {LABEL: name}},
                                 "spec": {"template": {"spec": {"backend": {"inMemory": {}}}}}},
                       manager="bench")


def _verbs(calls: Counter[str]) -> str:
    return " ".join(f"{verb} {n}" for verb, n in sorted(calls.items()) if n)


async def _pivot(tmp: Path) -> None:
    source, target = ApiServer("management"), ApiServer("workload")
    sim: CapiSimulator | None = None
    clients: list[ApiKubeClient] = []
    try:
        for server in (source, target):
            await server.start()
            server.load_crds(crd_files())
        sim = CapiSimulator(source, config=SimConfig(step_delay=0.01, resync=10.0),
                            workload_api=lambda ns, name: target)
        await sim.start()
        src = await ApiKubeClient.from_kubeconfig(
            write_kubeconfig(tmp / "management.kubeconfig", "management", source.url))
        dst = await ApiKubeClient.from_kubeconfig(
            write_kubeconfig(tmp / "workload.kubeconfig", "workload", target.url))
        clients += [src, dst]
        names = [f"size-{n}" for n in SIZES]
        for name in names:
            await src.create(r.NAMESPACE, {"metadata": {"name": name}})
            for res, obj in _cluster_objects(name):
                obj["metadata"]["namespace"] = name
                await src.create(res, obj)
        t0 = time.perf_counter()
        await asyncio.gather(*(_provisioned(src, name, name) for name in names))
        print(f"  {len(names)} clusters provisioned by the simulated CAPI in "
              f"{time.perf_counter() - t0:.1f}s; simulator stopped, graphs grown in the store")
        await sim.stop()  # pause the controllers: the graphs hold still from here
        sim = None
        print(f"  {'objects':>7}  {'seconds':>7}  {'calls':>6}  {'calls/obj':>9}  "
              f"{'obj/s':>6}  calls by verb")
        points: list[tuple[int, int]] = []
        for size, name in zip(SIZES, names, strict=True):
            base = len((await discover(src, name, name)).nodes)
            cluster = await src.get(r.CLUSTER, name, name)
            _grow(source, name, cluster, max(0, size - base))
            graph = await discover(src, name, name)
            n = len(graph.nodes)
            before = src.requests + dst.requests
            t0 = time.perf_counter()
            report = await move(src, dst, name, name, journal=MemoryJournal())
            seconds = time.perf_counter() - t0
            calls = (src.requests + dst.requests) - before
            total = sum(calls.values())
            if report.outcome != "moved" or len(report.moved) != n:
                raise RuntimeError(f"{name}: {report.outcome}, {len(report.moved)} of {n} "
                                   f"objects moved\n{report.describe()}")
            points.append((n, total))
            print(f"  {n:>7}  {seconds:>7.2f}  {total:>6}  {total / n:>9.2f}  "
                  f"{n / seconds:>6.0f}  {_verbs(calls)}")
        (n0, c0), (n1, c1) = points[0], points[-1]
        slope = (c1 - c0) / (n1 - n0)
        print(f"  marginal cost {slope:.2f} calls per added object, fixed {c0 - slope * n0:.0f} "
              f"(the move's own count for the last: {report.api_calls}); targets: calls linear "
              "in objects, 100 objects <= 2 s")
    finally:
        for c in clients:
            await c.close()
        if sim is not None:
            await sim.stop()
        for server in (source, target):
            with contextlib.suppress(Exception):
                await server.stop()


# -- request to Managed ------------------------------------------------------------------------
async def _until(ready: Callable[[], bool], interval: float = 0.02) -> None:
    while True:
        if ready():
            return
        await asyncio.sleep(interval)


async def _to_managed(state: Path, step_delay: float, timeout: float = 60.0) -> None:
    async with Testbed(state, sim=SimConfig(step_delay=step_delay, resync=0.5)) as tb:
        assert tb.nats is not None
        poll = 0.2
        settings = GatewaySettings(
            kubeconfig=tb.management_kubeconfig, nats_servers=[tb.nats.url],
            signing_key_file=state / "gateway" / "signing-key.pem",
            components=components_files(), api_tokens=[TOKEN], http_host="127.0.0.1",
            http_port=0, work_dir=state / "gateway", poll_seconds=poll, agent_image="outpost:dev")
        mgmt = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
        gateway = Gateway(settings, mgmt)
        gateway.bootstrap.agent.extra_env.update(AGENT_ENV)
        reached: dict[str, float] = {}
        managed = asyncio.Event()

        def on_step(rec: ClusterRecord) -> None:
            reached.setdefault(rec.phase, time.perf_counter())
            if rec.phase == "Managed":
                managed.set()

        gateway.bootstrap.on_step = on_step
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        try:
            await _until(lambda: gateway.ready)
            base = f"http://127.0.0.1:{gateway.http_port}"
            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                t0 = time.perf_counter()
                async with http.post(f"{base}/v1/clusters", json=request(3, 2)) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"request refused: {resp.status} "
                                           f"{await resp.text()}")
                accepted = time.perf_counter()
                try:
                    await asyncio.wait_for(managed.wait(), timeout)
                except TimeoutError:
                    rec = await gateway.store.get(CLUSTER)
                    raise RuntimeError(f"not Managed after {timeout:.0f}s: phase "
                                       f"{rec.phase if rec else None}, "
                                       f"{rec.failed_reason if rec else ''}") from None
            rec = await gateway.store.get(CLUSTER)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await mgmt.close()
    print(f"  step delay {step_delay:.2f}s per machine phase, gateway poll {poll:.1f}s: "
          f"request -> Managed {reached['Managed'] - t0:.2f}s "
          f"(202 Accepted in {(accepted - t0) * 1e3:.0f} ms)")
    details = {s.phase: s.detail for s in (rec.steps if rec else ())}
    prev = t0
    for phase in PHASES[1:]:
        at = reached.get(phase)
        if at is None:
            continue
        detail = f"  ({details[phase]})" if details.get(phase) else ""
        print(f"    {phase:<23} {at - prev:6.2f}s{detail}")
        prev = at


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print("  pivot, by graph size (source + target API calls):")
        await _pivot(Path(tmp))
        print("  gateway, request -> Managed on the testbed (3 control-plane, 2 workers):")
        for i, delay in enumerate(STEP_DELAYS):
            await _to_managed(Path(tmp) / f"testbed-{i}", delay)
