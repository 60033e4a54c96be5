"""Step 6 end to end: a ClusterProfile's add-ons, rendered by the gateway into bundles, fetched
by the agent from the Object Store and installed in order into the workload cluster; a new
profile version prunes what it dropped; the OutpostCluster shows each add-on's status."""

from __future__ import annotations

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
from tests.e2e.test_outpost_resources import gateway_process, kubectl
from tests.fixtures.site import eventually

pytestmark = pytest.mark.both_backends

NS = "fleet"
NAME = "edge-1"
TOLERATION = [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
               "effect": "NoSchedule"}]


def profile(version: str, *, with_extra: bool) -> dict[str, Any]:
    agent_cm = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "log-config"}, "data": {"level": version}}
    web = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "collector"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "collector"}},
                    "template": {"metadata": {"labels": {"app": "collector"}}, "spec": {
                        "tolerations": TOLERATION,
                        "containers": [{"name": "c", "image": "example/collector:1"}]}}}}
    addons: list[dict[str, Any]] = [
        {"name": "logging", "version": version, "order": 0, "namespace": "logging",
         "manifests": [{"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "logging"}}, agent_cm, web]}]
    if with_extra:
        addons.append({"name": "extras", "version": "1", "order": 1, "namespace": "logging",
                       "manifests": [{"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "extra"}, "data": {"a": "1"}}]})
    return {"apiVersion": API_VERSION, "kind": "ClusterProfile",
            "metadata": {"name": f"base-{version}", "namespace": NS},
            "spec": {"name": "base", "version": version, "addons": addons}}


def cluster(profile_version: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "OutpostCluster",
            "metadata": {"name": NAME, "namespace": NS}, "spec": {
                "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
                "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
                "profile": {"name": "base", "version": profile_version},
                "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@site"]}}


async def test_profile_addons_are_installed_in_order_and_pruned(tmp_path: Path,
                                                               backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5),
                       api=backend) as tb:
        kc = tb.management_kubeconfig
        mgmt = await ApiKubeClient.from_kubeconfig(kc)
        workload = await ApiKubeClient.from_kubeconfig(tb.workload_kubeconfig)
        try:
            await kubectl(kc, "apply", "-f", "-", stdin=yaml.safe_dump_all([
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                profile("1", with_extra=True), cluster("1")]))
            async with gateway_process(tb, tmp_path / "gw"):

                async def addons(phases: dict[str, str]) -> dict[str, Any] | None:
                    obj = await mgmt.get(OUTPOST_CLUSTER, NAME, NS)
                    st = obj.get("status") or {}
                    have = {a["name"]: a["phase"] for a in st.get("addons") or ()}
                    return st if have == phases else None

                st = await eventually(lambda: addons({"logging": "Ready", "extras": "Ready"}),
                                      timeout=180, what="both add-ons Ready")
                by_name = {a["name"]: a for a in st["addons"]}
                assert by_name["logging"]["objects"] == 3
                assert by_name["logging"]["digest"].startswith("sha256:")
                conds = {c["type"]: c for c in st["conditions"]}
                assert conds["AddonsReady"]["status"] == "True"
                cm = await workload.get(r.CONFIG_MAP, "log-config", "logging")
                assert cm["data"] == {"level": "1"}
                assert cm["metadata"]["labels"]["outpost.io/addon"] == "logging"
                await workload.get(r.CONFIG_MAP, "extra", "logging")

                # Profile version 2: logging changes, extras is gone (and pruned).
                await kubectl(kc, "apply", "-f", "-", stdin=yaml.safe_dump_all([
                    profile("2", with_extra=False), cluster("2")]))
                await eventually(lambda: addons({"logging": "Ready"}), timeout=180,
                                 what="profile 2 applied")

                async def pruned() -> bool:
                    try:
                        await workload.get(r.CONFIG_MAP, "extra", "logging")
                        return False
                    except NotFound:
                        cm = await workload.get(r.CONFIG_MAP, "log-config", "logging")
                        return bool(cm["data"] == {"level": "2"})

                await eventually(pruned, timeout=60, what="extras pruned, logging updated")
        finally:
            await mgmt.close()
            await workload.close()
