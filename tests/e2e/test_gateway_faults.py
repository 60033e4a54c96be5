"""Gateway under API faults, and retiring a cluster, through its HTTP API on the testbed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.kube import ApiKubeClient, NotFound
from agent.kube import resources as r
from mgmt_gateway.clusters import OUTPOST_CLUSTER
from mgmt_gateway.daemon import Gateway
from mgmt_gateway.publish import generate_signing_key
from mgmt_gateway.settings import GatewaySettings
from testbed.backends import Backend
from testbed.capi import SimConfig
from testbed.crds import components_files
from testbed.demo import AGENT_ENV, request
from testbed.env import Testbed
from tests.fixtures.site import eventually

TOKEN = "t"

pytestmark = pytest.mark.both_backends


@asynccontextmanager
async def gateway(tb: Testbed, state: Path, key: Path | None = None,
                  ) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession, str]]:
    assert tb.nats is not None
    settings = GatewaySettings(
        kubeconfig=tb.management_kubeconfig, nats_servers=[tb.nats.url],
        signing_key_file=key or state / "key.pem", components=components_files(),
        api_tokens=[TOKEN],
        http_host="127.0.0.1", http_port=0, poll_seconds=0.1, lease_duration_seconds=3,
        agent_extra_env=[f"{k}={v}" for k, v in AGENT_ENV.items()])
    kube = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
    gw = Gateway(settings, kube)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    await eventually(lambda: gw.ready, what="gateway ready")
    try:
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            yield gw, http, f"http://127.0.0.1:{gw.http_port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await kube.close()


async def phase(http: aiohttp.ClientSession, base: str, name: str = "edge-1") -> str:
    async with http.get(f"{base}/v1/clusters/{name}") as resp:
        return str((await resp.json()).get("phase", "")) if resp.status == 200 else ""


async def test_bootstrap_completes_through_api_faults(tmp_path: Path,
        backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5),
                       api=backend) as tb, \
            gateway(tb, tmp_path / "gw") as (_, http, base):
        async with http.post(f"{base}/v1/clusters", json=request(3, 1)) as resp:
            assert resp.status == 202, await resp.text()
        # Bursts of conflicts and server errors on the management API while it bootstraps
        # (before the request was accepted, the façade answers 503 and changes nothing).
        tb.management.faults.fail_next(6, 500, path="/apis/")
        tb.management.faults.fail_next(4, 409, path="outpostclusters", method="PUT")

        async def installed_then_outage() -> bool:
            return await phase(http, base) in ("AgentInstalled", "Pivoted", "Managed")

        await eventually(installed_then_outage, timeout=60, what="agent installed")
        # The workload API goes away for a moment during the pivot.
        await tb.workload.go_down()
        await asyncio.sleep(1.0)
        await tb.workload.come_up()

        async def managed() -> bool:
            return await phase(http, base) == "Managed"

        await eventually(managed, timeout=90, what="Managed despite the faults")
        assert tb.management.faults.injected >= 6


@pytest.mark.timeout(300)
async def test_bad_requests_create_nothing_and_delete_retires(tmp_path: Path,
        backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.3, resync=0.5),
                       api=backend) as tb, \
            gateway(tb, tmp_path / "gw") as (gw, http, base):
        bad: list[dict[str, Any]] = [
            {**request(3, 1), "name": "Not_A_Name"},
            {**request(3, 1), "controlPlane": {"replicas": 2, "machine": {"provider": "dev"}}},
            {**request(3, 1), "infrastructure": {"provider": "openstack"}},
            {k: v for k, v in request(3, 1).items() if k != "kubernetesVersion"},
        ]
        for body in bad:
            async with http.post(f"{base}/v1/clusters", json=body) as resp:
                assert resp.status in (400, 422), await resp.text()
                assert resp.content_type == "application/problem+json"
        assert (await gw.fleet.scan()).records == []
        async with http.post(f"{base}/v1/clusters", json=request(1, 0)) as resp:
            assert resp.status == 202

        async def created() -> bool:
            return await phase(http, base) not in ("", "Requested")

        await eventually(created, timeout=30, what="CAPI objects created")
        async with http.delete(f"{base}/v1/clusters/edge-1") as resp:
            assert resp.status == 202
        mgmt = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
        try:
            async def gone() -> bool:
                try:
                    c = await mgmt.get(r.CLUSTER, "edge-1", "fleet")
                except NotFound:
                    if await phase(http, base) == "":
                        return True
                    try:
                        oc = await mgmt.get(OUTPOST_CLUSTER, "edge-1", "fleet")
                    except NotFound:
                        raise AssertionError("gone from the API, still in the façade's view"
                                             ) from None
                    raise AssertionError(
                        f"OutpostCluster left: {oc['metadata'].get('finalizers')} "
                        f"{(oc.get('status') or {}).get('phase')} "
                        f"{(oc.get('status') or {}).get('lastError')}") from None
                machines = [(m["metadata"]["name"], m["metadata"].get("finalizers"),
                             bool(m["metadata"].get("deletionTimestamp")))
                            for m in (await mgmt.list(r.MACHINE, "fleet")).items]
                raise AssertionError(  # the state the last check saw, if it never goes
                    f"Cluster still there: finalizers {c['metadata'].get('finalizers')}, "
                    f"deleting {bool(c['metadata'].get('deletionTimestamp'))}, phase "
                    f"{await phase(http, base)!r}, machines {machines}")

            await eventually(gone, timeout=120, what="cluster torn down and forgotten")
        finally:
            await mgmt.close()


async def test_two_gateway_replicas_create_each_cluster_once(tmp_path: Path,
        backend: Backend) -> None:
    key = tmp_path / "signing-key.pem"  # replicas share one signing key (a mounted Secret)
    generate_signing_key(key)
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.05, resync=0.5),
                       api=backend) as tb, \
            gateway(tb, tmp_path / "gw-a", key) as (gw_a, http_a, base_a), \
            gateway(tb, tmp_path / "gw-b", key) as (gw_b, http_b, base_b):
        # Both replicas are asked at once: exactly one request wins, the other is told so.
        results = await asyncio.gather(http_a.post(f"{base_a}/v1/clusters", json=request(3, 1)),
                                       http_b.post(f"{base_b}/v1/clusters", json=request(3, 1)))
        assert sorted(r.status for r in results) == [202, 409]
        for resp in results:
            resp.release()

        async def managed() -> bool:
            return await phase(http_a, base_a) == "Managed"

        await eventually(managed, timeout=90, what="Managed with two replicas up")
        # One replica leads and works the cluster; the other only served its API request.
        assert gw_a.elector is not None and gw_b.elector is not None
        assert sorted([gw_a.elector.is_leader, gw_b.elector.is_leader]) == [False, True]
        standby = gw_b if gw_a.elector.is_leader else gw_a
        assert standby.controller.steps_done == 0
        assert standby.events.recorded == 0

        async def converged() -> bool:
            async with http_b.get(f"{base_b}/v1/clusters/edge-1") as resp:
                body = await resp.json()
            return bool(body.get("status", {}).get("appliedRevision") == 1) or bool(
                body.get("appliedRevision") == 1)

        await eventually(converged, timeout=60, what="the agent applied the published spec")
        workload = await ApiKubeClient.from_kubeconfig(tb.workload_kubeconfig)
        try:
            assert len((await workload.list(r.CLUSTER, "fleet")).items) == 1
            assert len((await workload.list(r.KUBEADM_CONTROL_PLANE, "fleet")).items) == 1
            machines = (await workload.list(r.MACHINE, "fleet")).items
            names = [m["metadata"]["name"] for m in machines]
            assert len(names) == len(set(names))
        finally:
            await workload.close()
