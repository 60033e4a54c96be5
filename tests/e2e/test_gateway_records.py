"""What the gateway cannot work never stops the fleet, on the testbed's management cluster: a
garbled record ConfigMap of an older gateway is left in place and reported (Event) when the
rest are adopted, and an OutpostCluster the API accepts but the contract refuses (a worker
pool newer than its control plane) gets a condition saying why, while a new cluster is
bootstrapped regardless."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.kube import ApiKubeClient
from agent.kube import resources as r
from mgmt_gateway.clusters import OUTPOST_CLUSTER, ClusterRequest
from mgmt_gateway.state import LABEL
from testbed.backends import Backend
from testbed.capi import SimConfig
from testbed.demo import request
from testbed.env import Testbed
from tests.e2e.test_gateway_faults import gateway, phase
from tests.fixtures.site import eventually

NS = "outpost-system"

pytestmark = pytest.mark.both_backends


async def test_what_cannot_be_worked_does_not_stop_a_new_cluster(tmp_path: Path,
        backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5),
                       api=backend) as tb:
        mgmt = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
        try:
            await mgmt.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": NS}}, field_manager="test")
            await mgmt.create(r.CONFIG_MAP, {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "outpost-cluster-garbled", "namespace": NS,
                             "labels": {LABEL: "garbled"}},
                "data": {"record": '{"name": "garbled", "spec": {"clu'}})
            skewed = ClusterRequest.model_validate(request(1, 0)).body()
            skewed["metadata"]["name"] = "skewed"
            skewed["spec"]["workers"] = [{"name": "a", "replicas": 1, "version": "v1.36.0",
                                          "machine": {"provider": "dev"}}]
            await mgmt.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": "fleet"}}, field_manager="test")
            await mgmt.create(OUTPOST_CLUSTER, skewed)
            async with gateway(tb, tmp_path / "gw") as (_, http, base):
                async with http.post(f"{base}/v1/clusters", json=request(1, 0)) as resp:
                    assert resp.status == 202, await resp.text()

                async def progressed() -> bool:
                    return await phase(http, base) not in ("", "Requested")

                await eventually(progressed, timeout=90, what="edge-1 past Requested")

                async def refused() -> bool:
                    obj = await mgmt.get(OUTPOST_CLUSTER, "skewed", "fleet")
                    conds = (obj.get("status") or {}).get("conditions") or ()
                    return any(c["type"] == "SpecAccepted" and c["status"] == "False"
                               and "newer than the control plane" in c["message"]
                               for c in conds)

                await eventually(refused, timeout=30, what="a condition on the skewed cluster")
                async with http.get(f"{base}/v1/clusters") as resp:
                    items = {i["name"]: i for i in (await resp.json())["items"]}
                assert items["skewed"]["phase"] == "Unreadable"
                assert "newer than the control plane" in items["skewed"]["unreadableReason"]
                assert items["edge-1"]["phase"] not in ("Requested", "Unreadable")

                async def counted() -> bool:
                    async with http.get(f"{base}/metrics") as resp:
                        text = await resp.text()
                    return "outpost_gateway_invalid_clusters 1.0" in text

                await eventually(counted, timeout=30, what="the metric counts it")

                async def flagged() -> bool:
                    found = (await mgmt.list(r.EVENT, NS)).items
                    return any(e["involvedObject"]["name"] == "outpost-cluster-garbled"
                               and e.get("reason") == "UnreadableRecord" for e in found)

                await eventually(flagged, timeout=30, what="an Event on the garbled record")
                await mgmt.get(r.CONFIG_MAP, "outpost-cluster-garbled", NS)  # left in place
        finally:
            await mgmt.close()
