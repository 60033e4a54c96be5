"""The real kubectl against the emulated API: what platform teams will type at it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.apiserver import ApiServer
from testbed.controlplane import build
from testbed.crds import crd_files
from tests.fixtures.kube import serving_watches
from tests.fixtures.tools import kubectl_binary

pytestmark = [pytest.mark.kubectl, pytest.mark.both_backends]

SHARED_CRDS = Path(__file__).resolve().parents[3] / "shared" / "crds"


class Kubectl:
    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}
        self.bin = kubectl_binary()

    async def run(self, *args: str, stdin: str | None = None,
                  check: bool = True, timeout: float = 30) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.bin, *args, env=self.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None),
                                          timeout)
        rc = proc.returncode or 0
        if check and rc != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({rc}):\n{err.decode()}")
        return rc, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        _, out, _ = await self.run(*args, "-o", "json")
        return json.loads(out)


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(kubeconfig, tmp_path)


CAPI_OBJECTS = """
apiVersion: cluster.x-k8s.io/v1beta2
kind: Cluster
metadata:
  name: edge-1
  namespace: fleet
  labels: {site: factory-7}
spec:
  clusterNetwork:
    pods: {cidrBlocks: ["192.168.0.0/16"]}
  controlPlaneRef: {apiGroup: controlplane.cluster.x-k8s.io, kind: KubeadmControlPlane,
                    name: edge-1-cp}
  infrastructureRef: {apiGroup: infrastructure.cluster.x-k8s.io, kind: DevCluster, name: edge-1}
---
apiVersion: infrastructure.cluster.x-k8s.io/v1beta2
kind: DevCluster
metadata: {name: edge-1, namespace: fleet}
spec:
  backend:
    docker: {}
---
apiVersion: infrastructure.cluster.x-k8s.io/v1beta2
kind: DevMachineTemplate
metadata: {name: edge-1-cp, namespace: fleet}
spec:
  template:
    spec:
      backend:
        docker: {}
---
apiVersion: controlplane.cluster.x-k8s.io/v1beta2
kind: KubeadmControlPlane
metadata: {name: edge-1-cp, namespace: fleet}
spec:
  replicas: 1
  version: v1.35.2
  machineTemplate:
    spec:
      infrastructureRef: {apiGroup: infrastructure.cluster.x-k8s.io, kind: DevMachineTemplate,
                          name: edge-1-cp}
  kubeadmConfigSpec:
    users:
    - name: ops
      sshAuthorizedKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample ops@example"]
"""


async def apply_crds(kubectl: Kubectl) -> None:
    args = [a for f in crd_files() for a in ("-f", str(f))]
    await kubectl.run("apply", *args)
    await kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                      "crd/clusters.cluster.x-k8s.io",
                      "crd/kubeadmcontrolplanes.controlplane.cluster.x-k8s.io")


def test_vendored_crds_match_shared_copy() -> None:
    if not SHARED_CRDS.is_dir():
        pytest.skip("the shared CRD folder is not beside this checkout")
    vendored = {f.relative_to(f.parents[1]): f.read_bytes() for f in crd_files()}
    shared = {f.relative_to(SHARED_CRDS): f.read_bytes() for f in SHARED_CRDS.rglob("*.yaml")}
    assert vendored == shared


async def test_version_discovery_and_api_resources(kubectl: Kubectl) -> None:
    # Either backend is the release the testbed pins (testbed/controlplane/go/kubernetes).
    _, out, _ = await kubectl.run("version")
    assert f"Server Version: {build.pinned(build.KUBERNETES)}" in out.splitlines()
    _, out, _ = await kubectl.run("api-resources")
    assert "deployments" in out and "customresourcedefinitions" in out


async def test_apply_real_crds_and_capi_objects(api: ApiServer, kubectl: Kubectl) -> None:
    await apply_crds(kubectl)
    _, out, _ = await kubectl.run("api-resources", "--api-group=cluster.x-k8s.io")
    assert "machinedeployments" in out and "clusters" in out
    await kubectl.run("create", "namespace", "fleet")  # sent as protobuf by kubectl
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=CAPI_OBJECTS)
    assert "cluster.cluster.x-k8s.io/edge-1 created" in out
    assert "kubeadmcontrolplane.controlplane.cluster.x-k8s.io/edge-1-cp created" in out
    # Re-applying the same manifests changes nothing.
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=CAPI_OBJECTS)
    assert out.count("unchanged") == 4
    _, out, _ = await kubectl.run("get", "clusters", "-n", "fleet")
    assert out.splitlines()[0].split()[:2] == ["NAME", "CLUSTERCLASS"]
    assert out.splitlines()[1].startswith("edge-1")
    _, out, _ = await kubectl.run("get", "kcp", "-A")
    assert "edge-1-cp" in out
    got = await kubectl.json("get", "cluster", "edge-1", "-n", "fleet")
    assert got["metadata"]["labels"] == {"site": "factory-7"}
    _, out, _ = await kubectl.run("describe", "cluster", "edge-1", "-n", "fleet")
    assert "Name:         edge-1" in out and "Control Plane Ref:" in out


async def test_apply_invalid_object_names_the_field(kubectl: Kubectl) -> None:
    await apply_crds(kubectl)
    bad = yaml.safe_load_all(CAPI_OBJECTS)
    kcp = next(d for d in bad if d["kind"] == "KubeadmControlPlane")
    kcp["metadata"]["namespace"] = "default"
    kcp["spec"]["replicas"] = "three"
    rc, _, err = await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(kcp), check=False)
    assert rc != 0
    assert "spec.replicas" in err and "must be of type integer" in err
    kcp["spec"]["replicas"] = 1
    kcp["spec"]["bogus"] = True
    rc, _, err = await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(kcp), check=False)
    assert rc != 0 and 'unknown field "spec.bogus"' in err


async def test_patch_merge_and_json_then_delete_and_wait(kubectl: Kubectl) -> None:
    await apply_crds(kubectl)
    await kubectl.run("create", "namespace", "fleet")
    await kubectl.run("apply", "-f", "-", stdin=CAPI_OBJECTS)
    await kubectl.run("patch", "kcp", "edge-1-cp", "-n", "fleet", "--type=merge",
                      "-p", '{"spec":{"replicas":3}}')
    await kubectl.run("patch", "kcp", "edge-1-cp", "-n", "fleet", "--type=json",
                      "-p", '[{"op":"replace","path":"/spec/version","value":"v1.36.0"}]')
    kcp = await kubectl.json("get", "kcp", "edge-1-cp", "-n", "fleet")
    assert kcp["spec"]["replicas"] == 3 and kcp["spec"]["version"] == "v1.36.0"
    assert kcp["metadata"]["generation"] == 3
    rc, _, err = await kubectl.run("patch", "kcp", "edge-1-cp", "-n", "fleet", "--type=json",
                                   "-p", '{"spec":{"replicas":5}}', check=False)
    assert rc != 0
    await kubectl.run("scale", "kcp", "edge-1-cp", "-n", "fleet", "--replicas=5")
    assert (await kubectl.json("get", "kcp", "edge-1-cp", "-n", "fleet"))["spec"][
        "replicas"] == 5
    await kubectl.run("label", "cluster", "edge-1", "-n", "fleet", "tier=gold")
    await kubectl.run("wait", "--for=jsonpath={.metadata.labels.tier}=gold", "--timeout=60s",
                      "cluster/edge-1", "-n", "fleet")
    _, out, _ = await kubectl.run("delete", "kcp", "edge-1-cp", "-n", "fleet")
    assert "deleted" in out
    rc, _, err = await kubectl.run("get", "kcp", "edge-1-cp", "-n", "fleet", check=False)
    assert rc != 0 and "NotFound" in err


async def test_server_side_apply_and_conflict(kubectl: Kubectl) -> None:
    await apply_crds(kubectl)
    await kubectl.run("create", "namespace", "fleet")
    await kubectl.run("apply", "--server-side", "--field-manager=outpost", "-f", "-",
                      stdin=CAPI_OBJECTS)
    await kubectl.run("patch", "kcp", "edge-1-cp", "-n", "fleet", "--type=merge",
                      "--field-manager=ops", "-p", '{"spec":{"replicas":3}}')
    rc, _, err = await kubectl.run("apply", "--server-side", "--field-manager=outpost", "-f",
                                   "-", stdin=CAPI_OBJECTS, check=False)
    assert rc != 0 and "conflict" in err.lower() and ".spec.replicas" in err
    await kubectl.run("apply", "--server-side", "--force-conflicts",
                      "--field-manager=outpost", "-f", "-", stdin=CAPI_OBJECTS)
    kcp = await kubectl.json("get", "kcp", "edge-1-cp", "-n", "fleet")
    assert kcp["spec"]["replicas"] == 1


async def test_get_watch_streams_changes(kubectl: Kubectl) -> None:
    await kubectl.run("create", "configmap", "w1", "--from-literal=a=1")
    proc = await asyncio.create_subprocess_exec(
        kubectl.bin, "get", "configmaps", "-w", "--request-timeout=60s", env=kubectl.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())  # header
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())  # kube-root-ca
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())  # w1
        await kubectl.run("create", "configmap", "w2", "--from-literal=b=2")
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
    finally:
        proc.kill()
        await proc.wait()
    assert lines[0].split()[:2] == ["NAME", "DATA"]
    assert lines[1].startswith("kube-root-ca.crt ")
    assert lines[2].startswith("w1") and lines[3].startswith("w2")


async def test_delete_waits_for_finalizers_and_wait_for_delete(api: ApiServer,
                                                              kubectl: Kubectl) -> None:
    manifest = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n"
                "  finalizers: [example.com/hold]\n")
    await kubectl.run("apply", "-f", "-", stdin=manifest)
    await kubectl.run("delete", "configmap", "held", "--wait=false")
    cm = await kubectl.json("get", "configmap", "held")
    assert cm["metadata"]["deletionTimestamp"]
    waiter = asyncio.ensure_future(kubectl.run("wait", "--for=delete", "configmap/held",
                                               "--timeout=60s"))
    await serving_watches(api, 1)  # kubectl waits on a watch
    await kubectl.run("patch", "configmap", "held", "--type=json",
                      "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    rc, out, _ = await waiter
    assert rc == 0 and "condition met" in out


async def test_typed_create_subcommands(kubectl: Kubectl) -> None:
    await kubectl.run("create", "secret", "generic", "creds", "--from-literal=password=s3cret")
    await kubectl.run("create", "serviceaccount", "agent")
    await kubectl.run("create", "clusterrole", "reader", "--verb=get,list", "--resource=pods")
    await kubectl.run("create", "clusterrolebinding", "agent-reader", "--clusterrole=reader",
                      "--serviceaccount=default:agent")
    secret = await kubectl.json("get", "secret", "creds")
    assert secret["data"] == {"password": "czNjcmV0"} and secret["type"] == "Opaque"
    crb = await kubectl.json("get", "clusterrolebinding", "agent-reader")
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "agent",
                                "namespace": "default"}]


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        env: [{name: A, value: "1"}]
      - name: sidecar
        image: busybox:1
"""


async def test_apply_builtin_twice_uses_strategic_merge(kubectl: Kubectl) -> None:
    await kubectl.run("apply", "-f", "-", stdin=DEPLOYMENT)
    # The second apply is a strategic merge patch: containers merge by name, env by name.
    changed = DEPLOYMENT.replace("nginx:1.27", "nginx:1.28").replace('value: "1"', 'value: "2"')
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=changed)
    assert "deployment.apps/web configured" in out
    d = await kubectl.json("get", "deployment", "web")
    containers = {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}
    assert containers["web"]["image"] == "nginx:1.28"
    assert containers["web"]["env"] == [{"name": "A", "value": "2"}]
    assert containers["sidecar"]["image"] == "busybox:1"
    assert d["metadata"]["generation"] == 2
    await kubectl.run("patch", "deployment", "web", "-p",
                      '{"spec":{"template":{"spec":{"containers":[{"name":"sidecar",'
                      '"image":"busybox:2"}]}}}}')
    d = await kubectl.json("get", "deployment", "web")
    images = [c["image"] for c in d["spec"]["template"]["spec"]["containers"]]
    assert sorted(images) == ["busybox:2", "nginx:1.28"]
