"""`outpostctl` as a user runs it: a subprocess with a kubeconfig, against a management API
serving the OutpostCluster CRDs; its output and exit codes. (The gateway's side, a cluster
followed from `create --wait` to Ready, is in tests/e2e/test_outpost_resources.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.kube import ApiKubeClient
from agent.kube import resources as r
from mgmt_gateway.clusters import API_VERSION, CLUSTER_PROFILE, OUTPOST_CLUSTER
from testbed.backends import KubeApi
from testbed.crds import gateway_crd_files
from tests.fixtures.site import eventually

pytestmark = pytest.mark.both_backends

NS = "fleet"


def outpostctl_binary() -> list[str]:
    script = Path(sys.executable).parent / "outpostctl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mgmt_gateway.ctl"]


class Ctl:
    def __init__(self, kubeconfig: Path | None, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.env["HOME"] = str(home)
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)

    async def __call__(self, *args: str, stdin: str | None = None,
                       timeout: float = 60) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *outpostctl_binary(), *args, env=self.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"outpostctl {' '.join(args)} ran over {timeout}s") from None
        return proc.returncode or 0, out.decode(), err.decode()


def cluster(name: str, *, replicas: int = 1, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": "OutpostCluster", "metadata": meta, "spec": {
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": replicas, "machine": {"provider": "dev"}},
        "workers": [{"name": "line-a", "replicas": 2, "machine": {"provider": "dev"}}]}}


@pytest.fixture
async def mgmt(api: KubeApi, tmp_path: Path) -> AsyncIterator[tuple[ApiKubeClient, Ctl]]:
    await api.install_crds(gateway_crd_files())
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", "test")
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    await kube.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": NS}}, field_manager="test")
    try:
        yield kube, Ctl(kubeconfig, tmp_path)
    finally:
        await kube.close()


async def test_every_command_has_help(tmp_path: Path) -> None:
    ctl = Ctl(None, tmp_path)
    for cmd in (["--help"], ["create", "cluster", "--help"], ["get", "clusters", "--help"],
                ["describe", "cluster", "--help"], ["scale", "--help"], ["upgrade", "--help"],
                ["rotate-certs", "--help"], ["set", "profile", "--help"],
                ["move-plan", "--help"]):
        rc, out, err = await ctl(*cmd)
        assert rc == 0, (cmd, err)
        assert "Usage: outpostctl" in out and "--help" in out, (cmd, out)
    # Shell completion, as the installed bash script drives it (no shell detection needed).
    ctl.env["_OUTPOSTCTL_COMPLETE"] = "source_bash"
    rc, out, err = await ctl()
    assert rc == 0 and "_outpostctl_completion" in out, err
    ctl.env.update(_OUTPOSTCTL_COMPLETE="complete_bash", COMP_WORDS="outpostctl sc",
                   COMP_CWORD="1")
    rc, out, err = await ctl()
    assert rc == 0 and out.split() == ["scale"], err
    for var in ("_OUTPOSTCTL_COMPLETE", "COMP_WORDS", "COMP_CWORD"):
        del ctl.env[var]
    rc, _, err = await ctl("frobnicate")
    assert rc == 2 and "frobnicate" in err


async def test_without_a_kubeconfig_it_says_what_to_pass(tmp_path: Path) -> None:
    rc, _, err = await Ctl(None, tmp_path)("get", "clusters")
    assert rc == 2
    assert "no kubeconfig" in err and "--kubeconfig" in err
    # A KUBECONFIG naming no file never falls back to ~/.kube/config (another cluster).
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    rc, _, err = await Ctl(tmp_path / "typo", tmp_path)("get", "clusters")
    assert rc == 2 and "KUBECONFIG names no file that exists" in err


async def test_kubeconfig_files_are_merged_and_the_context_namespace_is_the_default(
        mgmt: tuple[ApiKubeClient, Ctl], api: KubeApi, tmp_path: Path) -> None:
    kube, _ = mgmt
    await kube.create(OUTPOST_CLUSTER, cluster("edge-a", namespace=NS))
    doc = api.kubeconfig("test")
    for c in doc["contexts"]:
        c["context"]["namespace"] = NS
    current = doc.pop("current-context")
    clusters_only = tmp_path / "clusters.kubeconfig"
    clusters_only.write_text(yaml.safe_dump({**doc, "contexts": [], "users": []}))
    rest = tmp_path / "rest.kubeconfig"
    rest.write_text(yaml.safe_dump({**doc, "clusters": [], "current-context": current}))
    ctl = Ctl(None, tmp_path)
    ctl.env["KUBECONFIG"] = os.pathsep.join([str(tmp_path / "gone"), str(clusters_only),
                                             str(rest)])
    rc, out, err = await ctl("get", "clusters")
    assert rc == 0, err
    assert out.splitlines()[1].split()[0] == "edge-a"


async def test_create_get_and_describe(mgmt: tuple[ApiKubeClient, Ctl], tmp_path: Path) -> None:
    kube, ctl = mgmt
    docs = tmp_path / "clusters.yaml"
    docs.write_text(yaml.safe_dump_all([cluster("edge-a"), cluster("edge-b", namespace=NS)]))
    rc, out, err = await ctl("create", "cluster", "-f", str(docs), "-n", NS)
    assert rc == 0, err
    assert out.splitlines() == ["outpostcluster.outpost.io/edge-a created",
                                "outpostcluster.outpost.io/edge-b created"]
    rc, _, err = await ctl("create", "cluster", "-f", str(docs), "-n", NS)
    assert rc == 1 and "edge-a already exists in namespace fleet" in err

    rc, out, err = await ctl("get", "clusters", "-n", NS)
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "PHASE", "VERSION", "DESIRED", "PUBLISHED", "APPLIED",
                              "CONNECTED", "READY", "AGE"]
    assert [row.split()[:3] for row in rows] == [["edge-a", "Pending", "v1.35.2"],
                                                 ["edge-b", "Pending", "v1.35.2"]]
    rc, out, err = await ctl("get", "clusters", "-A", "-o", "json")
    assert rc == 0, err
    listed = json.loads(out)
    assert listed["kind"] == "List"
    assert all("managedFields" not in o["metadata"] for o in listed["items"])
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed["items"]} == {
        (NS, "edge-a"), (NS, "edge-b")}
    rc, out, _ = await ctl("get", "clusters", "edge-b", "-n", NS, "-o", "yaml")
    assert rc == 0 and yaml.safe_load(out)["metadata"]["name"] == "edge-b"
    rc, _, err = await ctl("get", "clusters", "edge-z", "-n", NS)
    assert rc == 1 and "no OutpostCluster 'edge-z' in namespace fleet" in err
    rc, _, err = await ctl("get", "clusters", "edge-b", "-A")
    assert rc == 2 and "use -n NAMESPACE" in err
    rc, _, err = await ctl("get", "clusters", "-n", "empty")
    assert rc == 0 and "No OutpostClusters found in namespace empty" in err

    # What the gateway reports shows up: phase, revisions, Ready and its message, steps.
    obj = await kube.get(OUTPOST_CLUSTER, "edge-a", NS)
    created = datetime.fromisoformat(obj["metadata"]["creationTimestamp"].replace("Z", "+00:00"))

    def at(seconds: float) -> str:
        return (created + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    obj["status"] = {
        "phase": "Managed", "desiredRevision": 2, "publishedRevision": 2, "appliedRevision": 1,
        "connected": True, "lastSeen": "2026-01-01T00:00:00Z", "agentVersion": "0.1.0",
        "steps": [{"phase": "CapiCreated", "startedAt": at(2), "finishedAt": at(9),
                   "durationSeconds": 7.0, "detail": "4 CAPI objects applied"},
                  {"phase": "FirstControlPlaneReady", "startedAt": at(9)}],
        "conditions": [{"type": "Ready", "status": "False", "reason": "WaitingForAgent",
                        "message": "revision 2 is published; the agent reports 1 applied",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"},
                       {"type": "AddonsReady", "status": "False", "reason": "HelmFailed",
                        "message": "helm: [/bad] [red]chart[/red] not found",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    await kube.replace_status(OUTPOST_CLUSTER, obj, field_manager="test")
    rc, out, err = await ctl("get", "clusters", "-n", NS, "-o", "wide")
    assert rc == 0, err
    row = next(line.split() for line in out.splitlines() if line.startswith("edge-a"))
    assert row[1:8] == ["Managed", "v1.35.2", "2", "2", "1", "true", "False"]
    assert row[-1] == "WaitingForAgent"
    rc, out, err = await ctl("describe", "cluster", "edge-a", "-n", NS)
    assert rc == 0, err
    for text in ("OutpostCluster fleet/edge-a", "Ready False WaitingForAgent: revision 2 is "
                 "published; the agent reports 1 applied", "desired 2 · published 2 · applied 1",
                 "CapiCreated  2.0s  4 CAPI objects applied",
                 "FirstControlPlaneReady  7.0s",
                 "AddonsReady False HelmFailed: helm: [/bad] [red]chart[/red] not found",
                 "workers line-a 2"):
        assert text in out, out
    rc, _, err = await ctl("describe", "cluster", "nope", "-n", NS)
    assert rc == 1 and "no OutpostCluster 'nope'" in err


async def test_a_bad_file_creates_nothing(mgmt: tuple[ApiKubeClient, Ctl],
                                          tmp_path: Path) -> None:
    kube, ctl = mgmt
    bad = cluster("edge-c", replicas=2)
    cases = {
        "missing.yaml": None,
        "configmap.yaml": [cluster("edge-c"), {"apiVersion": "v1", "kind": "ConfigMap",
                                               "metadata": {"name": "x"}}],
        "even.yaml": [cluster("edge-c"), bad],
        "garbled.yaml": "kind: [",
        "elsewhere.yaml": [cluster("edge-c", namespace="other")],
        "skewed.yaml": [{**cluster("edge-c"), "spec": {**cluster("edge-c")["spec"], "workers": [
            {"name": "a", "replicas": 1, "version": "v1.36.0", "machine": {"provider": "dev"}}
        ]}}],
    }
    expected = {"missing.yaml": "cannot read", "configmap.yaml": "is a ConfigMap, not an "
                "OutpostCluster", "even.yaml": "item 2 (edge-c)", "garbled.yaml": "not "
                "valid YAML", "elsewhere.yaml": "is in namespace other, not fleet (-n)",
                "skewed.yaml": "newer than the control plane"}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            path.write_text(yaml.safe_dump_all(content))
        rc, _, err = await ctl("create", "cluster", "-f", str(path), "-n", NS)
        assert rc == 2, (name, err)
        assert expected[name] in err, (name, err)
    assert (await kube.list(OUTPOST_CLUSTER, NS)).items == []
    rc, out, err = await ctl("create", "cluster", "-f", "-", "-n", NS,
                             stdin=yaml.safe_dump(cluster("edge-c")))
    assert rc == 0 and "edge-c created" in out, err
    # What `get -o yaml` prints can be fed back (a List, server fields dropped).
    rc, listed, err = await ctl("get", "clusters", "-n", NS, "-o", "yaml")
    assert rc == 0, err
    await kube.delete(OUTPOST_CLUSTER, "edge-c", NS)

    async def deleted() -> bool:
        return not (await kube.list(OUTPOST_CLUSTER, NS)).items
    await eventually(deleted)
    rc, out, err = await ctl("create", "cluster", "-f", "-", stdin=listed)
    assert rc == 0 and "edge-c created" in out, err


async def test_wait_ends_when_the_gateway_refuses_the_spec(mgmt: tuple[ApiKubeClient, Ctl],
                                                           tmp_path: Path) -> None:
    kube, ctl = mgmt
    waiting = asyncio.create_task(ctl("create", "cluster", "-f", "-", "-n", NS, "--wait",
                                      "--timeout", "50", stdin=yaml.safe_dump(
                                          cluster("edge-d")), timeout=80))

    async def created() -> dict[str, Any] | None:
        found = [o for o in (await kube.list(OUTPOST_CLUSTER, NS)).items
                 if o["metadata"]["name"] == "edge-d"]
        return found[0] if found else None

    try:
        obj = await eventually(created)
        obj["status"] = {"conditions": [{
            "type": "SpecAccepted", "status": "False", "reason": "ProfileNotFound",
            "message": "no ClusterProfile base 1.0",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": obj["metadata"]["generation"]}]}
        await kube.replace_status(OUTPOST_CLUSTER, obj, field_manager="test")
    finally:
        rc, out, err = await waiting
    assert rc == 1, (out, err)
    assert "edge-d failed: ProfileNotFound: no ClusterProfile base 1.0" in err


async def test_day2_edits(mgmt: tuple[ApiKubeClient, Ctl]) -> None:
    kube, ctl = mgmt
    await kube.create(OUTPOST_CLUSTER, cluster("edge-a", namespace=NS))

    async def spec() -> dict[str, Any]:
        return dict((await kube.get(OUTPOST_CLUSTER, "edge-a", NS))["spec"])

    rc, out, err = await ctl("scale", "edge-a", "-n", NS, "--control-plane", "3",
                             "--workers", "line-a=4")
    assert rc == 0, err
    assert "control plane 1 → 3; workers line-a 2 → 4" in out
    s = await spec()
    assert s["controlPlane"]["replicas"] == 3 and s["workers"][0]["replicas"] == 4
    generation = (await kube.get(OUTPOST_CLUSTER, "edge-a", NS))["metadata"]["generation"]
    rc, out, _ = await ctl("scale", "edge-a", "-n", NS, "--workers", "line-a=4")
    assert rc == 0 and "nothing to change" in out
    assert (await kube.get(OUTPOST_CLUSTER, "edge-a", NS))["metadata"]["generation"] == \
        generation

    for args, code, text in [
        (["scale", "edge-a", "--workers", "nope=1"], 1, "no worker pool named nope (pools: "
                                                        "line-a)"),
        (["scale", "edge-a", "--control-plane", "2"], 2, "1, 3 or 5"),
        (["scale", "edge-a"], 2, "--control-plane"),
        (["scale", "edge-a", "--workers", "line-a"], 2, "POOL=REPLICAS"),
        (["upgrade", "edge-a", "v1.34.0"], 1, "does not support downgrading"),
        (["upgrade", "edge-a", "v1.37.0"], 1, "goes through v1.36: kubeadm upgrades one minor "
                                               "at a time, so name the tested v1.36 release"),
        (["upgrade", "edge-a", "v1.37.0", "--via", "v1.36"], 2, "not a Kubernetes version"),
        (["upgrade", "edge-a", "1.36"], 2, "not a Kubernetes version"),
        (["upgrade", "edge-a", "v1.36.0"], 1, "the gateway has not taken in the last change"),
        (["set", "profile", "edge-a", "base", "1.0.0"], 1, "no ClusterProfile base 1.0.0"),
        (["rotate-certs", "edge-z"], 1, "no OutpostCluster 'edge-z'"),
    ]:
        rc, _, err = await ctl(*args, "-n", NS)
        assert rc == code, (args, err)
        assert text in err, (args, err)
    assert (await spec())["controlPlane"]["replicas"] == 3

    # Converged (as the gateway reports it): the next minor may go.
    obj = await kube.get(OUTPOST_CLUSTER, "edge-a", NS)
    obj["status"] = {"observedGeneration": obj["metadata"]["generation"],
                     "desiredRevision": 2, "appliedRevision": 2}
    await kube.replace_status(OUTPOST_CLUSTER, obj, field_manager="test")
    rc, out, err = await ctl("upgrade", "edge-a", "v1.36.0", "-n", NS)
    assert rc == 0 and "Kubernetes v1.35.2 → v1.36.0" in out, err
    assert (await spec())["kubernetesVersion"] == "v1.36.0"
    rc, out, err = await ctl("approve", "edge-a", "upgrade", "--by", "ops@site", "-n", NS)
    assert rc == 0 and "approved the upgrade to v1.36.0 (by ops@site, as of revision 2)" in out, \
        err
    (approval,) = (await spec())["approvals"]
    assert approval["operation"] == "upgrade" and approval["subject"].startswith("sha256:")
    rc, out, err = await ctl("approve", "edge-a", "upgrade", "--by", "ops@site", "-n", NS)
    assert rc == 0 and "nothing to change" in out, err
    rc, _, err = await ctl("approve", "edge-a", "everything", "-n", NS)
    assert rc == 2 and "not one of upgrade, repave, rotation" in err
    rc, out, err = await ctl("rotate-certs", "edge-a", "-n", NS)
    assert rc == 0, err
    assert (await spec())["certificates"]["rotateAfter"].endswith("Z")
    await kube.create(CLUSTER_PROFILE, {
        "apiVersion": API_VERSION, "kind": "ClusterProfile",
        "metadata": {"name": "base-1-0-0", "namespace": NS},
        "spec": {"name": "base", "version": "1.0.0", "addons": []}})
    rc, out, err = await ctl("set", "profile", "edge-a", "base", "1.0.0", "-n", NS)
    assert rc == 0 and "profile none → base 1.0.0" in out, err
    assert (await spec())["profile"] == {"name": "base", "version": "1.0.0"}


async def test_without_the_crds_it_says_what_to_apply(api: KubeApi, tmp_path: Path) -> None:
    ctl = Ctl(api.write_kubeconfig(tmp_path / "kubeconfig", "test"), tmp_path)
    rc, _, err = await ctl("get", "clusters", "-A")
    assert rc == 1
    assert "does not serve OutpostClusters" in err and "manifests/gateway/crds" in err
