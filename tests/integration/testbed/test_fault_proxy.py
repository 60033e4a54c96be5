"""The fault proxy in front of a real kube-apiserver: identities pass through unchanged (RBAC
judges a token's own user, never the proxy's), and the controls act on the real server's
traffic as the emulator's built-in ones do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from testbed.controlplane.api import RealApi
from tests.fixtures.kube import serving_watches

pytestmark = pytest.mark.real


@pytest_asyncio.fixture
async def real(tmp_path: Path) -> AsyncIterator[RealApi]:
    api = RealApi("proxy", tmp_path / "real")
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def test_a_token_is_judged_as_its_own_user(real: RealApi) -> None:
    async with client.ApiClient(real.client_configuration()) as admin:
        core = client.CoreV1Api(admin)
        await core.create_namespaced_service_account("default", {"metadata": {"name": "ro"}})
        token = (await core.create_namespaced_service_account_token(
            "ro", "default", {"spec": {"expirationSeconds": 600}})).status.token
    cfg = real.client_configuration()
    cfg.cert_file = cfg.key_file = None  # the token only, as a pod's agent has it
    cfg.api_key = {"BearerToken": token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    async with client.ApiClient(cfg) as c:
        review = await client.AuthenticationV1Api(c).create_self_subject_review({})
        assert review.status.user_info.username == "system:serviceaccount:default:ro"
        with pytest.raises(ApiException) as e:
            await client.CoreV1Api(c).list_namespaced_secret("default")
        assert e.value.status == 403  # RBAC saw the service account, not an admin


async def test_faults_and_cut_watches_act_on_the_real_server(real: RealApi) -> None:
    async with client.ApiClient(real.client_configuration()) as c:
        core = client.CoreV1Api(c)
        real.faults.fail_next(1, 409, path="/configmaps", method="POST")
        with pytest.raises(ApiException) as e:
            await core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
        assert e.value.status == 409 and e.value.reason == "Conflict"
        await core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
        w = watch.Watch()
        events: list[str] = []

        async def follow() -> None:
            async for ev in w.stream(core.list_namespaced_config_map, "default",
                                     timeout_seconds=300):
                events.append(ev["object"].metadata.name)
        task = asyncio.create_task(follow())
        await serving_watches(real, 1)  # type: ignore[arg-type]
        assert real.cut_watches() == 1
        await asyncio.wait_for(task, 30)  # the stream ended at once, not after 300 s
        assert "a" in events
        await real.go_down()
        with pytest.raises((OSError, asyncio.TimeoutError, Exception)):
            await core.read_namespaced_config_map("a", "default", _request_timeout=5)
        await real.come_up()
        assert (await core.read_namespaced_config_map("a", "default")).metadata.name == "a"
