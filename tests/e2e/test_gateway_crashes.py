"""The gateway SIGKILLed after each step of bootstrap and during the pivot: it always finishes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.kube import ApiKubeClient, NotFound
from agent.kube import resources as r
from agent.spec import ClusterSpec
from mgmt_gateway.state import ClusterRecord, RecordStore
from testbed.backends import Backend
from testbed.capi import SimConfig
from testbed.crds import components_files
from testbed.demo import AGENT_ENV, request
from testbed.env import Testbed
from tests.fixtures.site import eventually

NS = "fleet"
CLUSTER = "edge-1"

pytestmark = pytest.mark.both_backends


def gateway_env(tb: Testbed, state: Path) -> dict[str, str]:
    assert tb.nats is not None
    return {
        **os.environ,
        "OUTPOST_GATEWAY_KUBECONFIG": str(tb.management_kubeconfig),
        "OUTPOST_GATEWAY_NATS_SERVERS": tb.nats.url,
        "OUTPOST_GATEWAY_SIGNING_KEY_FILE": str(state / "signing-key.pem"),
        "OUTPOST_GATEWAY_COMPONENTS": ",".join(str(p) for p in components_files()),
        "OUTPOST_GATEWAY_API_TOKENS": "t",
        "OUTPOST_GATEWAY_HTTP_HOST": "127.0.0.1",
        "OUTPOST_GATEWAY_HTTP_PORT": "0",
        "OUTPOST_GATEWAY_WORK_DIR": str(state),
        "OUTPOST_GATEWAY_POLL_SECONDS": "0.1",
        "OUTPOST_GATEWAY_AGENT_EXTRA_ENV": ",".join(f"{k}={v}" for k, v in AGENT_ENV.items()),
        "OUTPOST_GATEWAY_LOG_LEVEL": "WARNING",
    }


async def progress(store: RecordStore) -> tuple[str, int]:
    rec = await store.get(CLUSTER)
    return (rec.phase, len(rec.pivot_journal)) if rec else ("", 0)


async def test_sigkill_after_every_step_still_reaches_managed(tmp_path: Path,
        backend: Backend) -> None:
    async with Testbed(tmp_path / "tb", sim=SimConfig(step_delay=0.15, resync=0.5),
                       api=backend) as tb:
        mgmt = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
        workload = await ApiKubeClient.from_kubeconfig(tb.workload_kubeconfig)
        store = RecordStore(mgmt)
        await mgmt.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": "outpost-system"}},
                         field_manager="test")
        body = request(cp=3, workers=2)
        spec = ClusterSpec.model_validate({**{k: v for k, v in body.items() if k != "name"},
                                           "clusterName": CLUSTER, "revision": 1})
        await store.create(ClusterRecord(name=CLUSTER, spec=spec))
        env = gateway_env(tb, tmp_path / "gw")
        seen: list[tuple[str, int]] = []
        kills = 0
        try:
            for _ in range(30):
                before = await progress(store)
                if before[0] == "Managed":
                    break
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mgmt_gateway.daemon", env=env,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)

                async def moved(b: tuple[str, int] = before) -> bool:
                    return await progress(store) != b

                try:
                    await eventually(moved, timeout=60, interval=0.01,
                                     what=f"progress past {before}")
                finally:
                    proc.send_signal(signal.SIGKILL)  # no cleanup of any kind
                    await proc.wait()
                kills += 1
                seen.append(await progress(store))
            assert (await progress(store))[0] == "Managed", seen
        finally:
            await mgmt.close()
        phases = [p for p, _ in seen]
        assert {"CapiCreated", "FirstControlPlaneReady", "AgentInstalled"} <= set(phases), seen
        assert kills >= 4
        # Nothing duplicated or lost, nothing left paused, the management cluster emptied.
        try:
            cluster = await workload.get(r.CLUSTER, CLUSTER, NS)
            assert not (cluster.get("spec") or {}).get("paused")
            clusters = await workload.list(r.CLUSTER, NS)
            assert [c["metadata"]["name"] for c in clusters.items] == [CLUSTER]
            kcps = await workload.list(r.KUBEADM_CONTROL_PLANE, NS)
            assert len(kcps.items) == 1
            mgmt2 = await ApiKubeClient.from_kubeconfig(tb.management_kubeconfig)
            try:
                await mgmt2.get(r.CLUSTER, CLUSTER, NS)
                raise AssertionError("the Cluster is still in the management cluster")
            except NotFound:
                pass
            finally:
                await mgmt2.close()

            async def converged() -> Any:
                kcp = await workload.get(r.KUBEADM_CONTROL_PLANE, f"{CLUSTER}-control-plane", NS)
                return (kcp.get("status") or {}).get("readyReplicas") == 3

            await eventually(converged, timeout=60, what="the agent scaled the control plane")
        finally:
            await workload.close()
