"""A hand-written record ConfigMap on the testbed's management cluster: the gateway skips it,
says so (fleet view, metric, Event), and bootstraps a new cluster regardless."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.kube import ApiKubeClient
from agent.kube import resources as r
from mgmt_gateway.state import LABEL
from testbed.backends import Backend
from testbed.capi import SimConfig
from testbed.demo import request
from testbed.env import Testbed
from tests.e2e.test_gateway_faults import gateway, phase
from tests.fixtures.site import eventually

NS = "outpost-system"

pytestmark = pytest.mark.both_backends


async def test_a_garbled_record_does_not_stop_a_new_cluster(tmp_path: Path,
        backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5),
                       api=backend) as tb, \
            gateway(tb, tmp_path / "gw") as (_, http, base):
        mgmt = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
        try:
            for name, data in (("no-record", None),
                               ("garbled", {"record": '{"name": "garbled", "spec": {"clu'})):
                obj = {"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": f"outpost-cluster-{name}", "namespace": NS,
                                    "labels": {LABEL: name}}}
                if data is not None:
                    obj["data"] = data
                await mgmt.create(r.CONFIG_MAP, obj)
            async with http.post(f"{base}/v1/clusters", json=request(1, 0)) as resp:
                assert resp.status == 202, await resp.text()

            async def progressed() -> bool:
                return await phase(http, base) not in ("", "Requested")

            await eventually(progressed, timeout=90, what="edge-1 past Requested")

            async with http.get(f"{base}/v1/clusters") as resp:
                assert resp.status == 200, await resp.text()
                items = {i["name"]: i for i in (await resp.json())["items"]}
            assert items["no-record"]["phase"] == "Unreadable"
            assert "data.record is missing" in items["no-record"]["unreadableReason"]
            assert items["garbled"]["phase"] == "Unreadable"
            assert "not valid JSON" in items["garbled"]["unreadableReason"]
            assert items["edge-1"]["phase"] not in ("Requested", "Unreadable")

            async def counted() -> bool:
                async with http.get(f"{base}/metrics") as resp:
                    text = await resp.text()
                return "outpost_gateway_unreadable_records 2.0" in text

            await eventually(counted, timeout=30, what="the metric counts both")

            async def flagged() -> bool:
                found = (await mgmt.list(r.EVENT, NS)).items
                names = {e["involvedObject"]["name"] for e in found
                         if e.get("reason") == "UnreadableRecord"}
                return {"outpost-cluster-no-record", "outpost-cluster-garbled"} <= names

            await eventually(flagged, timeout=30, what="an Event on each bad ConfigMap")
        finally:
            await mgmt.close()
