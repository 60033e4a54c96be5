"""The simulated Cluster API, driven only over HTTP (kubernetes_asyncio) exactly as a management
component would drive the real one, on both API backends (the simulator itself reaches either
over HTTP only)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
import yaml
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import kube_config

from testbed.backends import KubeApi, make_api
from testbed.capi import CapiSimulator, SimConfig
from testbed.crds import crd_files

pytestmark = pytest.mark.asyncio(loop_scope="module")

V1 = "v1.35.2"
V2 = "v1.36.0"
STEP = 0.02
NEVER_READY = "testbed.outpost.dev/never-ready"
MERGE = "application/merge-patch+json"
CLUSTER_LABEL = "cluster.x-k8s.io/cluster-name"

KINDS: dict[str, tuple[str, str]] = {
    "Cluster": ("cluster.x-k8s.io", "clusters"),
    "Machine": ("cluster.x-k8s.io", "machines"),
    "MachineSet": ("cluster.x-k8s.io", "machinesets"),
    "MachineDeployment": ("cluster.x-k8s.io", "machinedeployments"),
    "KubeadmControlPlane": ("controlplane.cluster.x-k8s.io", "kubeadmcontrolplanes"),
    "KubeadmConfig": ("bootstrap.cluster.x-k8s.io", "kubeadmconfigs"),
    "KubeadmConfigTemplate": ("bootstrap.cluster.x-k8s.io", "kubeadmconfigtemplates"),
    "DevCluster": ("infrastructure.cluster.x-k8s.io", "devclusters"),
    "DevMachine": ("infrastructure.cluster.x-k8s.io", "devmachines"),
    "DevMachineTemplate": ("infrastructure.cluster.x-k8s.io", "devmachinetemplates"),
    "VSphereCluster": ("infrastructure.cluster.x-k8s.io", "vsphereclusters"),
    "VSphereMachine": ("infrastructure.cluster.x-k8s.io", "vspheremachines"),
    "VSphereMachineTemplate": ("infrastructure.cluster.x-k8s.io", "vspheremachinetemplates"),
}


# -- helpers ---------------------------------------------------------------------------------
async def eventually(fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Poll until fn returns something truthy. Any exception means "not yet": an object may not
    exist yet (an empty list to unpack) or have no status yet (a missing key). The deadline
    only bounds a failure."""
    deadline = time.monotonic() + timeout
    while True:
        last: Exception | None = None
        try:
            result = await fn()
            if result:
                return result
        except Exception as e:  # reported below if it never goes away
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {last!r}") from last
        await asyncio.sleep(0.02)


async def versions(env: Env, ns: str) -> dict[tuple[str, str], str]:
    """resourceVersion of every object in namespace ns, of each kind the simulator watches
    (read afresh from the API)."""
    out = {}
    for t in list(env.sim.api.cache.types.values()):
        items, _ = await env.sim.api.http.list(t)
        out.update({(t.key, o["metadata"]["name"]): o["metadata"]["resourceVersion"]
                    for o in items if o["metadata"].get("namespace") == ns})
    return out


async def settled(env: Env, ns: str) -> bool:
    """The simulator is done with namespace ns: no simulated step is still to come there and
    a full pass over it writes nothing, so nothing there changes until someone else writes.
    (How a test shows that something does NOT happen, without watching a clock.)"""
    await env.sim.wait_idle()
    assert env.sim.scheduled(ns) == [], env.sim.scheduled(ns)
    before = await versions(env, ns)
    assert env.sim.runtime is not None
    env.sim.runtime.enqueue_namespace(ns)
    await env.sim.wait_idle()
    assert await versions(env, ns) == before
    return True


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


class Kube:
    """The few calls the tests need, over HTTP."""

    def __init__(self, api: ApiClient) -> None:
        self.co = CustomObjectsApi(api)
        self.core = CoreV1Api(api)

    async def create(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        group, plural = KINDS[body["kind"]]
        res: dict[str, Any] = await self.co.create_namespaced_custom_object(
            group, "v1beta2", ns, plural, body)
        return res

    async def get(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        group, plural = KINDS[kind]
        res: dict[str, Any] = await self.co.get_namespaced_custom_object(
            group, "v1beta2", ns, plural, name)
        return res

    async def list(self, kind: str, ns: str, selector: str = "") -> list[dict[str, Any]]:
        group, plural = KINDS[kind]
        res = await self.co.list_namespaced_custom_object(group, "v1beta2", ns, plural,
                                                          label_selector=selector)
        return list(res["items"])

    async def patch(self, kind: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        group, plural = KINDS[kind]
        res: dict[str, Any] = await self.co.patch_namespaced_custom_object(
            group, "v1beta2", ns, plural, name, body, _content_type=MERGE)
        return res

    async def delete(self, kind: str, ns: str, name: str) -> None:
        group, plural = KINDS[kind]
        await self.co.delete_namespaced_custom_object(group, "v1beta2", ns, plural, name)

    async def secret(self, ns: str, name: str) -> client.V1Secret | None:
        try:
            return await self.core.read_namespaced_secret(name, ns)
        except ApiException as e:
            if e.status == 404:
                return None
            raise


@dataclass
class Env:
    server: KubeApi
    sim: CapiSimulator
    kube: Kube
    switch: dict[str, bool]

    async def namespace(self, name: str) -> str:
        await self.kube.core.create_namespace(client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name)))
        return name


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=[
    "emulated", pytest.param("real", marks=pytest.mark.real)])
async def env(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    server = make_api(request.param, "capi", tmp_path_factory.mktemp(f"capi-{request.param}"))
    await server.start()
    await server.install_crds(crd_files())
    config = SimConfig(step_delay=STEP, resync=0.5,
                       never_ready=lambda m: labels(m).get(NEVER_READY) == "true")
    # The "workload cluster" of namespace `self` is served by this very apiserver, so that the
    # kubeconfig Secret can be proven to work; other clusters get a placeholder URL.
    switch = {"active": True}
    sim = CapiSimulator(server, config=config,
                        workload_api=lambda ns, name: server if ns == "self" else None,
                        active=lambda: switch["active"])
    await sim.start()
    try:
        async with ApiClient(server.client_configuration()) as api:
            yield Env(server, sim, Kube(api), switch)
    finally:
        await sim.stop()
        await server.stop()


# -- cluster manifests -------------------------------------------------------------------------
def ref(group: str, kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": group, "kind": kind, "name": name}


INFRA = "infrastructure.cluster.x-k8s.io"
KUBELET_ARGS = {"nodeRegistration": {"kubeletExtraArgs": [
    {"name": "eviction-hard", "value": "nodefs.available<0%"}]}}


def dev_cluster(name: str, cp_replicas: int = 1, version: str = V1) -> list[dict[str, Any]]:
    """Cluster + DevCluster + DevMachineTemplate + KubeadmControlPlane."""
    return [
        {"apiVersion": f"{INFRA}/v1beta2", "kind": "DevCluster", "metadata": {"name": name},
         "spec": {"backend": {"inMemory": {}}}},
        {"apiVersion": f"{INFRA}/v1beta2", "kind": "DevMachineTemplate",
         "metadata": {"name": f"{name}-cp"},
         "spec": {"template": {"spec": {"backend": {"inMemory": {}}}}}},
        {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
         "metadata": {"name": f"{name}-cp"},
         "spec": {"replicas": cp_replicas, "version": version,
                  "machineTemplate": {"spec": {"infrastructureRef": ref(
                      INFRA, "DevMachineTemplate", f"{name}-cp")}},
                  "kubeadmConfigSpec": {"initConfiguration": KUBELET_ARGS,
                                        "joinConfiguration": KUBELET_ARGS}}},
        {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
         "metadata": {"name": name},
         "spec": {"clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
                  "controlPlaneRef": ref("controlplane.cluster.x-k8s.io", "KubeadmControlPlane",
                                         f"{name}-cp"),
                  "infrastructureRef": ref(INFRA, "DevCluster", name)}},
    ]


def workers(cluster: str, name: str, replicas: int, version: str = V1) -> list[dict[str, Any]]:
    """KubeadmConfigTemplate + DevMachineTemplate + MachineDeployment."""
    sel = {CLUSTER_LABEL: cluster, "cluster.x-k8s.io/deployment-name": name}
    return [
        {"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta2", "kind": "KubeadmConfigTemplate",
         "metadata": {"name": name},
         "spec": {"template": {"spec": {"joinConfiguration": KUBELET_ARGS}}}},
        {"apiVersion": f"{INFRA}/v1beta2", "kind": "DevMachineTemplate",
         "metadata": {"name": name},
         "spec": {"template": {"spec": {"backend": {"inMemory": {}}}}}},
        {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
         "metadata": {"name": name},
         "spec": {"clusterName": cluster, "replicas": replicas,
                  "selector": {"matchLabels": sel},
                  "template": {"metadata": {"labels": sel}, "spec": {
                      "clusterName": cluster, "version": version,
                      "bootstrap": {"configRef": ref("bootstrap.cluster.x-k8s.io",
                                                     "KubeadmConfigTemplate", name)},
                      "infrastructureRef": ref(INFRA, "DevMachineTemplate", name)}}}},
    ]


async def create_all(kube: Kube, ns: str, objs: list[dict[str, Any]]) -> None:
    for o in objs:
        await kube.create(ns, o)


async def running(kube: Kube, ns: str, selector: str) -> list[dict[str, Any]]:
    return [m for m in await kube.list("Machine", ns, selector)
            if (m.get("status") or {}).get("phase") == "Running"]


def cp_selector(cluster: str) -> str:
    return f"{CLUSTER_LABEL}={cluster},cluster.x-k8s.io/control-plane"


def md_selector(md: str) -> str:
    return f"cluster.x-k8s.io/deployment-name={md}"


async def wait_replicas(kube: Kube, ns: str, selector: str, n: int,
                        version: str | None = None) -> list[dict[str, Any]]:
    """Exactly n Machines, all Running (and at `version`)."""
    async def check() -> list[dict[str, Any]]:
        machines = await kube.list("Machine", ns, selector)
        up = [m for m in machines if (m.get("status") or {}).get("phase") == "Running"
              and (version is None or m["spec"].get("version") == version)]
        assert len(machines) == n and len(up) == n, [
            (m["metadata"]["name"], m["spec"].get("version"),
             (m.get("status") or {}).get("phase")) for m in machines]
        return machines
    result: list[dict[str, Any]] = await eventually(check)
    return result


class MachineCount:
    """Watches Machines over HTTP and remembers the most that ever existed at once."""

    def __init__(self, kube: Kube, ns: str, selector: str) -> None:
        self.kube, self.ns, self.selector = kube, ns, selector
        self.names: set[str] = set()
        self.most = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        group, plural = KINDS["Machine"]
        w = watch.Watch()
        while True:
            async for ev in w.stream(self.kube.co.list_namespaced_custom_object, group,
                                     "v1beta2", self.ns, plural, label_selector=self.selector,
                                     timeout_seconds=30):
                name = ev["object"]["metadata"]["name"]
                if ev["type"] == "DELETED":
                    self.names.discard(name)
                else:
                    self.names.add(name)
                self.most = max(self.most, len(self.names))

    async def start(self, existing: int) -> None:
        self.task = asyncio.create_task(self._run())
        await eventually(self._seen(existing))

    def _seen(self, n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(self.names) >= n
        return check

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


# -- tests -----------------------------------------------------------------------------------
async def test_control_plane_initializes_and_scales(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("self")
    await create_all(kube, ns, dev_cluster("alpha"))

    [m] = await wait_replicas(kube, ns, cp_selector("alpha"), 1)
    assert labels(m)["cluster.x-k8s.io/control-plane-name"] == "alpha-cp"
    [owner] = m["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"], owner["blockOwnerDeletion"]) == (
        "KubeadmControlPlane", "alpha-cp", True, True)
    assert "machine.cluster.x-k8s.io" in m["metadata"]["finalizers"]
    assert m["status"]["nodeRef"] == {"name": m["metadata"]["name"]}
    assert m["status"]["initialization"] == {"bootstrapDataSecretCreated": True,
                                             "infrastructureProvisioned": True}
    assert m["status"]["certificatesExpiryDate"] > m["metadata"]["creationTimestamp"]
    assert cond(m, "Ready")["status"] == "True"
    assert m["spec"]["providerID"] == f"in-memory://{m['metadata']['name']}"

    # The Machine's parts share its name and are controlled by it.
    name = m["metadata"]["name"]
    for kind in ("DevMachine", "KubeadmConfig"):
        part = await kube.get(kind, ns, name)
        [pref] = part["metadata"]["ownerReferences"]
        assert (pref["kind"], pref["uid"], pref["controller"]) == (
            "Machine", m["metadata"]["uid"], True)
    infra = await kube.get("DevMachine", ns, name)
    assert infra["metadata"]["annotations"]["cluster.x-k8s.io/cloned-from-name"] == "alpha-cp"
    assert infra["status"]["initialization"]["provisioned"] is True
    data = await kube.secret(ns, m["spec"]["bootstrap"]["dataSecretName"])
    assert data is not None and data.type == "cluster.x-k8s.io/secret"
    assert "kubeadm init" in base64.b64decode(data.data["value"]).decode()

    # Cluster-wide secrets, exactly the names clusterctl move looks for.
    for suffix in ("ca", "etcd", "sa", "proxy", "kubeconfig"):
        secret = await eventually(partial(kube.secret, ns, f"alpha-{suffix}"))
        assert secret.type == "cluster.x-k8s.io/secret"
        assert secret.metadata.labels[CLUSTER_LABEL] == "alpha"
        [sref] = secret.metadata.owner_references
        assert (sref.kind, sref.name, sref.controller) == ("KubeadmControlPlane", "alpha-cp",
                                                           True)
        if suffix != "kubeconfig":
            assert base64.b64decode(secret.data["tls.crt"]).startswith(b"-----BEGIN ")
    secret = await kube.secret(ns, "alpha-kubeconfig")
    assert secret is not None
    kubeconfig = yaml.safe_load(base64.b64decode(secret.data["value"]))
    assert kubeconfig["clusters"][0]["cluster"]["server"] == env.server.url
    workload = client.Configuration()
    loader = kube_config.KubeConfigLoader(config_dict=kubeconfig)
    await loader.load_and_set(workload)
    async with ApiClient(workload) as wapi:
        names = [n.metadata.name for n in (await CoreV1Api(wapi).list_namespace()).items]
    assert "self" in names

    kcp = await kube.get("KubeadmControlPlane", ns, "alpha-cp")
    assert kcp["status"]["initialization"]["controlPlaneInitialized"] is True
    assert kcp["status"]["version"] == V1
    assert kcp["status"]["selector"] == cp_selector("alpha")
    assert cond(kcp, "Available")["status"] == "True"

    async def cluster_ready() -> dict[str, Any]:
        c = await kube.get("Cluster", ns, "alpha")
        assert c["status"]["phase"] == "Provisioned"
        assert c["status"]["initialization"] == {"infrastructureProvisioned": True,
                                                 "controlPlaneInitialized": True}
        assert cond(c, "Available")["status"] == "True", cond(c, "Available")
        return c
    c = await eventually(cluster_ready)
    assert c["spec"]["controlPlaneEndpoint"]["host"] == "127.0.0.1"
    for type_ in ("InfrastructureReady", "ControlPlaneInitialized", "ControlPlaneAvailable",
                  "WorkersAvailable"):
        assert cond(c, type_)["status"] == "True"
        assert cond(c, type_)["observedGeneration"] == c["metadata"]["generation"]
    assert cond(c, "Paused")["status"] == "False"
    dev = await kube.get("DevCluster", ns, "alpha")
    assert dev["status"]["initialization"]["provisioned"] is True
    for obj in (dev, await kube.get("KubeadmControlPlane", ns, "alpha-cp")):
        [cref] = obj["metadata"]["ownerReferences"]
        assert (cref["kind"], cref["name"]) == ("Cluster", "alpha")

    # Scale 1 -> 3: one Machine at a time.
    counter = MachineCount(kube, ns, cp_selector("alpha"))
    await counter.start(existing=1)
    await kube.patch("KubeadmControlPlane", ns, "alpha-cp", {"spec": {"replicas": 3}})
    await wait_replicas(kube, ns, cp_selector("alpha"), 3)
    await counter.stop()

    async def kcp_ready() -> bool:
        k = await kube.get("KubeadmControlPlane", ns, "alpha-cp")
        s = k["status"]
        assert (s["replicas"], s["readyReplicas"], s["availableReplicas"],
                s["upToDateReplicas"]) == (3, 3, 3, 3)
        assert s["observedGeneration"] == k["metadata"]["generation"]
        c = await kube.get("Cluster", ns, "alpha")
        assert c["status"]["controlPlane"]["readyReplicas"] == 3
        return True
    await eventually(kcp_ready)
    assert counter.most == 3

    # A converged cluster costs no writes at all.
    await env.sim.wait_idle()
    before = await versions(env, ns)
    assert env.sim.runtime is not None
    env.sim.runtime.enqueue_namespace(ns)
    await env.sim.wait_idle()
    assert await versions(env, ns) == before


async def test_machine_deployment_scales(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("md-scale")
    await create_all(kube, ns, dev_cluster("beta") + workers("beta", "beta-md", 2))
    machines = await wait_replicas(kube, ns, md_selector("beta-md"), 2)
    [ms] = await kube.list("MachineSet", ns)
    assert ms["metadata"]["name"].startswith("beta-md-")
    assert len(ms["metadata"]["name"]) == len("beta-md-") + 10
    [msref] = ms["metadata"]["ownerReferences"]
    assert (msref["kind"], msref["name"], msref["controller"]) == ("MachineDeployment",
                                                                    "beta-md", True)
    for m in machines:
        lb = labels(m)
        assert lb[CLUSTER_LABEL] == "beta"
        assert lb["cluster.x-k8s.io/set-name"] == ms["metadata"]["name"]
        assert "cluster.x-k8s.io/control-plane" not in lb
        [mref] = m["metadata"]["ownerReferences"]
        assert (mref["kind"], mref["name"]) == ("MachineSet", ms["metadata"]["name"])
        config = await kube.get("KubeadmConfig", ns, m["metadata"]["name"])
        assert config["spec"]["joinConfiguration"] == KUBELET_ARGS
        infra = await kube.get("DevMachine", ns, m["metadata"]["name"])
        assert infra["metadata"]["annotations"]["cluster.x-k8s.io/cloned-from-name"] == "beta-md"

    async def md_status(n: int) -> bool:
        md = await kube.get("MachineDeployment", ns, "beta-md")
        s = md["status"]
        assert (s["replicas"], s["readyReplicas"], s["availableReplicas"],
                s["upToDateReplicas"], s["phase"]) == (n, n, n, n, "Running"), s
        assert s["observedGeneration"] == md["metadata"]["generation"]
        assert s["selector"] == (f"{CLUSTER_LABEL}=beta,"
                                 "cluster.x-k8s.io/deployment-name=beta-md")
        assert cond(md, "Available")["status"] == "True"
        [ms] = await kube.list("MachineSet", ns)
        assert (ms["status"]["replicas"], ms["status"]["readyReplicas"]) == (n, n)
        c = await kube.get("Cluster", ns, "beta")
        assert c["status"]["workers"]["readyReplicas"] == n
        return True

    await eventually(lambda: md_status(2))
    await kube.patch("MachineDeployment", ns, "beta-md", {"spec": {"replicas": 4}})
    await wait_replicas(kube, ns, md_selector("beta-md"), 4)
    await eventually(lambda: md_status(4))
    await kube.patch("MachineDeployment", ns, "beta-md", {"spec": {"replicas": 1}})
    await wait_replicas(kube, ns, md_selector("beta-md"), 1)
    await eventually(lambda: md_status(1))
    # The parts of the removed Machines went with them.
    await eventually(lambda: _count(kube, "DevMachine", ns, md_selector("beta-md"), 1))
    await eventually(lambda: _count(kube, "KubeadmConfig", ns, md_selector("beta-md"), 1))


async def _count(kube: Kube, kind: str, ns: str, selector: str, n: int) -> bool:
    return len(await kube.list(kind, ns, selector)) == n


async def test_version_upgrade_rolls_one_machine_at_a_time(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("upgrade")
    await create_all(kube, ns, dev_cluster("gamma", cp_replicas=3) + workers("gamma", "gamma-md",
                                                                             3))
    await wait_replicas(kube, ns, cp_selector("gamma"), 3)
    await wait_replicas(kube, ns, md_selector("gamma-md"), 3)

    counter = MachineCount(kube, ns, cp_selector("gamma"))
    await counter.start(existing=3)
    await kube.patch("KubeadmControlPlane", ns, "gamma-cp", {"spec": {"version": V2}})
    await wait_replicas(kube, ns, cp_selector("gamma"), 3, version=V2)
    await counter.stop()
    assert counter.most == 4  # surged by exactly one

    async def kcp_upgraded() -> bool:
        k = await kube.get("KubeadmControlPlane", ns, "gamma-cp")
        assert k["status"]["version"] == V2
        assert k["status"]["upToDateReplicas"] == 3
        assert cond(k, "RollingOut")["status"] == "False"
        return True
    await eventually(kcp_upgraded)

    counter = MachineCount(kube, ns, md_selector("gamma-md"))
    await counter.start(existing=3)
    [old_ms] = await kube.list("MachineSet", ns)
    await kube.patch("MachineDeployment", ns, "gamma-md",
                     {"spec": {"template": {"spec": {"version": V2}}}})
    await wait_replicas(kube, ns, md_selector("gamma-md"), 3, version=V2)

    async def one_machineset() -> bool:
        sets = await kube.list("MachineSet", ns)
        assert [s["metadata"]["name"] for s in sets] != [old_ms["metadata"]["name"]]
        assert len(sets) == 1
        return True
    await eventually(one_machineset)
    await counter.stop()
    assert counter.most == 4


async def test_pause_stops_everything_until_unpaused(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("pause")
    await create_all(kube, ns, dev_cluster("delta") + workers("delta", "delta-md", 1))
    await wait_replicas(kube, ns, cp_selector("delta"), 1)
    await wait_replicas(kube, ns, md_selector("delta-md"), 1)

    await kube.patch("Cluster", ns, "delta", {"spec": {"paused": True}})
    kcp = await kube.patch("KubeadmControlPlane", ns, "delta-cp", {"spec": {"replicas": 3}})
    md = await kube.patch("MachineDeployment", ns, "delta-md", {"spec": {"replicas": 3}})

    async def seen_paused(kind: str, name: str, generation: int) -> bool:
        obj = await kube.get(kind, ns, name)
        c = cond(obj, "Paused")
        return c.get("status") == "True" and c.get("observedGeneration") == generation

    # The simulator has looked at the new specs (and only said so): nothing else moved.
    await eventually(lambda: seen_paused("KubeadmControlPlane", "delta-cp",
                                         kcp["metadata"]["generation"]))
    await eventually(lambda: seen_paused("MachineDeployment", "delta-md",
                                         md["metadata"]["generation"]))
    await env.sim.wait_idle()
    assert len(await kube.list("Machine", ns, cp_selector("delta"))) == 1
    assert len(await kube.list("Machine", ns, md_selector("delta-md"))) == 1
    [ms] = await kube.list("MachineSet", ns)
    assert ms["spec"]["replicas"] == 1
    assert cond(await kube.get("Cluster", ns, "delta"), "Paused")["status"] == "True"

    await kube.patch("Cluster", ns, "delta", {"spec": {"paused": False}})
    await wait_replicas(kube, ns, cp_selector("delta"), 3)
    await wait_replicas(kube, ns, md_selector("delta-md"), 3)

    async def unpaused() -> bool:
        for kind, name in (("Cluster", "delta"), ("KubeadmControlPlane", "delta-cp"),
                           ("MachineDeployment", "delta-md")):
            assert cond(await kube.get(kind, ns, name), "Paused")["status"] == "False"
        return True
    await eventually(unpaused)


async def never_ready_provisioned(kube: Kube, ns: str) -> dict[str, Any]:
    """The one never-ready Machine, once its infrastructure is up."""
    [m] = await kube.list("Machine", ns, NEVER_READY)
    assert m["status"]["phase"] == "Provisioned"
    return m


async def test_never_ready_machine_holds_back_the_control_plane(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("faulty")
    await create_all(kube, ns, dev_cluster("eps"))
    await wait_replicas(kube, ns, cp_selector("eps"), 1)
    await kube.patch("KubeadmControlPlane", ns, "eps-cp", {"spec": {
        "replicas": 3, "machineTemplate": {"metadata": {"labels": {NEVER_READY: "true"}}}}})
    await eventually(partial(never_ready_provisioned, kube, ns))

    # Once the simulator has nothing left to do there, the control plane is still held back:
    # no third Machine, and the stuck one never gets a Node.
    await eventually(partial(settled, env, ns))
    k = await kube.get("KubeadmControlPlane", ns, "eps-cp")
    assert (k["status"]["replicas"], k["status"]["readyReplicas"]) == (2, 1)
    assert cond(k, "MachinesReady")["status"] == "False"
    assert cond(k, "ScalingUp")["status"] == "True"
    assert len(await kube.list("Machine", ns, cp_selector("eps"))) == 2
    [m] = await kube.list("Machine", ns, NEVER_READY)
    assert m["status"]["phase"] == "Provisioned" and "nodeRef" not in m["status"]


async def test_a_wait_may_begin_before_the_controllers_act(env: Env) -> None:
    """The first look at a Machine can come before its owner created it, or before the
    Machine controller gave it a status: waiting treats that as "not yet", not as a failure.
    (Made certain here by holding the controllers while the wait starts polling.)"""
    kube = env.kube
    ns = await env.namespace("early")
    await create_all(kube, ns, dev_cluster("mu"))
    await wait_replicas(kube, ns, cp_selector("mu"), 1)
    polls = 0
    polled_twice = asyncio.Event()

    async def provisioned() -> dict[str, Any]:
        nonlocal polls
        polls += 1
        if polls == 2:
            polled_twice.set()
        return await never_ready_provisioned(kube, ns)

    env.switch["active"] = False
    try:
        await kube.patch("KubeadmControlPlane", ns, "mu-cp", {"spec": {
            "replicas": 2, "machineTemplate": {"metadata": {"labels": {NEVER_READY: "true"}}}}})
        waiter = asyncio.create_task(eventually(provisioned))
        polled = asyncio.create_task(polled_twice.wait())
        await asyncio.wait({waiter, polled}, return_when=asyncio.FIRST_COMPLETED)
        polled.cancel()
        assert await kube.list("Machine", ns, NEVER_READY) == []
    finally:
        env.switch["active"] = True
    m = await waiter  # picked up by the resync
    assert m["status"]["phase"] == "Provisioned"


async def test_deleting_machine_deployment_removes_sets_and_machines(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("md-delete")
    await create_all(kube, ns, dev_cluster("zeta") + workers("zeta", "zeta-md", 2))
    machines = await wait_replicas(kube, ns, md_selector("zeta-md"), 2)
    names = [m["metadata"]["name"] for m in machines]

    await kube.delete("MachineDeployment", ns, "zeta-md")

    async def gone() -> bool:
        assert await kube.list("MachineSet", ns) == []
        assert await kube.list("Machine", ns, md_selector("zeta-md")) == []
        for name in names:
            assert await kube.secret(ns, name) is None  # bootstrap data
            for kind in ("DevMachine", "KubeadmConfig"):
                with pytest.raises(ApiException) as e:
                    await kube.get(kind, ns, name)
                assert e.value.status == 404
        return True
    await eventually(gone)
    # The control plane is untouched.
    await wait_replicas(kube, ns, cp_selector("zeta"), 1)


async def test_vsphere_cluster_comes_up(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("vsphere")
    objs = [
        {"apiVersion": f"{INFRA}/v1beta2", "kind": "VSphereCluster", "metadata": {"name": "vs"},
         "spec": {"server": "vcenter.example.test",
                  "controlPlaneEndpoint": {"host": "10.10.0.10", "port": 6443}}},
        {"apiVersion": f"{INFRA}/v1beta2", "kind": "VSphereMachineTemplate",
         "metadata": {"name": "vs-cp"},
         "spec": {"template": {"spec": {"template": "ubuntu-2404-kube-v1.35",
                                        "network": {"devices": [{"networkName": "vm-net",
                                                                 "dhcp4": True}]}}}}},
        {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
         "metadata": {"name": "vs-cp"},
         "spec": {"replicas": 1, "version": V1,
                  "machineTemplate": {"spec": {"infrastructureRef": ref(
                      INFRA, "VSphereMachineTemplate", "vs-cp")}},
                  "kubeadmConfigSpec": {"initConfiguration": KUBELET_ARGS}}},
        {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": "vs"},
         "spec": {"controlPlaneRef": ref("controlplane.cluster.x-k8s.io", "KubeadmControlPlane",
                                         "vs-cp"),
                  "infrastructureRef": ref(INFRA, "VSphereCluster", "vs")}},
    ]
    await create_all(kube, ns, objs)
    [m] = await wait_replicas(kube, ns, cp_selector("vs"), 1)
    assert m["spec"]["providerID"].startswith("vsphere://")
    vm = await kube.get("VSphereMachine", ns, m["metadata"]["name"])
    assert vm["spec"]["template"] == "ubuntu-2404-kube-v1.35"
    assert vm["status"]["initialization"]["provisioned"] is True
    secret = await eventually(lambda: kube.secret(ns, "vs-kubeconfig"))
    kubeconfig = yaml.safe_load(base64.b64decode(secret.data["value"]))
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.10.0.10:6443"
    c = await kube.get("Cluster", ns, "vs")
    assert c["spec"]["controlPlaneEndpoint"] == {"host": "10.10.0.10", "port": 6443}


async def test_deleting_cluster_deletes_everything_below_it(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("teardown")
    await create_all(kube, ns, dev_cluster("eta") + workers("eta", "eta-md", 1))
    await wait_replicas(kube, ns, cp_selector("eta"), 1)
    await wait_replicas(kube, ns, md_selector("eta-md"), 1)
    await kube.delete("Cluster", ns, "eta")

    async def gone() -> bool:
        # Templates go too: CAPI makes the Cluster their owner.
        for kind in ("Cluster", "KubeadmControlPlane", "MachineDeployment", "MachineSet",
                     "Machine", "DevMachine", "DevCluster", "KubeadmConfig",
                     "DevMachineTemplate", "KubeadmConfigTemplate"):
            assert await kube.list(kind, ns) == [], kind
        # Secrets owned by the control plane went with it.
        assert await kube.secret(ns, "eta-kubeconfig") is None
        return True
    await eventually(gone)


async def test_control_plane_rolls_out_on_template_change_and_rollout_after(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("rollout")
    await create_all(kube, ns, dev_cluster("theta"))
    [first] = await wait_replicas(kube, ns, cp_selector("theta"), 1)

    # A new infrastructure template replaces the Machine.
    template = dev_cluster("theta")[1]
    template["metadata"]["name"] = "theta-cp-v2"
    await kube.create(ns, template)
    await kube.patch("KubeadmControlPlane", ns, "theta-cp", {"spec": {"machineTemplate": {
        "spec": {"infrastructureRef": ref(INFRA, "DevMachineTemplate", "theta-cp-v2")}}}})

    async def replaced(old: dict[str, Any]) -> dict[str, Any]:
        [m] = await wait_replicas(kube, ns, cp_selector("theta"), 1)
        assert m["metadata"]["uid"] != old["metadata"]["uid"]
        return m
    second = await eventually(lambda: replaced(first))
    infra = await kube.get("DevMachine", ns, second["metadata"]["name"])
    assert infra["metadata"]["annotations"]["cluster.x-k8s.io/cloned-from-name"] == "theta-cp-v2"

    # spec.rollout.after: Machines created before it are replaced once it has passed.
    created = datetime.fromisoformat(second["metadata"]["creationTimestamp"].replace("Z",
                                                                                     "+00:00"))
    after = (created + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await kube.patch("KubeadmControlPlane", ns, "theta-cp", {"spec": {"rollout": {
        "after": after}}})
    third = await eventually(lambda: replaced(second))
    assert third["metadata"]["creationTimestamp"] >= after


async def test_half_formed_objects_wait_for_what_they_reference(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("late")
    cluster = dev_cluster("iota")
    cp_template = cluster.pop(1)
    md_objs = workers("iota", "iota-md", 2)
    md_templates, md = md_objs[:2], md_objs[2]
    # A Machine pointing at kinds nobody serves, and a MachineDeployment without templates.
    stray = {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
             "metadata": {"name": "stray"},
             "spec": {"clusterName": "iota", "bootstrap": {"dataSecretName": "none"},
                      "infrastructureRef": ref("example.invalid", "NoSuchMachine", "stray")}}
    await create_all(kube, ns, [*cluster, md, stray])

    async def infra_provisioned() -> bool:
        c = await kube.get("Cluster", ns, "iota")
        return bool(c.get("status", {}).get("initialization", {}).get("infrastructureProvisioned"))
    await eventually(infra_provisioned)
    await env.sim.wait_idle()
    assert [m["metadata"]["name"] for m in await kube.list("Machine", ns)] == ["stray"]
    s = (await kube.get("Machine", ns, "stray"))["status"]
    assert s["phase"] == "Provisioning"
    assert cond({"status": s}, "InfrastructureReady")["reason"] == "ObjectDoesNotExist"

    await create_all(kube, ns, [cp_template, *md_templates])
    await wait_replicas(kube, ns, cp_selector("iota"), 1)
    await wait_replicas(kube, ns, md_selector("iota-md"), 2)


async def test_inactive_controllers_do_nothing_until_active(env: Env) -> None:
    kube = env.kube
    ns = await env.namespace("inactive")
    env.switch["active"] = False
    try:
        await create_all(kube, ns, dev_cluster("kappa"))
        await env.sim.wait_idle()
        c = await kube.get("Cluster", ns, "kappa")
        assert "status" not in c and "finalizers" not in c["metadata"]
        assert await kube.list("Machine", ns) == []
    finally:
        env.switch["active"] = True
    await wait_replicas(kube, ns, cp_selector("kappa"), 1)  # picked up by the resync
