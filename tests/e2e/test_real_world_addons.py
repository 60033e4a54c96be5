"""A profile of real-world add-ons, end to end on a cluster API (the real control plane too, so
CRD validation, the real controllers and the webhook configuration are in the loop):

- order 0, monitoring: the prometheus-operator stack (ten CRDs, over 1 MB, the Prometheus CRD
  alone ~480 KB as JSON) fetched by the gateway from an http URL pinned by sha256, its custom
  resources applied once their CRDs are Established;
- order 1, ingress: ingress-nginx with its admission webhook, a local file uploaded to the
  gateway by `outpostctl profile push`, the webhook registered only once its Deployment is
  available, the self-deleting admission Jobs run once;
- order 2, logging: Vector's DaemonSet, inline; and a Helm chart (the secrets-store CSI driver,
  with a CRD and pre-install hooks) rendered by the gateway's helm from a chart repository the
  test serves over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from agent.kube import ApiKubeClient, Resource
from agent.kube import resources as r
from agent.spec.addons import digest_of
from mgmt_gateway.clusters import API_VERSION, OUTPOST_CLUSTER
from mgmt_gateway.render.yamldocs import parse_documents
from testbed.backends import Backend
from testbed.capi import SimConfig
from testbed.controlplane.helm import built_helm
from testbed.env import Testbed
from testbed.gateway import GatewayProcess
from tests.e2e.test_gateway_crashes import gateway_env
from tests.e2e.test_outpost_resources import kubectl
from tests.fixtures.site import eventually
from tests.integration.gateway.test_outpostctl import Ctl

pytestmark = pytest.mark.both_backends

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "addons"
NS = "fleet"
NAME = "edge-1"
CRD = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               "CustomResourceDefinition", namespaced=False)
WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                    "ValidatingWebhookConfiguration", namespaced=False)
RULES = Resource("monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule")
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
CSI = Resource("storage.k8s.io", "v1", "csidrivers", "CSIDriver", namespaced=False)


@contextlib.asynccontextmanager
async def serve(root: Path) -> AsyncIterator[str]:
    """`root` over HTTP (a chart repository and a manifest, as a platform team hosts them)."""
    app = web.Application()
    app.router.add_static("/", root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def helm(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(str(built_helm()), *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()


def monitoring_yaml() -> str:
    return "\n---\n".join((FIXTURES / "monitoring" / f).read_text() for f in (
        "00-setup.yaml", "01-operator.yaml", "02-custom-resources.yaml"))


def profile(base: str, ingress: str) -> dict[str, Any]:
    """The profile; `ingress` is the digest of its uploaded manifests."""
    monitoring = monitoring_yaml().encode()
    vector = parse_documents((FIXTURES / "logging" / "vector-agent.yaml").read_text(),
                             "vector")
    return {"apiVersion": API_VERSION, "kind": "ClusterProfile",
            "metadata": {"name": "edge-1-0", "namespace": NS},
            "spec": {"name": "edge", "version": "1.0", "addons": [
                {"name": "monitoring", "version": "0.18.0", "order": 0,
                 "namespace": "monitoring", "url": f"{base}/monitoring.yaml",
                 "sha256": digest_of(monitoring), "timeoutSeconds": 300},
                {"name": "ingress", "version": "1.15.1", "order": 1,
                 "namespace": "ingress-nginx", "upload": ingress, "timeoutSeconds": 300},
                {"name": "logging", "version": "0.56.0", "order": 2, "namespace": "default",
                 "manifests": vector},
                {"name": "secrets-store", "version": "1.6.0", "order": 2,
                 "namespace": "kube-system", "helm": {
                     "repo": f"{base}/charts/", "chart": "secrets-store-csi-driver",
                     "version": "1.6.0"}}]}}


def cluster() -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "OutpostCluster",
            "metadata": {"name": NAME, "namespace": NS}, "spec": {
                "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
                "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
                "workers": [{"name": "pool", "replicas": 1, "machine": {"provider": "dev"}}],
                "profile": {"name": "edge", "version": "1.0"},
                "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@site"]}}


@pytest.mark.timeout(900)
async def test_a_real_world_profile_in_three_orders(tmp_path: Path, backend: Backend) -> None:
    web_root = tmp_path / "www"
    (web_root / "charts").mkdir(parents=True)
    (web_root / "monitoring.yaml").write_text(monitoring_yaml())
    chart = tmp_path / "chart"
    shutil.copytree(FIXTURES / "charts" / "secrets-store-csi-driver", chart)
    await helm("package", str(chart), "-d", str(web_root / "charts"))
    async with serve(web_root) as base, Testbed(
            tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5), api=backend) as tb:
        await helm("repo", "index", str(web_root / "charts"), "--url", f"{base}/charts")
        kc = tb.management_kubeconfig
        mgmt = await ApiKubeClient.from_kubeconfig(kc)
        workload = await ApiKubeClient.from_kubeconfig(tb.workload_kubeconfig)
        try:
            async with GatewayProcess(gateway_env(tb, tmp_path / "gw")) as gw:
                # The platform team publishes the profile; ingress is a local file, uploaded.
                prof = profile(base, "")
                ingress = next(a for a in prof["spec"]["addons"] if a["name"] == "ingress")
                del ingress["upload"]
                ingress["manifestsFile"] = str(FIXTURES / "ingress" / "deploy-baremetal.yaml")
                (tmp_path / "profile.yaml").write_text(yaml.safe_dump(prof))
                ctl = Ctl(kc, tmp_path)
                ctl.env.update(OUTPOST_GATEWAY_URL=f"http://127.0.0.1:{gw.port}",
                               OUTPOST_GATEWAY_TOKEN="t")
                await kubectl(kc, "create", "namespace", NS)

                async def pushed() -> str | None:
                    code, out, err = await ctl("profile", "push", "-f",
                                               str(tmp_path / "profile.yaml"), "-n", NS)
                    if code == 1 and "unavailable" in err:  # NATS not reached yet: retry
                        return None
                    assert code == 0, err
                    return out

                out = await eventually(pushed, timeout=30, what="the profile pushed")
                assert "uploaded add-on ingress (deploy-baremetal.yaml): sha256:" in out
                assert "clusterprofile.outpost.io/edge-1-0 created" in out
                code, out, err = await ctl("profile", "push", "-f",
                                           str(tmp_path / "profile.yaml"), "-n", NS)
                assert (code, out.splitlines()[-1]) == (
                    0, "clusterprofile.outpost.io/edge-1-0 unchanged"), err
                await kubectl(kc, "apply", "--server-side", "-f", "-",
                              stdin=yaml.safe_dump(cluster()))

                async def ready() -> dict[str, Any] | None:
                    st = (await mgmt.get(OUTPOST_CLUSTER, NAME, NS)).get("status") or {}
                    phases = {a["name"]: a["phase"] for a in st.get("addons") or ()}
                    bad = {n: a for n, a in phases.items() if a in ("Failed", "Degraded")}
                    assert not bad, st.get("addons")
                    if phases == dict.fromkeys(
                            ("monitoring", "ingress", "logging", "secrets-store"), "Ready"):
                        return st
                    print(st.get("addons"), [c for c in st.get("conditions") or ()
                                             if c["status"] != "True"])
                    return None

                st = await eventually(ready, timeout=480, what="four add-ons Ready")
            by_name = {a["name"]: a for a in st["addons"]}
            assert by_name["monitoring"]["objects"] == 19
            crd = await workload.get(CRD, "prometheuses.monitoring.coreos.com")
            assert any(c["type"] == "Established" and c["status"] == "True"
                       for c in crd["status"]["conditions"])
            rules = (await workload.list(RULES, "monitoring")).items
            assert rules and rules[0]["metadata"]["labels"]["outpost.io/addon"] == "monitoring"
            hook = await workload.get(WEBHOOKS, "ingress-nginx-admission")
            assert hook["metadata"]["labels"]["outpost.io/addon"] == "ingress"
            ds = await workload.get(DAEMONSETS, "vector", "default")
            assert ds["metadata"]["labels"]["outpost.io/addon"] == "logging"
            await workload.get(CSI, "secrets-store.csi.k8s.io")
            await workload.get(CRD, "secretproviderclasses.secrets-store.csi.x-k8s.io")
            await workload.get(r.NAMESPACE, "ingress-nginx")
        finally:
            await mgmt.close()
            await workload.close()
