"""An edge site on the testbed: a pivoted workload cluster (emulated API + simulated CAPI), a
real NATS server, the gateway's signing key, and agents running in-process against them.

Tests and benchmarks share it, so a benchmark measures exactly what the tests prove.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes_asyncio import client as k8s
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from agent.daemon import Agent
from agent.kube import ApiKubeClient
from agent.settings import Settings
from agent.spec import ClusterSpec, capi, public_key_text, sign
from agent.spec.wire import SPECS_BUCKET
from mgmt_gateway.render import capi as render_capi

from .apiserver import ApiServer
from .capi import CapiSimulator, SimConfig
from .crds import crd_files
from .kubeconfig import write_kubeconfig
from .natsd import NatsServer

CLUSTER = "edge-1"
NS = "fleet"


def spec_dict(revision: int = 1, cp: int = 1, workers: dict[str, int] | None = None,
              version: str = "v1.35.2", **over: Any) -> dict[str, Any]:
    pools = workers if workers is not None else {}
    data: dict[str, Any] = {
        "clusterName": CLUSTER, "namespace": NS, "revision": revision,
        "kubernetesVersion": version, "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": cp, "machine": {"provider": "dev"}},
        "workers": [{"name": n, "replicas": r, "machine": {"provider": "dev"}}
                    for n, r in pools.items()],
        "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutpostTestKey ops@site"],
    }
    data.update(over)
    return data


def make_spec(**kw: Any) -> ClusterSpec:
    return ClusterSpec.model_validate(spec_dict(**kw))


def pivoted_objects(spec: ClusterSpec) -> list[dict[str, Any]]:
    """What the gateway leaves in the workload cluster after the pivot (one CP machine)."""
    cp_template = capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)
    kcp = render_capi.control_plane(spec, cp_template["metadata"]["name"])
    kcp["spec"]["replicas"] = 1
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "outpost-system"}},
        {"apiVersion": f"{capi.CAPI_GROUP}/v1beta2", "kind": "Cluster",
         "metadata": {"name": spec.cluster_name, "namespace": NS},
         "spec": {"controlPlaneRef": {"apiGroup": capi.CP_GROUP, "kind": "KubeadmControlPlane",
                                      "name": capi.kcp_name(spec)},
                  "infrastructureRef": {"apiGroup": capi.INFRA_GROUP, "kind": "DevCluster",
                                        "name": spec.cluster_name}}},
        {"apiVersion": f"{capi.INFRA_GROUP}/v1beta2", "kind": "DevCluster",
         "metadata": {"name": spec.cluster_name, "namespace": NS},
         "spec": {"backend": {"docker": {}}}},
        cp_template,
        kcp,
    ]


@dataclass
class RunningAgent:
    agent: Agent
    task: asyncio.Task[int]
    stop: asyncio.Event
    kube: ApiKubeClient

    async def shutdown(self, timeout: float = 15) -> int:
        self.stop.set()
        try:
            return await asyncio.wait_for(self.task, timeout)
        finally:
            await self.kube.close()

    async def kill(self) -> None:
        """A crash: no drain, no lease release."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        await self.kube.close()


@dataclass
class Site:
    api: ApiServer
    sim: CapiSimulator
    nats: NatsServer
    root: Path
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    agents: list[RunningAgent] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.root / "workload.kubeconfig"

    def settings(self, identity: str = "agent-a", **over: Any) -> Settings:
        values: dict[str, Any] = {
            "cluster_name": CLUSTER, "nats_servers": [self.nats.url],
            "public_keys": [public_key_text(self.key.public_key())],
            "state_dir": self.root / f"state-{identity}", "kubeconfig": self.kubeconfig,
            "identity": identity, "agent_namespace": "outpost-system",
            "resync_seconds": 1.0, "status_interval_seconds": 0.5,
            "lease_duration_seconds": 2.0, "http_host": "127.0.0.1", "http_port": 0,
            "shutdown_grace_seconds": 5.0, "retry_max_seconds": 0.5,
        }
        values.update(over)
        return Settings(**values)

    async def start_agent(self, identity: str = "agent-a", **over: Any) -> RunningAgent:
        kube = await ApiKubeClient.from_kubeconfig(self.kubeconfig)
        agent = Agent(self.settings(identity, **over), kube)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name=f"agent-{identity}")
        running = RunningAgent(agent, task, stop, kube)
        self.agents.append(running)
        return running

    async def nats_client(self) -> Client:
        return await nats.connect(self.nats.url, max_reconnect_attempts=1)

    async def publish(self, spec: ClusterSpec | bytes) -> int:
        raw = spec if isinstance(spec, bytes) else sign(spec, self.key)
        nc = await self.nats_client()
        try:
            js = nc.jetstream()
            try:
                kv = await js.key_value(SPECS_BUCKET)
            except Exception:
                kv = await js.create_key_value(KeyValueConfig(bucket=SPECS_BUCKET,
                                                              history=10, direct=True))
            return int(await kv.put(CLUSTER, raw))
        finally:
            await nc.close()

    def client(self) -> k8s.ApiClient:
        cfg = k8s.Configuration()
        cfg.host = self.api.url
        return k8s.ApiClient(cfg)

    def obj(self, plural: str, name: str) -> dict[str, Any] | None:
        """Read straight from the emulator's store (no API call, so write counts stay exact)."""
        for rt in self.api.registry.types():
            if rt.plural == plural:
                found = self.api.store.get(rt.key, (NS, name))
                return copy.deepcopy(found) if found else None
        raise KeyError(plural)

    def names(self, plural: str, label: str | None = None) -> set[str]:
        """Names of live (not terminating) objects, optionally with label `key=value`."""
        rt = next(t for t in self.api.registry.types() if t.plural == plural)
        key, _, value = (label or "").partition("=")
        out = set()
        for o in self.api.store.items(rt.key, NS):
            labels = o["metadata"].get("labels") or {}
            if label and labels.get(key) != value:
                continue
            if not o["metadata"].get("deletionTimestamp"):
                out.add(o["metadata"]["name"])
        return out


    @classmethod
    async def create(cls, root: Path, *, step_delay: float = 0.02,
                     simulate: bool = True, version: str = "v1.35.2") -> Site:
        """Bring up the API, simulated CAPI and NATS, with the cluster as a pivot left it (its
        control plane at `version`)."""
        api = ApiServer("workload", bookmark_interval=0.5)
        await api.start()
        api.load_crds(crd_files())
        sim = CapiSimulator(api, config=SimConfig(step_delay=step_delay, resync=0.5),
                            workload_api=lambda ns, name: api,
                            active=lambda: simulate)
        await sim.start()
        nats_server = NatsServer(root / "nats")
        await nats_server.start()
        site = cls(api, sim, nats_server, root)
        write_kubeconfig(site.kubeconfig, "workload", api.url)
        for obj in pivoted_objects(make_spec(version=version)):
            rt = api.registry.type_by_kind(obj["apiVersion"], obj["kind"])
            assert rt is not None
            api.registry.create(rt, obj["metadata"].get("namespace"), obj, manager="outpost-pivot")
        return site

    async def close(self) -> None:
        for running in self.agents:
            if not running.task.done():
                await running.kill()
        await self.sim.stop()
        await self.nats.stop()
        await self.api.stop()
