"""Corner cases where the emulated API must answer exactly as a real kube-apiserver does.

Each test pins one behaviour that differed before: resourceVersion semantics of reads, writes
and watches, strategy rules on updates, the CRD finalizer, the garbage collector's owner lookup,
request media types and the objects every cluster starts with.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from testbed.apiserver import ApiServer
from tests.fixtures.kube import current_rv, eventually, http, serving_watches

CMS = "/api/v1/namespaces/default/configmaps"
WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {
                               "type": "object",
                               "x-kubernetes-preserve-unknown-fields": True}}}]},
}


pytestmark = pytest.mark.both_backends


async def call(api: ApiServer, method: str, path: str, body: Any = None,
               **kw: Any) -> tuple[int, Any]:
    async with http(api) as s, s.request(
            method, api.url + path, json=body, **kw) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def make_cm(api: ApiServer, name: str, **meta: Any) -> dict[str, Any]:
    status, obj = await call(api, "POST", CMS, {"metadata": {"name": name, **meta}})
    assert status == 201, obj
    return obj


async def watch_lines(api: ApiServer, path: str, n: int, **params: str) -> list[dict[str, Any]]:
    """The first n non-bookmark events of a raw watch."""
    out: list[dict[str, Any]] = []
    async with http(api) as s, s.get(
            api.url + path, params={"watch": "true", **params}) as r:
        async for line in r.content:
            if line.strip():
                ev = json.loads(line)
                if ev["type"] != "BOOKMARK":
                    out.append(ev)
                if len(out) >= n:
                    break
    return out


async def make_crd(api: ApiServer) -> None:
    """Create the Widget CRD and return once the kind is served (a real server serves it a
    moment after the create, once the CRD is Established)."""
    status, body = await call(api, "POST",
                              "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    assert status == 201, body

    async def served() -> bool:
        return (await call(api, "GET", WIDGETS))[0] == 200
    await eventually(served)


# -- resourceVersion semantics -----------------------------------------------------------------
async def test_watch_from_a_future_resource_version_skips_what_comes_before(
        api: ApiServer) -> None:
    start = await current_rv(api)
    since = start + 2
    seen: list[tuple[str, str]] = []

    async def watch_until_f3() -> None:
        async with http(api) as s, s.get(api.url + CMS, params={
                "watch": "true", "resourceVersion": str(since)}) as r:
            async for line in r.content:
                if line.strip() and (ev := json.loads(line))["type"] != "BOOKMARK":
                    seen.append((ev["type"], ev["object"]["metadata"]["name"]))
                    if seen[-1][1] == "f3":
                        return

    watcher = asyncio.ensure_future(watch_until_f3())
    await serving_watches(api, 1)
    made = [await make_cm(api, name) for name in ("f1", "f2", "f3")]
    await asyncio.wait_for(watcher, 60)
    # Only changes after the requested resourceVersion are sent: f1 and f2 are not (unless
    # another write took a version in between, which a real cluster's controllers may do).
    after = [m["metadata"]["name"] for m in made if int(m["metadata"]["resourceVersion"]) > since]
    assert seen == [("ADDED", name) for name in after]
    assert "f1" not in after


async def test_watch_timeout_seconds_zero_means_the_server_default(api: ApiServer) -> None:
    watcher = asyncio.ensure_future(watch_lines(api, CMS, 1, timeoutSeconds="0",
                                                resourceVersion=str(await current_rv(api))))
    await serving_watches(api, 1)
    assert not watcher.done()  # a zero timeout does not end the watch at once
    await make_cm(api, "late")
    events = await asyncio.wait_for(watcher, 60)
    assert events[0]["object"]["metadata"]["name"] == "late"


async def test_reads_at_a_future_resource_version_wait_then_time_out(api: ApiServer) -> None:
    before = await current_rv(api)
    ahead = before + 50
    loop = asyncio.get_running_loop()
    began = loop.time()
    # A list and a get at a version not reached yet both wait 3 s for it (the watch cache's
    # wait), then answer 504.
    (status, body), (get_status, _) = await asyncio.gather(
        call(api, "GET", CMS, params={"resourceVersion": str(ahead)}),
        call(api, "GET", CMS + "/x", params={"resourceVersion": str(ahead)}))
    assert 2.9 < loop.time() - began < 10
    assert status == 504 and body["reason"] == "Timeout"
    assert get_status == 504
    # "current" is the server's own latest version while it waited.
    prefix = f"Timeout: Too large resource version: {ahead}, current: "
    assert body["message"].startswith(prefix)
    assert before <= int(body["message"].removeprefix(prefix)) <= await current_rv(api)
    assert body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    assert body["details"]["retryAfterSeconds"] == 1
    # A version reached while waiting is served.
    gets = api.requests["GET"]
    want = await current_rv(api) + 1
    reader = asyncio.ensure_future(call(api, "GET", CMS, params={"resourceVersion": str(want)}))

    async def waiting() -> bool:  # the read is in the server, waiting for the version
        return api.requests["GET"] > gets and not reader.done()
    await eventually(waiting)
    arrived = int((await make_cm(api, "arrives"))["metadata"]["resourceVersion"])
    status, body = await reader
    assert status == 200 and int(body["metadata"]["resourceVersion"]) >= want
    # (On a real cluster another write may reach the version first; then it is served as of
    # that write.)
    names = [i["metadata"]["name"] for i in body["items"]]
    assert ("arrives" in names) == (int(body["metadata"]["resourceVersion"]) >= arrived)


async def test_list_options_are_validated(api: ApiServer) -> None:
    status, body = await call(api, "GET", CMS, params={"resourceVersionMatch": "NotOlderThan"})
    assert status == 422 and body["reason"] == "Invalid"
    assert "resourceVersionMatch is forbidden unless resourceVersion is provided" in body[
        "message"]
    status, body = await call(api, "GET", CMS, params={"resourceVersionMatch": "Exact",
                                                       "resourceVersion": "0"})
    assert status == 422 and 'resourceVersionMatch "exact" is forbidden' in body["message"]
    status, _ = await call(api, "GET", CMS, params={"resourceVersionMatch": "NotOlderThan",
                                                    "resourceVersion": "0"})
    assert status == 200
    # A malformed resourceVersion: a list answers 400, a get (and a watch) 500 with no reason.
    status, body = await call(api, "GET", CMS, params={"resourceVersion": "abc"})
    assert status == 400 and body["reason"] == "BadRequest"
    assert body["message"] == ('invalid resource version: resourceVersion: Invalid value: "abc": '
                               'strconv.ParseUint: parsing "abc": invalid syntax')
    status, body = await call(api, "GET", CMS + "/kube-root-ca.crt",
                              params={"resourceVersion": "-1"})
    assert status == 500 and not body.get("reason")  # "" (StatusReasonUnknown), or left out
    assert body["message"] == ('resourceVersion: Invalid value: "-1": strconv.ParseUint: '
                               'parsing "-1": invalid syntax')


async def test_exact_list_reads_the_past_even_after_compaction(api: ApiServer) -> None:
    await make_cm(api, "old")
    status, body = await call(api, "GET", CMS)
    rv = body["metadata"]["resourceVersion"]
    then = [i["metadata"]["name"] for i in body["items"]]
    assert "old" in then
    await make_cm(api, "new")
    await call(api, "DELETE", CMS + "/old")
    status, body = await call(api, "GET", CMS, params={"resourceVersion": rv,
                                                       "resourceVersionMatch": "Exact"})
    assert status == 200 and body["metadata"]["resourceVersion"] == rv
    assert [i["metadata"]["name"] for i in body["items"]] == then
    status, body = await call(api, "GET", CMS, params={"resourceVersion": rv})  # NotOlderThan
    names = [i["metadata"]["name"] for i in body["items"]]
    assert "new" in names and "old" not in names
    # The watch cache holds that version: an etcd compaction does not expire it (v1.37.2).
    await api.compact()
    status, body = await call(api, "GET", CMS, params={"resourceVersion": rv,
                                                       "resourceVersionMatch": "Exact"})
    assert status == 200 and body["metadata"]["resourceVersion"] == rv
    assert [i["metadata"]["name"] for i in body["items"]] == then


async def test_paginated_list_is_one_consistent_snapshot(api: ApiServer) -> None:
    # Its own label keeps out what the cluster keeps in every namespace (kube-root-ca.crt).
    page_of = {"labelSelector": "test=pages", "limit": "2"}
    for name in ("p1", "p2", "p3"):
        await make_cm(api, name, labels={"test": "pages"})
    status, page = await call(api, "GET", CMS, params=page_of)
    assert [i["metadata"]["name"] for i in page["items"]] == ["p1", "p2"]
    await call(api, "DELETE", CMS + "/p3")
    await make_cm(api, "p4", labels={"test": "pages"})
    status, rest = await call(api, "GET", CMS, params={
        **page_of, "continue": page["metadata"]["continue"]})
    assert status == 200
    # The second page is read at the first page's revision: p3 still there, p4 not yet.
    assert [i["metadata"]["name"] for i in rest["items"]] == ["p3"]
    assert rest["metadata"]["resourceVersion"] == page["metadata"]["resourceVersion"]


async def test_create_with_resource_version_set_fails(api: ApiServer) -> None:
    status, body = await call(api, "POST", CMS, {"metadata": {"name": "rv",
                                                              "resourceVersion": "5"}})
    assert status == 500
    assert body["message"] == "resourceVersion should not be set on objects to be created"
    status, _ = await call(api, "GET", CMS + "/rv")
    assert status == 404


async def test_put_without_resource_version_is_unconditional_only_for_builtins(
        api: ApiServer) -> None:
    await make_cm(api, "plain")
    status, body = await call(api, "PUT", CMS + "/plain", {"metadata": {"name": "plain"},
                                                           "data": {"a": "1"}})
    assert status == 200 and body["data"] == {"a": "1"}
    await make_crd(api)
    status, w = await call(api, "POST", WIDGETS, {"apiVersion": "example.com/v1",
                                                  "kind": "Widget", "metadata": {"name": "w"}})
    assert status == 201
    status, body = await call(api, "PUT", WIDGETS + "/w", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": 2}})
    assert status == 422 and body["reason"] == "Invalid"
    assert body["message"] == ('widgets.example.com "w" is invalid: metadata.resourceVersion: '
                               "Invalid value: 0: must be specified for an update")
    w["spec"] = {"size": 2}
    status, body = await call(api, "PUT", WIDGETS + "/w", w)
    assert status == 200 and body["spec"] == {"size": 2}
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com"
    status, body = await call(api, "PUT", crd_path, CRD)
    assert status == 422 and "must be specified for an update" in body["message"]
    # Updating an object that is gone is 404, with or without a resourceVersion.
    status, _ = await call(api, "PUT", CMS + "/gone", {"metadata": {"name": "gone"}})
    assert status == 404


async def test_uid_is_immutable_and_creation_timestamp_is_kept(api: ApiServer) -> None:
    obj = await make_cm(api, "fixed")
    changed = {**obj, "metadata": {**obj["metadata"], "uid": "0000-other"}}
    # A PUT's uid is a storage precondition: another uid is a conflict, not an invalid object.
    status, body = await call(api, "PUT", CMS + "/fixed", changed)
    assert status == 409 and body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "fixed": StorageError: invalid object, '
        "Code: 4, Key: /registry/configmaps/default/fixed, ResourceVersion: 0, "
        "AdditionalErrorMsg: Precondition failed: UID in precondition: 0000-other, UID in "
        f"object meta: {obj['metadata']['uid']}")
    # A patch has no such precondition: there the uid is a field that may not change.
    for ctype, patch in (("application/merge-patch+json", {"metadata": {"uid": "0000-other"}}),
                         ("application/apply-patch+yaml", {
                             "apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "fixed", "uid": "0000-other"}})):
        status, body = await call(api, "PATCH", CMS + "/fixed", patch,
                                  params={"fieldManager": "test"},
                                  headers={"Content-Type": ctype})
        assert status == 422, (ctype, body)
        assert body["message"] == ('ConfigMap "fixed" is invalid: metadata.uid: Invalid '
                                   'value: "0000-other": field is immutable')
    moved = {**obj, "metadata": {**obj["metadata"], "creationTimestamp": "2001-01-01T00:00:00Z"},
             "data": {"k": "v"}}
    status, body = await call(api, "PUT", CMS + "/fixed", moved)
    assert status == 200
    assert body["metadata"]["creationTimestamp"] == obj["metadata"]["creationTimestamp"]


async def test_custom_resource_deletion_with_finalizer_bumps_generation_once(
        api: ApiServer) -> None:
    await make_crd(api)
    status, w = await call(api, "POST", WIDGETS, {
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    assert w["metadata"]["generation"] == 1
    status, first = await call(api, "DELETE", WIDGETS + "/held")
    assert status == 200 and first["metadata"]["generation"] == 2
    assert first["metadata"]["deletionTimestamp"]
    status, second = await call(api, "DELETE", WIDGETS + "/held")
    assert status == 200
    assert second["metadata"]["generation"] == 2
    assert second["metadata"]["deletionTimestamp"] == first["metadata"]["deletionTimestamp"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


# -- the CRD finalizer ---------------------------------------------------------------------------
async def test_crd_deletion_removes_instances_before_the_kind(api: ApiServer) -> None:
    await make_crd(api)
    status, _ = await call(api, "POST", WIDGETS, {
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    await call(api, "POST", WIDGETS, {"apiVersion": "example.com/v1", "kind": "Widget",
                                      "metadata": {"name": "free"}})
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com"
    watcher = asyncio.ensure_future(watch_lines(api, WIDGETS, 10))
    await serving_watches(api, 1)
    status, crd = await call(api, "DELETE", crd_path)
    assert status == 200
    assert crd["metadata"]["deletionTimestamp"]
    assert "customresourcecleanup.apiextensions.k8s.io" in crd["metadata"]["finalizers"]
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Terminating"] == "True"

    async def free_gone() -> None:
        status, body = await call(api, "GET", WIDGETS + "/free")
        assert status == 404, body

    await eventually(free_gone)
    # The kind is still served while an instance is held by its own finalizer...
    status, held = await call(api, "GET", WIDGETS + "/held")
    assert status == 200 and held["metadata"]["deletionTimestamp"]
    status, body = await call(api, "GET", crd_path)
    assert status == 200
    # ...but nothing new may be created.
    status, body = await call(api, "POST", WIDGETS, {"apiVersion": "example.com/v1",
                                                     "kind": "Widget",
                                                     "metadata": {"name": "late"}})
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == ('widgets.example.com "late" is forbidden: create not allowed '
                               "while custom resource definition is terminating")
    status, _ = await call(api, "PATCH", WIDGETS + "/held", {"metadata": {"finalizers": None}},
                           headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200

    async def crd_gone() -> None:
        status, _ = await call(api, "GET", crd_path)
        assert status == 404

    await eventually(crd_gone)
    status, _ = await call(api, "GET", WIDGETS)
    assert status == 404
    # Watchers saw both instances go, then their stream ended with the kind.
    events = await asyncio.wait_for(watcher, 60)
    deleted = {e["object"]["metadata"]["name"] for e in events if e["type"] == "DELETED"}
    assert deleted == {"free", "held"}


# -- garbage collector ---------------------------------------------------------------------------
def owned(name: str, owner: dict[str, Any], **ref: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": owner.get("apiVersion", "v1"), "kind": owner.get("kind", "ConfigMap"),
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], **ref}]}}


async def test_gc_resolves_owners_by_kind_namespace_and_uid(api: ApiServer) -> None:
    await call(api, "POST", "/api/v1/namespaces", {"metadata": {"name": "other"}})
    # An owner in another namespace is absent for a namespaced dependent.
    _status, far = await call(api, "POST", "/api/v1/namespaces/other/configmaps",
                             {"metadata": {"name": "far-owner"}})
    await call(api, "POST", CMS, owned("cross-ns", {**far, "kind": "ConfigMap"}))
    # A cluster-scoped owner of a namespaced dependent is fine.
    _, ns_owner = await call(api, "GET", "/api/v1/namespaces/other")
    await call(api, "POST", CMS, owned("ns-owned", {**ns_owner, "kind": "Namespace"}))
    # An owner that never existed, and one recreated under the same name, are absent.
    await call(api, "POST", CMS, owned("never", {"metadata": {
        "name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}))
    first = await make_cm(api, "phoenix")
    await call(api, "DELETE", CMS + "/phoenix")
    await make_cm(api, "phoenix")
    await call(api, "POST", CMS, owned("orphan-of-first", first))
    # A live owner keeps its dependent.
    keeper = await make_cm(api, "keeper")
    await call(api, "POST", CMS, owned("kept", keeper))

    async def collected() -> None:
        _, body = await call(api, "GET", CMS)
        names = {i["metadata"]["name"] for i in body["items"]}
        assert not names & {"cross-ns", "never", "orphan-of-first"}, names

    await eventually(collected)
    _, body = await call(api, "GET", CMS)
    assert {"ns-owned", "kept", "keeper", "phoenix"} <= {i["metadata"]["name"]
                                                         for i in body["items"]}


# -- requests ---------------------------------------------------------------------------------
async def test_request_media_types(api: ApiServer) -> None:
    async with http(api) as s:
        async with s.post(api.url + CMS, data=b"metadata:\n  name: from-yaml\ndata: {a: '1'}\n",
                          headers={"Content-Type": "application/yaml"}) as r:
            assert r.status == 201
            assert (await r.json())["data"] == {"a": "1"}
        async with s.post(api.url + CMS, data=b'{"metadata":{"name":"t"}}',
                          headers={"Content-Type": "text/plain"}) as r:
            body = await r.json()
            assert r.status == 415 and body["reason"] == "UnsupportedMediaType"
            assert "application/json, application/yaml" in body["message"]
        async with s.post(api.url + CMS, data=b'{"metadata":{"name":"bare"}}',
                          skip_auto_headers=["Content-Type"]) as r:
            assert r.status == 201  # no Content-Type at all is read as JSON


async def test_status_codes_of_bad_requests(api: ApiServer) -> None:
    assert (await call(api, "GET", "/api/v1/namespaces/default/nopes"))[0] == 404
    assert (await call(api, "GET", "/api/v1/namespaces/default/nodes"))[0] == 404
    status, body = await call(api, "PUT", CMS, {"metadata": {"name": "x"}})
    assert status == 405 and body["reason"] == "MethodNotAllowed"
    async with http(api) as s, s.post(
            api.url + CMS, data=b'{"metadata": {', headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400 and (await r.json())["reason"] == "BadRequest"
    status, body = await call(api, "POST", CMS, {"kind": "Secret", "apiVersion": "v1",
                                                 "metadata": {"name": "x"}})
    assert status == 400
    status, body = await call(api, "POST", CMS, {"metadata": {"name": "x",
                                                              "namespace": "elsewhere"}})
    assert status == 400 and "does not match the namespace" in body["message"]


# -- what a new cluster holds -----------------------------------------------------------------
async def test_new_cluster_has_default_service_accounts_and_kubernetes_service(
        kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        sa = await core.read_namespaced_service_account("default", ns)
        assert sa.metadata.uid
    svc = await core.read_namespaced_service("kubernetes", "default")
    assert svc.spec.cluster_ip == "10.96.0.1" and svc.spec.ports[0].port == 443
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_service("kubernetes", "kube-system")
    assert e.value.status == 404


async def test_openapi_v2_is_served(api: ApiServer) -> None:
    status, body = await call(api, "GET", "/openapi/v2")
    assert status == 200 and body["swagger"] == "2.0"
    async with http(api) as s, s.get(
            api.url + "/openapi/v2",
            headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"}
    ) as r:
        assert r.status == 200 and (await r.read()).startswith(b"\x0a\x032.0")


async def test_deprecated_watch_paths_still_stream(api: ApiServer) -> None:
    await make_cm(api, "w-one")
    await make_cm(api, "w-two")
    events = await asyncio.wait_for(watch_lines(
        api, "/api/v1/watch/namespaces/default/configmaps/w-two", 1, timeoutSeconds="60"), 60)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w-two")]
    events = await asyncio.wait_for(watch_lines(api, "/api/v1/watch/namespaces", 4,
                                                timeoutSeconds="60"), 60)
    assert {e["object"]["metadata"]["name"] for e in events} == {
        "default", "kube-system", "kube-public", "kube-node-lease"}


async def test_server_side_apply_honours_a_resource_version_precondition(
        api: ApiServer) -> None:
    live = await make_cm(api, "ssa")
    path = CMS + "/ssa?fieldManager=ops"
    stale = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "ssa", "resourceVersion": "1"}, "data": {"a": "1"}}
    headers = {"Content-Type": "application/apply-patch+yaml"}
    status, body = await call(api, "PATCH", path, stale, headers=headers)
    assert status == 409 and body["reason"] == "Conflict"
    fresh = {**stale, "metadata": {"name": "ssa",
                                   "resourceVersion": live["metadata"]["resourceVersion"]}}
    status, body = await call(api, "PATCH", path, fresh, headers=headers)
    assert status == 200 and body["data"] == {"a": "1"}


async def test_service_defaults_and_node_ports(api: ApiServer) -> None:
    svcs = "/api/v1/namespaces/default/services"
    status, svc = await call(api, "POST", svcs, {
        "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "selector": {"app": "x"},
                 "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 443}]}})
    assert status == 201
    spec = svc["spec"]
    assert spec["clusterIPs"] == [spec["clusterIP"]] and spec["ipFamilies"] == ["IPv4"]
    assert spec["ipFamilyPolicy"] == "SingleStack" and spec["sessionAffinity"] == "None"
    assert spec["externalTrafficPolicy"] == "Cluster"
    ports = [p["nodePort"] for p in spec["ports"]]
    assert len(set(ports)) == 2 and all(30000 <= p <= 32767 for p in ports)
    # An update that leaves nodePort out keeps the allocated one.
    svc["spec"]["ports"] = [{"name": "a", "port": 80}, {"name": "b", "port": 443}]
    status, svc = await call(api, "PUT", svcs + "/np", svc)
    assert status == 200 and [p["nodePort"] for p in svc["spec"]["ports"]] == ports
    # Go's decoder wants strings where the type has strings.
    status, body = await call(api, "POST", svcs, {
        "metadata": {"name": "bad"}, "spec": {"selector": {"app": True}}})
    assert status == 400 and "cannot unmarshal bool into Go struct field " \
                             "ServiceSpec.spec.selector of type string" in body["message"]


async def test_invalid_object_details_name_the_kind(api: ApiServer) -> None:
    status, body = await call(api, "POST", CMS, {"metadata": {"name": "Bad_Name"}})
    assert status == 422
    assert body["details"]["kind"] == "ConfigMap"  # the kind, as NewInvalid reports it
    assert body["message"].startswith('ConfigMap "Bad_Name" is invalid: metadata.name')
