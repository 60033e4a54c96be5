"""Fault injection: failed requests, cut watches, an unreachable server that comes back."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from testbed.apiserver import ApiServer
from tests.fixtures.kube import eventually, http

pytestmark = pytest.mark.both_backends


@pytest.mark.parametrize(("code", "reason"), [(409, "Conflict"), (429, "TooManyRequests"),
                                              (500, "InternalError"),
                                              (503, "ServiceUnavailable")])
async def test_fail_next_requests(api: ApiServer, kube: client.ApiClient, code: int,
                                  reason: str) -> None:
    core = client.CoreV1Api(kube)
    api.faults.fail_next(2, code, path=r"/configmaps")
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            await core.list_namespaced_config_map("default")
        body = json.loads(e.value.body)
        assert e.value.status == code and body["reason"] == reason
        if code in (429, 503):
            assert e.value.headers["Retry-After"] == "1"
    await core.read_namespace("default")  # other paths are untouched
    await core.list_namespaced_config_map("default")  # and the rule is used up


async def test_fail_only_matching_method(api: ApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.faults.fail_next(1, 500, method="POST")
    await core.list_namespaced_config_map("default")
    with pytest.raises(ApiException):
        await core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="x")))
    await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="x")))


async def test_faults_are_controllable_over_http(api: ApiServer) -> None:
    async with http(api) as s:
        async with s.post(f"{api.url}/testbed/faults",
                          json={"action": "fail", "count": 1, "code": 429}) as r:
            assert r.status == 200
        async with s.get(f"{api.url}/api/v1/namespaces") as r:
            assert r.status == 429
        async with s.get(f"{api.url}/api/v1/namespaces") as r:
            assert r.status == 200
        async with s.post(f"{api.url}/testbed/faults", json={"action": "explode"}) as r:
            assert r.status == 400
        async with s.get(f"{api.url}/testbed/stats") as r:
            stats = await r.json()
            assert stats["faultsInjected"] == 1


async def test_server_goes_down_and_comes_back(api: ApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="kept")))
    url = api.url
    await api.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http(api) as s, s.get(f"{api.url}/version"):
            pass
    await api.come_up()
    assert api.url == url  # back on the same address
    got = await core.read_namespaced_config_map("kept", "default")
    assert got.metadata.name == "kept"


async def test_delay_holds_matching_requests(api: ApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.faults.delay_next(1, 600, path=r"/configmaps", method="GET")  # held until released
    task = asyncio.ensure_future(core.list_namespaced_config_map("default"))

    async def held() -> bool:
        return api.faults.delaying == 1
    await eventually(held)
    await core.read_namespace("default")  # other requests are not held
    assert not task.done() and api.faults.delaying == 1
    api.faults.release()
    await task
    assert api.faults.delaying == 0
    # A hold also ends by itself once its time has passed.
    api.faults.delay_next(1, 0.05, path=r"/configmaps", method="GET")
    await core.list_namespaced_config_map("default")
    assert api.faults.delaying == 0
