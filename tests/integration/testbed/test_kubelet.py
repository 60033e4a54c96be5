"""The kubelet stand-in runs the real agent from a Deployment, or refuses as a node would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from testbed.apiserver import ApiServer
from testbed.kubelet import Kubelet
from tests.fixtures.site import eventually

TOLERATION = [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
               "effect": "NoSchedule"}]


def deployment(tolerations: list[dict[str, Any]] | None, secret: str = "agent-secret",
               command: str = "outpost-agent") -> dict[str, Any]:
    return {"metadata": {"name": "agent", "namespace": "default"}, "spec": {
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


async def test_runs_the_agent_process_with_its_config(api: ApiServer, tmp_path: Path) -> None:
    reg = api.registry
    reg.create(reg.type_for("", "v1", "configmaps"), "default", {
        "metadata": {"name": "agent-config"},
        "data": {"OUTPOST_AGENT_CLUSTER_NAME": "edge-1",
                 "OUTPOST_AGENT_STATE_DIR": str(tmp_path / "state"),
                 "OUTPOST_AGENT_NATS_SERVERS": "nats://127.0.0.1:1"}})
    reg.create(reg.type_for("", "v1", "secrets"), "default", {
        "metadata": {"name": "agent-secret"},
        "stringData": {"public-keys": "MCowBQYDK2VwAyEA\n"}})
    kubelet = Kubelet(reg, tmp_path / "kubelet", api.url)
    kubelet.start()
    try:
        node = api.store.get("nodes", ("", "cp-a"))
        assert node is not None and node["spec"]["taints"][0]["effect"] == "NoSchedule"
        # Without the control-plane toleration the pod never schedules on the only node.
        reg.create(reg.type_for("apps", "v1", "deployments"), "default", deployment(None))

        def status() -> dict[str, Any]:
            d = api.store.get("deployments.apps", ("default", "agent"))
            return (d or {}).get("status") or {}

        await eventually(lambda: "untolerated taint" in str(status()), what="unschedulable")
        assert not [p for p in kubelet.pods() if p.process is not None]
        # With it, the real agent process starts; it reads its mounted key file and exits
        # with a clear error because that key is not a valid Ed25519 key.
        d = api.registry.get(reg.type_for("apps", "v1", "deployments"), "default", "agent")
        d["spec"]["template"]["spec"]["tolerations"] = TOLERATION
        reg.update(reg.type_for("apps", "v1", "deployments"), "default", "agent", d)
        await eventually(lambda: any(p.process is not None for p in kubelet.pods()),
                         what="process started")
        pod = next(p for p in kubelet.pods() if p.process is not None)
        assert pod.process is not None
        await asyncio.wait_for(pod.process.wait(), 60)
        assert pod.log_file is not None
        text = pod.log_file.read_text()
        assert "cannot start" in text and pod.process.returncode == 2
    finally:
        await kubelet.stop()


async def test_missing_secret_fails_the_pod(api: ApiServer, tmp_path: Path) -> None:
    reg = api.registry
    reg.create(reg.type_for("", "v1", "configmaps"), "default", {
        "metadata": {"name": "agent-config"}, "data": {}})
    kubelet = Kubelet(reg, tmp_path / "kubelet", api.url)
    kubelet.start()
    try:
        reg.create(reg.type_for("apps", "v1", "deployments"), "default",
                   deployment(TOLERATION, secret="nope"))
        await eventually(lambda: 'secret "nope" not found' in str(
            (api.store.get("deployments.apps", ("default", "agent")) or {}).get("status")),
            what="pod error reported")
    finally:
        await kubelet.stop()
