"""The management plane as platform teams drive it: `kubectl apply -f` of an OutpostCluster
(GitOps) and `outpostctl`, with the gateway running as its own process on the testbed."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.kube import ApiKubeClient, NotFound
from agent.kube import resources as r
from mgmt_gateway.clusters import API_VERSION, OUTPOST_CLUSTER
from testbed.backends import Backend
from testbed.capi import SimConfig
from testbed.env import Testbed
from tests.e2e.test_gateway_crashes import gateway_env
from tests.fixtures.site import eventually
from tests.fixtures.tools import kubectl_binary
from tests.integration.gateway.test_outpostctl import Ctl

pytestmark = pytest.mark.both_backends

NS = "fleet"
NAME = "edge-1"
STEPS = ["CapiCreated", "FirstControlPlaneReady", "AgentInstalled", "Pivoted", "Managed"]


def manifest(workers: int) -> str:
    return yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": API_VERSION, "kind": "OutpostCluster",
         "metadata": {"name": NAME, "namespace": NS}, "spec": {
             "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
             "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
             "workers": [{"name": "line-a", "replicas": workers,
                          "machine": {"provider": "dev"}}],
             "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@site"]}}])


async def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        kubectl_binary(), *args, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


@asynccontextmanager
async def gateway_process(tb: Testbed, state: Path) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mgmt_gateway.daemon", env=gateway_env(tb, state),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def reasons(mgmt: ApiKubeClient) -> set[str]:
    """The reasons of the Events recorded on the OutpostCluster."""
    return {e["reason"] for e in (await mgmt.list(r.EVENT, NS)).items
            if e["involvedObject"]["kind"] == "OutpostCluster"
            and e["involvedObject"]["name"] == NAME}


def status(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def ready(obj: dict[str, Any]) -> bool:
    conds = status(obj).get("conditions") or ()
    return status(obj).get("phase") == "Managed" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds)


async def test_kubectl_apply_drives_the_six_steps_and_gitops_edits(tmp_path: Path,
        backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5),
                       api=backend) as tb:
        kc = tb.management_kubeconfig
        mgmt = await ApiKubeClient.from_kubeconfig(kc)
        workload = await ApiKubeClient.from_kubeconfig(tb.workload_kubeconfig)
        try:
            out = await kubectl(kc, "apply", "-f", "-", stdin=manifest(workers=1))
            assert f"outpostcluster.outpost.io/{NAME} created" in out
            async with gateway_process(tb, tmp_path / "gw"):

                async def converged(revision: int) -> dict[str, Any] | None:
                    obj = await mgmt.get(OUTPOST_CLUSTER, NAME, NS)
                    st = status(obj)
                    return obj if ready(obj) and st.get("appliedRevision") == revision else None

                obj = await eventually(lambda: converged(1), timeout=120,
                                       what="edge-1 Managed and Ready at revision 1")
                st = status(obj)
                assert [s["phase"] for s in st["steps"]] == STEPS
                assert all(s.get("finishedAt") for s in st["steps"][:-1])
                assert (st["desiredRevision"], st["publishedRevision"]) == (1, 1)
                assert st["observedGeneration"] == obj["metadata"]["generation"]
                assert set(STEPS) <= await reasons(mgmt), "an Event per step"
                table = await kubectl(kc, "get", "outpostclusters", "-n", NS)
                header, row = table.splitlines()
                assert header.split() == ["NAME", "PHASE", "VERSION", "DESIRED", "APPLIED",
                                          "CONNECTED", "AGE"]
                assert row.split()[:6] == [NAME, "Managed", "v1.35.2", "1", "1", "true"]

                # GitOps: applying the same YAML again changes nothing, publishes nothing.
                out = await kubectl(kc, "apply", "-f", "-", stdin=manifest(workers=1))
                assert f"outpostcluster.outpost.io/{NAME} unchanged" in out
                await asyncio.sleep(2)
                again = await mgmt.get(OUTPOST_CLUSTER, NAME, NS)
                assert again["metadata"]["generation"] == obj["metadata"]["generation"]
                for key in ("desiredRevision", "publishedRevision", "publishedKvRevision",
                            "specHash"):
                    assert status(again)[key] == st[key], key

                # An edit of spec.workers is a new revision, published and applied.
                out = await kubectl(kc, "apply", "-f", "-", stdin=manifest(workers=2))
                assert f"outpostcluster.outpost.io/{NAME} configured" in out
                obj = await eventually(lambda: converged(2), timeout=120,
                                       what="edge-1 Ready at revision 2")
                assert (status(obj)["desiredRevision"], status(obj)["publishedRevision"]) == (
                    2, 2)
                assert {"RevisionCreated", "Published"} <= await reasons(mgmt)
                md = await workload.get(r.MACHINE_DEPLOYMENT, f"{NAME}-line-a", NS)
                assert md["spec"]["replicas"] == 2

                # Deleting the resource retires the cluster (the finalizer goes last).
                await kubectl(kc, "delete", "outpostcluster", NAME, "-n", NS, "--wait=false")

                async def gone() -> bool:
                    try:
                        await mgmt.get(OUTPOST_CLUSTER, NAME, NS)
                    except NotFound:
                        return True
                    return False

                await eventually(gone, timeout=60, what="edge-1 retired and gone")
                with pytest.raises(NotFound):
                    await mgmt.get(r.SECRET, f"outpost-kubeconfig-{NAME}", NS)
        finally:
            await mgmt.close()
            await workload.close()


async def test_outpostctl_create_wait_follows_the_steps(tmp_path: Path,
                                                        backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5),
                       api=backend) as tb:
        ctl = Ctl(tb.management_kubeconfig, tmp_path)
        namespace, cluster = manifest(workers=1).split("---\n")
        await kubectl(tb.management_kubeconfig, "apply", "-f", "-", stdin=namespace)
        spec_file = tmp_path / "edge-1.yaml"
        spec_file.write_text(cluster)
        async with gateway_process(tb, tmp_path / "gw"):
            rc, out, err = await ctl("create", "cluster", "-f", str(spec_file), "--wait",
                                     "--timeout", "150", timeout=180)
            assert rc == 0, f"{out}\n{err}"
            lines = out.splitlines()
            assert lines[0] == f"outpostcluster.outpost.io/{NAME} created"
            done = [line.split()[1] for line in lines if line.startswith("  ✓ ")]
            assert done == STEPS, out
            assert lines[-1].startswith(f"{NAME} is Ready (")

            rc, out, err = await ctl("get", "clusters", "-n", NS)
            assert rc == 0, err
            assert out.splitlines()[1].split()[:8] == [NAME, "Managed", "v1.35.2", "1", "1",
                                                       "1", "true", "True"]
            rc, out, _ = await ctl("move-plan", NAME, "-n", NS)
            assert rc == 0 and "already pivoted" in out
            rc, out, err = await ctl("scale", NAME, "-n", NS, "--workers", "line-a=2")
            assert rc == 0, err
            mgmt = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
            try:
                async def published() -> bool:
                    st = status(await mgmt.get(OUTPOST_CLUSTER, NAME, NS))
                    return st.get("publishedRevision") == 2
                await eventually(published, timeout=60, what="revision 2 published")
            finally:
                await mgmt.close()
            rc, out, err = await ctl("describe", "cluster", NAME, "-n", NS)
            assert rc == 0, err
            for text in ["OutpostCluster fleet/edge-1", "Revisions: desired 2 · published 2",
                         "Bootstrap: 5 step(s)", "Pivoted", "Events (last"]:
                assert text in out, out
