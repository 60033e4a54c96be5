"""The real control plane built from the pinned Go modules: it starts on loopback, kubectl and
kubernetes_asyncio talk to it unchanged, its controllers act, and the CEL rules of the real CAPI
CRDs are enforced (which the emulator does not do)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from testbed.controlplane.launcher import ControlPlane, built_binaries
from testbed.crds import crd_files
from tests.fixtures.tools import kubectl_binary


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def real(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(tmp_path_factory.mktemp("real"), built_binaries(), name="real")
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


def kubectl(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl_binary(), "--kubeconfig", str(cp.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120, check=False)


async def api(cp: ControlPlane) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


async def eventually(fn: Any, timeout: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await fn()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in {timeout:.0f}s; last: {result!r}")
        await asyncio.sleep(0.2)


@pytest.mark.asyncio(loop_scope="module")
async def test_kubectl_sees_the_real_server(real: ControlPlane) -> None:
    out = await asyncio.to_thread(kubectl, real, "version", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["serverVersion"]["gitVersion"] == "v1.37.2"


@pytest.mark.asyncio(loop_scope="module")
async def test_the_real_controllers_act(real: ControlPlane) -> None:
    async with await api(real) as c:
        apps = client.AppsV1Api(c)
        await apps.create_namespaced_deployment("default", {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})

        async def replica_set() -> bool:
            found = await apps.list_namespaced_replica_set("default", label_selector="app=web")
            return bool(found.items) and found.items[0].spec.replicas == 2
        await eventually(replica_set)  # the real Deployment controller made it

        async def default_account() -> bool:
            found = await client.CoreV1Api(c).list_namespaced_service_account("default")
            return any(a.metadata.name == "default" for a in found.items)
        await eventually(default_account)  # the real service-account controller


@pytest.mark.asyncio(loop_scope="module")
async def test_a_cel_rule_of_the_capi_crds_is_enforced(real: ControlPlane) -> None:
    applied = await asyncio.to_thread(
        kubectl, real, "apply", "--server-side", *(f"-f={f}" for f in crd_files("cluster-api")))
    assert applied.returncode == 0, applied.stderr
    waited = await asyncio.to_thread(
        kubectl, real, "wait", "--for=condition=Established", "--timeout=90s",
        "crd/kubeadmcontrolplanes.controlplane.cluster.x-k8s.io")
    assert waited.returncode == 0, waited.stderr
    kcp = {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
           "metadata": {"name": "dup"},
           "spec": {"replicas": 1, "version": "v1.35.2",
                    "machineTemplate": {"spec": {"infrastructureRef": {
                        "apiGroup": "infrastructure.cluster.x-k8s.io",
                        "kind": "DevMachineTemplate", "name": "t"}}},
                    "kubeadmConfigSpec": {"clusterConfiguration": {"apiServer": {"extraArgs": [
                        {"name": "v", "value": "1"}, {"name": "v", "value": "2"}]}}}}}
    async with await api(real) as c:
        with pytest.raises(ApiException) as refused:
            await client.CustomObjectsApi(c).create_namespaced_custom_object(
                "controlplane.cluster.x-k8s.io", "v1beta2", "default", "kubeadmcontrolplanes",
                kcp)
    assert refused.value.status == 422
    assert "extraArgs name must be unique" in (refused.value.body or "")


def test_the_binaries_are_the_pinned_ones() -> None:
    b = built_binaries()
    out = subprocess.run([str(b.kube_apiserver), "--version"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.stdout.strip() == "Kubernetes v1.37.2"
    assert isinstance(b.etcd, Path) and b.etcd.is_file()
