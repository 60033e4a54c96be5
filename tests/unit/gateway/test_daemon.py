"""The gateway daemon under its supervisor: liveness on /healthz, and a background task that
cannot recover ends the process with a non-zero status (so Kubernetes restarts it)."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from agent.kube import ApiKubeClient
from mgmt_gateway.api import ApiDeps, make_app
from mgmt_gateway.daemon import Gateway
from mgmt_gateway.settings import GatewaySettings
from mgmt_gateway.store import OutpostClusters
from testbed.apiserver import ApiServer
from testbed.crds import gateway_crd_files
from tests.fixtures.site import eventually

# Nothing listens there: the gateway keeps retrying NATS, which is not what these tests are about.
NO_NATS = "nats://127.0.0.1:9"


def settings(kubeconfig: Path, state: Path) -> GatewaySettings:
    return GatewaySettings(kubeconfig=kubeconfig, nats_servers=[NO_NATS],
                           signing_key_file=state / "key.pem", api_tokens=["t"],
                           http_host="127.0.0.1", http_port=0,
                           poll_seconds=0.05, retry_max_seconds=0.2)


async def test_healthz_follows_liveness(api: ApiServer, kubeconfig: Path) -> None:
    alive = [(True, "ok")]
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    try:
        deps = ApiDeps(fleet=OutpostClusters(kube), statuses=dict,
                       tokens={"t"}, live=lambda: alive[0], registry=CollectorRegistry())
        async with TestClient(TestServer(make_app(deps))) as client:
            assert (await client.get("/healthz")).status == 200
            alive[0] = (False, "bootstrap made no progress for 130s (limit 120s)")
            resp = await client.get("/healthz")
            assert resp.status == 503
            assert "bootstrap made no progress" in (await resp.json())["detail"]
    finally:
        await kube.close()


async def test_a_task_that_keeps_crashing_ends_the_gateway_with_status_1(
        api: ApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    await api.install_crds(gateway_crd_files())
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    gw = Gateway(settings(kubeconfig, tmp_path), kube)
    crashes = 0

    async def broken_collector() -> None:
        nonlocal crashes
        crashes += 1
        raise RuntimeError("status collector bug")

    gw.statuses.run = broken_collector  # type: ignore[method-assign]
    stop = asyncio.Event()
    try:
        code = await asyncio.wait_for(gw.run(stop), 60)  # bounds a failure only
    finally:
        stop.set()
        await kube.close()
    assert code == 1
    assert crashes == 5  # restarted with backoff until the supervisor gave up
    assert gw.registry.get_sample_value("outpost_gateway_task_restarts_total",
                                        {"task": "status-collector"}) == 4
    alive, why = gw.supervisor.liveness()
    assert not alive and "status-collector" in why


async def test_healthy_gateway_is_alive_and_stops_with_status_0(
        api: ApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    await api.install_crds(gateway_crd_files())
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    gw = Gateway(settings(kubeconfig, tmp_path), kube)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await eventually(lambda: gw.ready, what="gateway ready")
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{gw.http_port}/healthz") as resp:
            assert resp.status == 200, await resp.text()
        await eventually(lambda: gw.supervisor.liveness()[0], what="alive")
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()


async def test_the_process_exits_non_zero_when_a_task_cannot_recover(
        api: ApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    """The real entry point in its own process; only the status collector is swapped for one
    that always fails, so what is tested is the daemon's wiring up to the exit status."""
    await api.install_crds(gateway_crd_files())
    script = textwrap.dedent("""
        import sys
        from mgmt_gateway import daemon

        async def broken(self):
            raise RuntimeError("status collector bug")

        daemon.StatusCollector.run = broken
        sys.exit(daemon.main([]))
    """)
    env = {**os.environ,
           "OUTPOST_GATEWAY_KUBECONFIG": str(kubeconfig),
           "OUTPOST_GATEWAY_NATS_SERVERS": NO_NATS,
           "OUTPOST_GATEWAY_SIGNING_KEY_FILE": str(tmp_path / "key.pem"),
           "OUTPOST_GATEWAY_HTTP_HOST": "127.0.0.1", "OUTPOST_GATEWAY_HTTP_PORT": "0",
           "OUTPOST_GATEWAY_RETRY_MAX_SECONDS": "0.2",
           "OUTPOST_GATEWAY_LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)  # bounds a failure only
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, err.decode()[-2000:]
    assert b"keeps failing" in err


async def test_without_its_crds_the_gateway_says_what_to_apply(
        api: ApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OUTPOST_GATEWAY_KUBECONFIG": str(kubeconfig),
           "OUTPOST_GATEWAY_NATS_SERVERS": NO_NATS,
           "OUTPOST_GATEWAY_SIGNING_KEY_FILE": str(tmp_path / "key.pem"),
           "OUTPOST_GATEWAY_HTTP_HOST": "127.0.0.1", "OUTPOST_GATEWAY_HTTP_PORT": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mgmt_gateway.daemon", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)  # bounds a failure only
    assert proc.returncode == 2, err.decode()[-2000:]
    assert b"does not serve OutpostCluster" in err
    assert b"kubectl apply -f manifests/gateway/crds" in err


async def test_the_gateway_names_itself_and_a_restart_writes_nothing(
        api: ApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    """Audit logs tell the gateway's calls apart by its User-Agent; once its namespace exists,
    starting again over the same management cluster writes nothing but its Lease."""
    await api.install_crds(gateway_crd_files())
    env = {**os.environ,
           "OUTPOST_GATEWAY_KUBECONFIG": str(kubeconfig),
           "OUTPOST_GATEWAY_NATS_SERVERS": NO_NATS,
           "OUTPOST_GATEWAY_SIGNING_KEY_FILE": str(tmp_path / "key.pem"),
           "OUTPOST_GATEWAY_HTTP_HOST": "127.0.0.1", "OUTPOST_GATEWAY_HTTP_PORT": "0",
           "OUTPOST_GATEWAY_LOG_LEVEL": "WARNING"}
    adopted = ("outpost-gateway", "list", "configmaps")  # the last step of a start: leading

    async def run_once() -> Counter[tuple[str, str, str]]:
        before = api.calls.copy()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mgmt_gateway.daemon", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await eventually(lambda: api.calls[adopted] > before[adopted],
                             what="the gateway leading and adopting records")
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        calls = api.calls.copy()
        calls.subtract(before)
        return +calls

    def writes(calls: Counter[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        return {k for k in calls if k[1] in ("create", "update", "patch", "delete")
                and k[2] != "leases"}

    first = await run_once()
    assert writes(first) == {("outpost-gateway", "create", "namespaces")}
    second = await run_once()
    assert writes(second) == set()
    assert {who for who, _, _ in first + second} == {"outpost-gateway"}
