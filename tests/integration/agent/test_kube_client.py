"""ApiKubeClient against the emulated API server over real HTTP: CRUD, patch, apply, errors,
watch and its cancellation, the request counter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.kube import (
    AlreadyExists,
    ApiKubeClient,
    Conflict,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    Transient,
    WatchEvent,
    by_kind,
)
from agent.kube.resources import CONFIG_MAP, KUBEADM_CONTROL_PLANE, NAMESPACE, SECRET
from testbed.apiserver import ApiServer
from tests.fixtures.kube import eventually

FM = "outpost-test"


@pytest_asyncio.fixture
async def kc(kubeconfig: Path) -> AsyncIterator[ApiKubeClient]:
    async with await ApiKubeClient.from_kubeconfig(kubeconfig, request_timeout=5) as c:
        yield c


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "labels": {"app": "outpost"}},
            "type": "Opaque", "stringData": data}


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"}, "data": data}


def kcp(name: str = "cp", replicas: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas, "version": "v1.35.2",
            "machineTemplate": {"spec": {"infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachineTemplate",
                "name": "cp-tmpl"}}},
        },
    }


def rv(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


# -- CRUD ------------------------------------------------------------------------------------
async def test_secret_crud(kc: ApiKubeClient) -> None:
    created = await kc.create(SECRET, secret("s1", token="abc"))
    assert created["kind"] == "Secret" and created["metadata"]["uid"]
    got = await kc.get(SECRET, "s1", "default")
    assert got["metadata"]["uid"] == created["metadata"]["uid"]

    listed = await kc.list(SECRET, "default", label_selector="app=outpost")
    assert [o["metadata"]["name"] for o in listed.items] == ["s1"]
    assert listed.items[0]["kind"] == "Secret" and int(listed.resource_version) > 0
    assert (await kc.list(SECRET, "default", label_selector="app=other")).items == []
    assert any(o["metadata"]["name"] == "s1" for o in (await kc.list(SECRET)).items)

    got["metadata"]["labels"]["tier"] = "edge"
    replaced = await kc.replace(SECRET, got, field_manager=FM)
    assert replaced["metadata"]["labels"]["tier"] == "edge" and rv(replaced) != rv(got)
    with pytest.raises(Conflict):  # the copy read before the replace is stale now
        await kc.replace(SECRET, got, field_manager=FM)

    await kc.delete(SECRET, "s1", "default")
    with pytest.raises(NotFound):
        await kc.get(SECRET, "s1", "default")


async def test_cluster_scoped_resource(kc: ApiKubeClient) -> None:
    await kc.create(NAMESPACE, {"metadata": {"name": "edge"}})
    assert (await kc.get(NAMESPACE, "edge"))["metadata"]["name"] == "edge"
    await kc.create(CONFIG_MAP, {**cm("in-edge"), "metadata": {"name": "x", "namespace": "edge"}})
    listed = (await kc.list(CONFIG_MAP, "edge")).items
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed} == {
        ("edge", "x"), ("edge", "kube-root-ca.crt")}  # the cluster's own CA bundle too
    await kc.delete(NAMESPACE, "edge")


async def test_custom_object_crud_and_merge_patch(capi_api: ApiServer,
                                                  kc: ApiKubeClient) -> None:
    created = await kc.create(KUBEADM_CONTROL_PLANE, kcp())
    assert created["apiVersion"] == "controlplane.cluster.x-k8s.io/v1beta2"
    assert by_kind(created["apiVersion"], created["kind"]) == KUBEADM_CONTROL_PLANE

    patched = await kc.patch(KUBEADM_CONTROL_PLANE, "cp", {"spec": {"replicas": 3}}, "default",
                             field_manager=FM)
    assert patched["spec"]["replicas"] == 3 and patched["spec"]["version"] == "v1.35.2"
    # Merge-patch semantics: null removes a key.
    patched = await kc.patch(KUBEADM_CONTROL_PLANE, "cp",
                             {"metadata": {"labels": {"a": "1"}}}, "default", field_manager=FM)
    patched = await kc.patch(KUBEADM_CONTROL_PLANE, "cp",
                             {"metadata": {"labels": {"a": None}}}, "default", field_manager=FM)
    assert "a" not in (patched["metadata"].get("labels") or {})

    status = await kc.patch_status(KUBEADM_CONTROL_PLANE, "cp",
                                   {"status": {"replicas": 2, "version": "v1.35.2"}}, "default",
                                   field_manager=FM)
    assert status["status"]["replicas"] == 2 and status["spec"]["replicas"] == 3
    # The main resource ignores status; the status subresource ignores spec.
    ignored = await kc.patch(KUBEADM_CONTROL_PLANE, "cp", {"status": {"replicas": 9}},
                             "default", field_manager=FM)
    assert ignored["status"]["replicas"] == 2

    assert [o["metadata"]["name"] for o in
            (await kc.list(KUBEADM_CONTROL_PLANE, "default")).items] == ["cp"]
    await kc.delete(KUBEADM_CONTROL_PLANE, "cp", "default")
    with pytest.raises(NotFound):
        await kc.get(KUBEADM_CONTROL_PLANE, "cp", "default")


# -- server-side apply -----------------------------------------------------------------------
async def test_server_side_apply(capi_api: ApiServer, kc: ApiKubeClient) -> None:
    first = await kc.apply(KUBEADM_CONTROL_PLANE, kcp(replicas=1), field_manager="outpost")
    managers = {m["manager"]: m["operation"] for m in first["metadata"]["managedFields"]}
    assert managers == {"outpost": "Apply"}

    again = await kc.apply(KUBEADM_CONTROL_PLANE, kcp(replicas=1), field_manager="outpost")
    assert rv(again) == rv(first)  # nothing changed: no write

    with pytest.raises(Conflict) as e:
        await kc.apply(KUBEADM_CONTROL_PLANE, kcp(replicas=5), field_manager="intruder")
    assert e.value.status == 409 and "spec.replicas" in str(e.value)
    assert "outpost" in str(e.value)  # the server's message names the owner

    forced = await kc.apply(KUBEADM_CONTROL_PLANE, kcp(replicas=5), field_manager="intruder",
                            force=True)
    assert forced["spec"]["replicas"] == 5


# -- delete ----------------------------------------------------------------------------------
async def test_delete_missing_is_ok_and_uid_precondition(kc: ApiKubeClient) -> None:
    await kc.delete(SECRET, "never-existed", "default")
    created = await kc.create(SECRET, secret("s2"))
    with pytest.raises(Conflict) as e:
        await kc.delete(SECRET, "s2", "default", uid="00000000-0000-0000-0000-000000000000")
    assert "Precondition failed" in str(e.value)
    await kc.get(SECRET, "s2", "default")  # still there
    await kc.delete(SECRET, "s2", "default", uid=created["metadata"]["uid"],
                    propagation="Foreground")
    await eventually(lambda: _absent(kc, "s2"), timeout=2)


async def _absent(kc: ApiKubeClient, name: str) -> bool:
    try:
        await kc.get(SECRET, name, "default")
    except NotFound:
        return True
    return False


# -- error mapping ---------------------------------------------------------------------------
async def test_real_errors_are_mapped(capi_api: ApiServer, kc: ApiKubeClient) -> None:
    with pytest.raises(NotFound) as nf:
        await kc.get(SECRET, "missing", "default")
    assert nf.value.status == 404 and '"missing" not found' in str(nf.value)

    await kc.create(SECRET, secret("dup"))
    with pytest.raises(AlreadyExists) as ae:
        await kc.create(SECRET, secret("dup"))
    assert ae.value.status == 409 and ae.value.reason == "AlreadyExists"
    assert "already exists" in str(ae.value)

    bad = kcp()
    bad["spec"]["replicas"] = "three"
    with pytest.raises(Invalid) as inv:
        await kc.create(KUBEADM_CONTROL_PLANE, bad)
    assert inv.value.status == 422 and "spec.replicas: Invalid value" in str(inv.value)

    with pytest.raises(Invalid):  # caught before any request: no namespace to put it in
        await kc.create(SECRET, {"metadata": {"name": "nowhere"}})


@pytest.mark.parametrize(("code", "kind", "reason"), [
    (409, Conflict, "Conflict"), (429, Transient, "TooManyRequests"),
    (500, Transient, "InternalError"), (503, Transient, "ServiceUnavailable"),
    (504, Transient, "Timeout"),
])
async def test_injected_errors_are_mapped(api: ApiServer, kc: ApiKubeClient, code: int,
                                          kind: type[KubeError], reason: str) -> None:
    api.faults.fail_next(1, code, path="/secrets", method="PATCH")
    await kc.create(SECRET, secret("f"))
    with pytest.raises(kind) as e:
        await kc.patch(SECRET, "f", {"data": {}}, "default", field_manager=FM)
    assert type(e.value) is kind and e.value.status == code and e.value.reason == reason
    assert "PATCH /api/v1/namespaces/default/secrets/f" in str(e.value)


async def test_server_down_is_transient_and_recovers(api: ApiServer,
                                                     kc: ApiKubeClient) -> None:
    await kc.create(CONFIG_MAP, cm("kept"))
    await api.go_down()
    with pytest.raises(Transient) as e:
        await kc.get(CONFIG_MAP, "kept", "default")
    assert e.value.status == 0
    with pytest.raises(Transient):
        async for _ in kc.watch(CONFIG_MAP, "default"):
            pass
    await api.come_up()
    assert (await kc.get(CONFIG_MAP, "kept", "default"))["metadata"]["name"] == "kept"


# -- watch -----------------------------------------------------------------------------------
async def next_events(stream: AsyncIterator[WatchEvent], n: int,
                      skip_bookmarks: bool = True) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    while len(out) < n:
        ev = await asyncio.wait_for(anext(stream), 2)
        if not (skip_bookmarks and ev.type == "BOOKMARK"):
            out.append(ev)
    return out


async def test_watch_after_resource_version_then_cut(api: ApiServer, kc: ApiKubeClient) -> None:
    await kc.create(CONFIG_MAP, cm("before"))
    start = (await kc.list(CONFIG_MAP, "default")).resource_version
    await kc.create(CONFIG_MAP, cm("w", x="1"))
    await kc.patch(CONFIG_MAP, "w", {"data": {"x": "2"}}, "default", field_manager=FM)
    await kc.delete(CONFIG_MAP, "w", "default")

    stream = kc.watch(CONFIG_MAP, "default", resource_version=start, timeout_seconds=30)
    events = await next_events(stream, 3)
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        ("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    assert events[1].object["data"] == {"x": "2"}
    assert int(events[0].resource_version) > int(start)

    # Bookmarks come through (the fixture's server sends one every 0.5 s when idle).
    mark = (await next_events(stream, 1, skip_bookmarks=False))[0]
    assert mark.type == "BOOKMARK" and int(mark.resource_version) >= int(events[2]
                                                                          .resource_version)

    api.cut_watches()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 2)


async def test_watch_without_resource_version_sends_state_first(kc: ApiKubeClient) -> None:
    await kc.create(CONFIG_MAP, cm("a"))
    async with contextlib.aclosing(kc.watch(CONFIG_MAP, "default")) as stream:
        first = await next_events(stream, 1)
        assert (first[0].type, first[0].object["metadata"]["name"]) == ("ADDED", "a")


async def test_watch_raises_gone_after_compaction(api: ApiServer, kc: ApiKubeClient) -> None:
    start = (await kc.list(CONFIG_MAP, "default")).resource_version
    await kc.create(CONFIG_MAP, cm("c1"))
    await kc.create(CONFIG_MAP, cm("c2"))
    api.store.compact()
    with pytest.raises(Gone) as e:
        async for _ in kc.watch(CONFIG_MAP, "default", resource_version=start):
            pass
    assert e.value.status == 410 and "too old" in str(e.value).lower()


async def test_watch_open_failure_is_mapped(api: ApiServer, kc: ApiKubeClient) -> None:
    api.faults.fail_next(1, 503, path="/configmaps", method="GET")
    with pytest.raises(Transient) as e:
        async for _ in kc.watch(CONFIG_MAP, "default"):
            pass
    assert e.value.status == 503


async def test_cancelling_a_watch_consumer_is_prompt(api: ApiServer, kc: ApiKubeClient) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in kc.watch(CONFIG_MAP, "default", timeout_seconds=60):
            started.set()

    await kc.create(CONFIG_MAP, cm("wake"))  # so the consumer sees an event at once
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 2)
    assert api.store.watcher_count == 1
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert done == {task} and task.cancelled()
    # The connection is closed, so the server drops the watch on its next write.
    await kc.create(CONFIG_MAP, cm("poke"))
    await eventually(lambda: _no_watchers(api), timeout=2)

    # Stopping early inside aclosing releases it as well.
    async with contextlib.aclosing(kc.watch(CONFIG_MAP, "default")) as stream:
        await next_events(stream, 1)
    await kc.delete(CONFIG_MAP, "poke", "default")
    await eventually(lambda: _no_watchers(api), timeout=2)


async def _no_watchers(api: ApiServer) -> bool:
    return api.store.watcher_count == 0


# -- accounting and construction -------------------------------------------------------------
async def test_requests_are_counted_by_verb(capi_api: ApiServer, kc: ApiKubeClient) -> None:
    await kc.create(CONFIG_MAP, cm("n"))
    await kc.get(CONFIG_MAP, "n", "default")
    await kc.list(CONFIG_MAP, "default")
    await kc.patch(CONFIG_MAP, "n", {"data": {"k": "v"}}, "default", field_manager=FM)
    await kc.apply(KUBEADM_CONTROL_PLANE, kcp(), field_manager=FM)
    await kc.patch_status(KUBEADM_CONTROL_PLANE, "cp", {"status": {"replicas": 1}}, "default",
                          field_manager=FM)
    live = await kc.get(CONFIG_MAP, "n", "default")
    await kc.replace(CONFIG_MAP, live, field_manager=FM)
    await kc.delete(CONFIG_MAP, "n", "default")
    await kc.delete(CONFIG_MAP, "n", "default")  # 404: still a request
    async with contextlib.aclosing(kc.watch(KUBEADM_CONTROL_PLANE, "default")) as stream:
        await next_events(stream, 1)
    assert kc.requests == {"create": 1, "get": 2, "list": 1, "patch": 2, "apply": 1,
                           "replace": 1, "delete": 2, "watch": 1}


async def test_list_pages_through_continue_tokens(kubeconfig: Path) -> None:
    async with await ApiKubeClient.from_kubeconfig(kubeconfig) as kc:
        kc.page_size = 2
        for i in range(5):
            await kc.create(CONFIG_MAP, cm(f"p{i}"))
        listed = await kc.list(CONFIG_MAP, "default")
        assert [o["metadata"]["name"] for o in listed.items] == [
            "kube-root-ca.crt", *(f"p{i}" for i in range(5))]
        assert kc.requests["list"] == 3


async def test_from_in_cluster_reads_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    kc = ApiKubeClient.from_in_cluster(secrets_dir=tmp_path, environ={
        "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert kc.configuration.host == "https://10.96.0.1:443"
    assert kc.configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert await kc.configuration.get_api_key_with_prefix("BearerToken") == "Bearer sa-token"
    with pytest.raises(KubeError):
        ApiKubeClient.from_in_cluster(secrets_dir=tmp_path, environ={})


async def test_from_kubeconfig_errors_are_ours(tmp_path: Path) -> None:
    with pytest.raises(KubeError):
        await ApiKubeClient.from_kubeconfig(tmp_path / "absent")
