"""The kubelet stand-in plays the node: the controllers (real ones, or the emulator's stand-ins)
turn a Deployment into a Pod, the scheduler places it only where its tolerations allow, and the
stand-in runs the real agent from it, or reports why it cannot, as a node would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from testbed.backends import KubeApi
from testbed.kubelet import Kubelet
from tests.fixtures.kube import http
from tests.fixtures.site import eventually

pytestmark = pytest.mark.both_backends

TOLERATION = [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
               "effect": "NoSchedule"}]
NS = "/api/v1/namespaces/default"
DEPLOYMENT = "/apis/apps/v1/namespaces/default/deployments/agent"


def deployment(tolerations: list[dict[str, Any]] | None, secret: str = "agent-secret",
               command: str = "outpost-agent") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "agent", "namespace": "default"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
            "tolerations": tolerations,
            "containers": [{"name": "agent", "image": "outpost:latest", "command": [command],
                            "envFrom": [{"configMapRef": {"name": "agent-config"}}],
                            "env": [{"name": "OUTPOST_AGENT_IDENTITY", "valueFrom": {
                                "fieldRef": {"fieldPath": "metadata.name"}}},
                                    {"name": "OUTPOST_AGENT_PUBLIC_KEYS_FILE",
                                     "value": "/etc/outpost/public-keys"}],
                            "volumeMounts": [{"name": "keys", "mountPath": "/etc/outpost"}]}],
            "volumes": [{"name": "keys", "secret": {"secretName": secret}}]}}}}


async def call(api: KubeApi, method: str, path: str, body: Any = None,
               content_type: str = "application/json") -> Any:
    async with http(api) as s, s.request(method, api.url + path, json=body,
                                         headers={"Content-Type": content_type}) as r:
        out = await r.json()
        assert r.status < 300, out
        return out


async def agent_pods(api: KubeApi) -> list[dict[str, Any]]:
    return list((await call(api, "GET", NS + "/pods?labelSelector=app%3Dagent"))["items"])


async def test_runs_the_agent_process_with_its_config(api: KubeApi, tmp_path: Path) -> None:
    await call(api, "POST", NS + "/configmaps", {
        "metadata": {"name": "agent-config"},
        "data": {"OUTPOST_AGENT_CLUSTER_NAME": "edge-1",
                 "OUTPOST_AGENT_STATE_DIR": str(tmp_path / "state"),
                 "OUTPOST_AGENT_NATS_SERVERS": "nats://127.0.0.1:1"}})
    await call(api, "POST", NS + "/secrets", {
        "metadata": {"name": "agent-secret"},
        "stringData": {"public-keys": "MCowBQYDK2VwAyEA\n"}})
    kubelet = Kubelet(api, tmp_path / "kubelet")
    await kubelet.start()
    try:
        node = await call(api, "GET", "/api/v1/nodes/cp-a")
        assert node["spec"]["taints"][0]["effect"] == "NoSchedule"
        # Without the control-plane toleration the pod never schedules on the only node.
        await call(api, "POST", "/apis/apps/v1/namespaces/default/deployments",
                   deployment(None))

        async def unschedulable() -> bool:
            pods = await agent_pods(api)
            assert len(pods) == 1, pods
            conds = [c for c in (pods[0].get("status") or {}).get("conditions") or []
                     if c["type"] == "PodScheduled"]
            assert conds and conds[0]["reason"] == "Unschedulable", conds
            return "untolerated taint" in conds[0]["message"]

        await eventually(unschedulable, what="unschedulable")
        assert not kubelet.pods()
        # With it, the real agent process starts; it reads its mounted key file and exits
        # with a clear error because that key is not a valid Ed25519 key.
        await call(api, "PATCH", DEPLOYMENT, {"spec": {"template": {"spec": {
            "tolerations": TOLERATION}}}}, "application/merge-patch+json")
        await eventually(lambda: any(p.process is not None for p in kubelet.pods()),
                         what="process started")
        pod = next(p for p in kubelet.pods() if p.process is not None)
        proc, log_file = pod.process, pod.log_file  # (a restart replaces the process)
        assert proc is not None and log_file is not None
        assert await asyncio.wait_for(proc.wait(), 60) == 2
        assert "cannot start" in log_file.read_text()

        async def crash_looping() -> bool:
            pods = [p for p in await agent_pods(api) if p["spec"].get("nodeName") == "cp-a"]
            assert len(pods) == 1, pods
            sts = (pods[0].get("status") or {}).get("containerStatuses") or []
            assert len(sts) == 1, sts
            return sts[0]["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff" and \
                sts[0]["lastState"]["terminated"]["exitCode"] == 2

        await eventually(crash_looping, what="CrashLoopBackOff reported")
    finally:
        await kubelet.stop()


async def test_a_ready_pod_makes_its_deployment_available(api: KubeApi, tmp_path: Path) -> None:
    kubelet = Kubelet(api, tmp_path / "kubelet")
    await kubelet.start()
    try:
        body = deployment(TOLERATION)
        body["spec"]["template"]["spec"]["containers"][0].update(
            command=["/manager"], envFrom=[], env=[], volumeMounts=[])
        body["spec"]["template"]["spec"]["volumes"] = []
        await call(api, "POST", "/apis/apps/v1/namespaces/default/deployments", body)

        async def available() -> bool:
            d = await call(api, "GET", DEPLOYMENT)
            return (d.get("status") or {}).get("availableReplicas") == 1

        await eventually(available, what="deployment available")
        [pod] = await agent_pods(api)
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] == "cp-a"
        # Scaled to zero, the pod goes (the stand-in confirms its deletion, as a kubelet does).
        await call(api, "PATCH", DEPLOYMENT, {"spec": {"replicas": 0}},
                   "application/merge-patch+json")

        async def gone() -> bool:
            return not await agent_pods(api) and not kubelet.pods()

        await eventually(gone, what="pod removed")
    finally:
        await kubelet.stop()


async def test_missing_secret_fails_the_pod(api: KubeApi, tmp_path: Path) -> None:
    await call(api, "POST", NS + "/configmaps", {"metadata": {"name": "agent-config"},
                                                 "data": {}})
    kubelet = Kubelet(api, tmp_path / "kubelet")
    await kubelet.start()
    try:
        await call(api, "POST", "/apis/apps/v1/namespaces/default/deployments",
                   deployment(TOLERATION, secret="nope"))

        async def config_error() -> bool:
            pods = await agent_pods(api)
            assert len(pods) == 1, pods
            sts = (pods[0].get("status") or {}).get("containerStatuses") or []
            assert len(sts) == 1, sts
            return sts[0]["state"].get("waiting") == {
                "reason": "CreateContainerConfigError", "message": 'secret "nope" not found'}

        await eventually(config_error, what="pod error reported")
        # Once the Secret exists the Pod starts, as a kubelet retries (the agent then stops on
        # its bad settings: it starts, which is what this shows).
        await call(api, "POST", NS + "/secrets", {"metadata": {"name": "nope"},
                                                  "stringData": {"public-keys": "x\n"}})
        await eventually(lambda: any(p.process is not None for p in kubelet.pods()),
                         what="process started once the Secret exists")
    finally:
        await kubelet.stop()


async def test_a_joined_machine_brings_its_node(capi_api: KubeApi, tmp_path: Path) -> None:
    kubelet = Kubelet(capi_api, tmp_path / "kubelet")
    await kubelet.start()
    machines = "/apis/cluster.x-k8s.io/v1beta2/namespaces/default/machines"
    try:
        await call(capi_api, "POST", machines, {
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "edge-1-md-x1"},
            "spec": {"clusterName": "edge-1", "version": "v1.35.2",
                     "bootstrap": {"dataSecretName": "edge-1-md-x1"},
                     "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io",
                                           "kind": "DevMachine", "name": "edge-1-md-x1"}}})
        await call(capi_api, "PATCH", machines + "/edge-1-md-x1/status", {"status": {
            "nodeRef": {"name": "edge-1-md-x1"}}}, "application/merge-patch+json")

        async def joined() -> bool:
            node = await call(capi_api, "GET", "/api/v1/nodes/edge-1-md-x1")
            assert not node["spec"].get("taints"), node["spec"]  # a worker takes any Pod
            return any(c["type"] == "Ready" and c["status"] == "True"
                       for c in node["status"]["conditions"])

        await eventually(joined, what="worker node joined")
        # A Pod bound to it runs there.
        body = deployment(None)
        body["spec"]["template"]["spec"].update(
            containers=[{"name": "app", "image": "app:1", "command": ["/app"]}], volumes=[],
            nodeSelector={"kubernetes.io/hostname": "edge-1-md-x1"})
        await call(capi_api, "POST", "/apis/apps/v1/namespaces/default/deployments", body)

        async def running() -> bool:
            pods = await agent_pods(capi_api)
            assert len(pods) == 1, pods
            return pods[0]["spec"].get("nodeName") == "edge-1-md-x1" and \
                pods[0].get("status", {}).get("phase") == "Running"

        await eventually(running, what="pod running on the worker")
        # The Machine goes, and its Node with it.
        await call(capi_api, "DELETE", machines + "/edge-1-md-x1")

        async def node_gone() -> bool:
            async with http(capi_api) as s, s.get(
                    capi_api.url + "/api/v1/nodes/edge-1-md-x1") as r:
                return r.status == 404

        await eventually(node_gone, what="node removed")
    finally:
        await kubelet.stop()
