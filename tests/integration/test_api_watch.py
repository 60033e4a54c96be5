"""Watch semantics through kubernetes_asyncio's Watch: initial state, resume, 410, bookmarks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from testbed.apiserver import ApiServer
from tests.fixtures.kube import current_rv, http, serving_watches

pytestmark = pytest.mark.both_backends


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels),
                              data=data or None)


async def collect(w: watch.Watch, stream: Any, n: int, skip_bookmarks: bool = True,
                  timeout: float = 5.0) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    async def run() -> None:
        async for ev in stream:
            if skip_bookmarks and ev["type"] == "BOOKMARK":
                continue
            out.append((ev["type"], ev["raw_object"]["metadata"]["name"]))
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def test_watch_sends_state_then_changes(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map("default", cm("before"))
    w = watch.Watch()
    # The cluster's own kube-root-ca.crt is in the state too: its synthetic ADDED comes first.
    stream = w.stream(core.list_namespaced_config_map, "default", timeout_seconds=60)
    first = await collect(w, stream, 2)
    assert first == [("ADDED", "before"), ("ADDED", "kube-root-ca.crt")]
    await core.create_namespaced_config_map("default", cm("after"))
    await core.patch_namespaced_config_map("after", "default", {"data": {"x": "1"}},
                                           _content_type="application/merge-patch+json")
    await core.delete_namespaced_config_map("after", "default")
    rest = await collect(w, stream, 3)
    await w.close()
    assert rest == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]


async def test_watch_resumes_from_resource_version(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    listed = await core.list_namespaced_config_map("default")
    rv = listed.metadata.resource_version
    await core.create_namespaced_config_map("default", cm("r1"))
    await core.create_namespaced_config_map("default", cm("r2"))
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, "default", resource_version=rv,
                      timeout_seconds=60)
    events = await collect(w, stream, 2)
    await w.close()
    assert events == [("ADDED", "r1"), ("ADDED", "r2")]


@pytest.mark.emulated_only("expiring a resourceVersion from the watch cache needs the emulator's "
                            "history knob (store.compact); a real kube-apiserver keeps serving "
                            "watches from its watch cache after an etcd compaction (see the test "
                            "below) and drops old events only once they are minutes old")
async def test_watch_too_old_resource_version_is_410(api: ApiServer,
                                                     kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    old = (await core.create_namespaced_config_map("default", cm("x"))).metadata.resource_version
    await core.create_namespaced_config_map("default", cm("y"))
    api.store.compact()
    w = watch.Watch()
    with pytest.raises(ApiException) as e:
        async for _ in w.stream(core.list_namespaced_config_map, "default",
                                resource_version=str(int(old) - 1), timeout_seconds=2):
            pass
    assert e.value.status == 410
    # The raw stream is a 200 with one ERROR event carrying a 410 Status, as a real server sends.
    async with http(api) as s, s.get(
            f"{api.url}/api/v1/namespaces/default/configmaps",
            params={"watch": "true", "resourceVersion": "1"}) as r:
        assert r.status == 200
        line = json.loads(await r.content.readline())
        assert line["type"] == "ERROR"
        assert line["object"]["code"] == 410 and line["object"]["reason"] == "Expired"
        assert line["object"]["message"].startswith("too old resource version: 1 (")


async def test_watch_resumes_from_before_an_etcd_compaction(api: ApiServer,
                                                            kube: client.ApiClient) -> None:
    # kube-apiserver serves watches from its watch cache, which an etcd compaction leaves
    # alone: a watch from a compacted revision still resumes (kube-apiserver v1.37.2).
    core = client.CoreV1Api(kube)
    old = (await core.create_namespaced_config_map("default", cm("x"))).metadata.resource_version
    await core.create_namespaced_config_map("default", cm("y"))
    await api.compact()
    await core.create_namespaced_config_map("default", cm("z"))
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, "default",
                      resource_version=str(int(old) - 1), timeout_seconds=60)
    events = await collect(w, stream, 3)
    await w.close()
    assert events == [("ADDED", "x"), ("ADDED", "y"), ("ADDED", "z")]


async def test_watch_bookmarks_and_timeout(api: ApiServer) -> None:
    # Bookmarks come on the server's schedule: the watch cache sends one 2 s before the watch
    # times out (and every minute; the emulator's fixture: every 0.5 s), carrying the latest
    # resourceVersion once it is past the watch's, also when nothing watched has changed.
    start = await current_rv(api)
    loop = asyncio.get_running_loop()
    async with http(api) as s, s.get(
            f"{api.url}/api/v1/namespaces/default/configmaps",
            params={"watch": "True", "allowWatchBookmarks": "True", "timeoutSeconds": "4",
                    "resourceVersion": str(start)}) as r:
        began = loop.time()
        await serving_watches(api, 1)
        # A change the watch does not see (another namespace) moves the resourceVersion on.
        async with s.post(f"{api.url}/api/v1/namespaces/kube-public/configmaps",
                          json={"metadata": {"name": "elsewhere"}}) as made:
            assert made.status == 201
            elsewhere = int((await made.json())["metadata"]["resourceVersion"])
        lines = [json.loads(line) async for line in r.content if line.strip()]
        took = loop.time() - began
    assert lines and all(e["type"] == "BOOKMARK" for e in lines), lines
    marks = [int(e["object"]["metadata"]["resourceVersion"]) for e in lines]
    assert elsewhere <= marks[-1] <= await current_rv(api)
    assert all(start < m for m in marks)
    assert 3.5 < took < 10  # the stream ends at the watch's timeout
    # A watch shorter than those 2 s gets no bookmark, only its end.
    async with http(api) as s, s.get(
            f"{api.url}/api/v1/namespaces/default/configmaps",
            params={"watch": "True", "allowWatchBookmarks": "True", "timeoutSeconds": "1",
                    "resourceVersion": str(start)}) as r:
        assert [line async for line in r.content if line.strip()] == []


async def test_watch_with_label_selector_reports_transitions(api: ApiServer,
                                                            kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map("default", cm("t", {"sel": "no"}))
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, "default", label_selector="sel=yes",
                      timeout_seconds=60)
    task = asyncio.ensure_future(collect(w, stream, 2))
    await serving_watches(api, 1)
    patch = {"metadata": {"labels": {"sel": "yes"}}}
    await core.patch_namespaced_config_map("t", "default", patch,
                                           _content_type="application/merge-patch+json")
    patch = {"metadata": {"labels": {"sel": "no"}}}
    await core.patch_namespaced_config_map("t", "default", patch,
                                           _content_type="application/merge-patch+json")
    events = await task
    await w.close()
    assert events == [("ADDED", "t"), ("DELETED", "t")]


async def test_send_initial_events_ends_with_annotated_bookmark(api: ApiServer,
                                                                kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map("default", cm("i1"))
    async with http(api) as s, s.get(
            f"{api.url}/api/v1/namespaces/default/configmaps",
            params={"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
                    "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "1"}) as r:
        lines = [json.loads(line) async for line in r.content if line.strip()]
    types = [e["type"] for e in lines]
    assert types[0] == "ADDED"
    marks = [e for e in lines if e["type"] == "BOOKMARK"]
    assert marks[0]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_cut_watches_ends_streams(api: ApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, "default", timeout_seconds=30)

    async def drain() -> int:
        n = 0
        async for _ in stream:
            n += 1
        return n

    task = asyncio.ensure_future(drain())
    await serving_watches(api, 1)
    assert api.cut_watches() == 1
    await asyncio.wait_for(task, 60)  # the stream ends; the client must re-watch
