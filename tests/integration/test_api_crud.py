"""CRUD, discovery, selectors, concurrency and subresources through kubernetes_asyncio over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from testbed.apiserver import ApiServer
from tests.fixtures.kube import http, retry_on_conflict

pytestmark = pytest.mark.both_backends


def status_of(exc: ApiException) -> dict:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels),
                              data=data or None)


async def test_discovery_models_validate(kube: client.ApiClient) -> None:
    versions = await client.CoreApi(kube).get_api_versions()
    assert versions.versions == ["v1"]
    groups = await client.ApisApi(kube).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {"apps", "rbac.authorization.k8s.io", "apiextensions.k8s.io",
            "coordination.k8s.io"} <= names
    core = await client.CoreV1Api(kube).get_api_resources()
    assert {"namespaces", "secrets", "configmaps", "namespaces/status"} <= {
        r.name for r in core.resources}
    apps = await client.AppsV1Api(kube).get_api_resources()
    deploy = next(r for r in apps.resources if r.name == "deployments")
    assert deploy.namespaced and "watch" in deploy.verbs and deploy.kind == "Deployment"
    assert "deployments/scale" in {r.name for r in apps.resources}
    code = await client.VersionApi(kube).get_code()
    assert code.major == "1" and code.git_version.startswith("v1.")


async def test_discovery_with_and_without_trailing_slash(api: ApiServer) -> None:

    async with http(api) as s:
        for path in ("/api", "/api/", "/apis", "/apis/", "/version", "/version/",
                     "/api/v1", "/api/v1/", "/apis/apps/v1", "/apis/apps/v1/", "/apis/apps/"):
            async with s.get(api.url + path) as r:
                assert r.status == 200, path
                assert r.content_type == "application/json"
        async with s.get(api.url + "/apis/nope.example.com/v1") as r:
            assert r.status == 404


async def test_create_sets_server_fields_and_get_roundtrips(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    created = await core.create_namespaced_config_map("default", cm("one", a="1"))
    meta = created.metadata
    assert meta.uid and meta.resource_version and meta.creation_timestamp
    got = await core.read_namespaced_config_map("one", "default")
    assert got.data == {"a": "1"} and got.metadata.uid == meta.uid
    created2 = await core.create_namespaced_config_map("default", cm("two"))
    assert int(created2.metadata.resource_version) > int(meta.resource_version)


async def test_generate_name(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="gen-"))
    a = await core.create_namespaced_config_map("default", body)
    b = await core.create_namespaced_config_map("default", body)
    assert a.metadata.name.startswith("gen-") and len(a.metadata.name) == len("gen-") + 5
    assert a.metadata.name != b.metadata.name


async def test_error_codes_carry_status_bodies(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_config_map("missing", "default")
    body = status_of(e.value)
    assert e.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == 'configmaps "missing" not found'
    assert body["details"] == {"name": "missing", "kind": "configmaps"}

    await core.create_namespaced_config_map("default", cm("dup"))
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_config_map("default", cm("dup"))
    assert e.value.status == 409 and status_of(e.value)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as e:
        await core.create_namespaced_config_map("nope", cm("x"))
    assert e.value.status == 404 and 'namespaces "nope" not found' in status_of(e.value)[
        "message"]

    with pytest.raises(ApiException) as e:
        await core.create_namespaced_config_map("default", cm("Bad_Name"))
    body = status_of(e.value)
    assert e.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"


async def test_stale_resource_version_conflicts(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    first = await core.create_namespaced_config_map("default", cm("c", a="1"))
    first.data = {"a": "2"}
    updated = await core.replace_namespaced_config_map("c", "default", first)
    assert updated.data == {"a": "2"}
    first.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as e:
        await core.replace_namespaced_config_map("c", "default", first)
    body = status_of(e.value)
    assert e.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]


async def test_noop_update_keeps_resource_version(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    obj = await core.create_namespaced_config_map("default", cm("same", a="1"))
    again = await core.replace_namespaced_config_map("same", "default", obj)
    assert again.metadata.resource_version == obj.metadata.resource_version


async def test_label_and_field_selectors(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map("default", cm("a", {"tier": "web", "env": "prod"}))
    await core.create_namespaced_config_map("default", cm("b", {"tier": "db", "env": "prod"}))
    await core.create_namespaced_config_map("default", cm("c", {"tier": "web"}))

    async def names(**kw: str) -> set[str]:
        items = (await core.list_namespaced_config_map("default", **kw)).items
        return {i.metadata.name for i in items if i.metadata.name in "abc"}

    assert await names(label_selector="tier=web") == {"a", "c"}
    assert await names(label_selector="tier==web,env=prod") == {"a"}
    assert await names(label_selector="tier!=web") == {"b"}
    assert await names(label_selector="tier in (db, web),env") == {"a", "b"}
    assert await names(label_selector="tier notin (web)") == {"b"}
    assert await names(label_selector="!env") == {"c"}
    assert await names(field_selector="metadata.name=b") == {"b"}
    assert await names(field_selector="metadata.name!=b") == {"a", "c"}
    with pytest.raises(ApiException) as e:
        await core.list_namespaced_config_map("default", field_selector="data.x=1")
    # A kind without field labels of its own refuses others with apimachinery's default words.
    assert e.value.status == 400 and status_of(e.value)["message"] == (
        '"data.x" is not a known field selector: only "metadata.name", "metadata.namespace"')
    with pytest.raises(ApiException) as e:
        await core.list_namespaced_pod("default", field_selector="data.x=1")
    assert e.value.status == 400 and status_of(e.value)["message"] == (
        "field label not supported: data.x")
    with pytest.raises(ApiException) as e:
        await core.list_namespaced_config_map("default", label_selector="tier in web")
    assert e.value.status == 400


async def test_list_pagination(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    for i in range(7):
        await core.create_namespaced_config_map("default", cm(f"p{i}", {"page": "yes"}))
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = await core.list_namespaced_config_map("default", label_selector="page=yes",
                                                     limit=3, _continue=token)
        pages += 1
        seen += [i.metadata.name for i in page.items]
        assert page.metadata.remaining_item_count is None  # not counted under a selector
        token = page.metadata._continue
        if not token:
            break
    assert pages == 3 and seen == sorted(f"p{i}" for i in range(7))
    # Without a selector each page also counts what is left (secrets: no controller adds any to
    # a new namespace).
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="paging")))
    for i in range(5):
        await core.create_namespaced_secret("paging", client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"s{i}")))
    page = await core.list_namespaced_secret("paging", limit=2)
    assert [i.metadata.name for i in page.items] == ["s0", "s1"]
    assert page.metadata.remaining_item_count == 3
    page = await core.list_namespaced_secret("paging", limit=2, _continue=page.metadata._continue)
    assert [i.metadata.name for i in page.items] == ["s2", "s3"]
    assert page.metadata.remaining_item_count == 1


async def test_list_all_namespaces_and_cluster_scoped(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))
    await core.create_namespaced_config_map("other", cm("x"))
    await core.create_namespaced_config_map("default", cm("y"))
    everywhere = await core.list_config_map_for_all_namespaces()
    pairs = {(i.metadata.namespace, i.metadata.name) for i in everywhere.items}
    assert {("other", "x"), ("default", "y")} <= pairs
    ns = await core.read_namespace("other")
    assert ns.status.phase == "Active" and ns.spec.finalizers == ["kubernetes"]
    assert ns.metadata.labels["kubernetes.io/metadata.name"] == "other"


def deployment(name: str, replicas: int = 1) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app",
                                                                     image="nginx:1")]))))


async def test_generation_and_status_split(kube: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube)
    d = await apps.create_namespaced_deployment("default", deployment("web"))
    assert d.metadata.generation == 1
    # (On a real cluster the deployment controller writes status meanwhile: each write below
    # reads afresh and goes again on a conflict, and only the write's own answer is checked.)

    async def write(change: Callable[[client.V1Deployment], None], *,
                    status: bool = False) -> client.V1Deployment:
        async def once() -> client.V1Deployment:
            d = await apps.read_namespaced_deployment("web", "default")
            change(d)
            if status:
                return await apps.replace_namespaced_deployment_status("web", "default", d)
            return await apps.replace_namespaced_deployment("web", "default", d)
        return await retry_on_conflict(once)

    # A label change is metadata: generation stays.
    d = await write(lambda d: setattr(d.metadata, "labels", {"team": "a"}))
    assert d.metadata.generation == 1

    # Status written through the main resource is ignored.
    def fake_status(d: client.V1Deployment) -> None:
        d.status = client.V1DeploymentStatus(replicas=5)
    d = await write(fake_status)
    assert d.status is None or d.status.replicas != 5

    # Status through /status changes status only, never spec.
    def status_and_spec(d: client.V1Deployment) -> None:
        d.status = client.V1DeploymentStatus(replicas=1, ready_replicas=1, observed_generation=7)
        d.spec.replicas = 9
    d = await write(status_and_spec, status=True)
    assert d.status.observed_generation == 7 and d.spec.replicas == 1
    assert d.metadata.generation == 1

    # A spec change bumps generation.
    d = await write(lambda d: setattr(d.spec, "replicas", 2))
    assert d.metadata.generation == 2


async def test_scale_subresource(kube: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube)
    await apps.create_namespaced_deployment("default", deployment("s", 2))
    scale = await apps.read_namespaced_deployment_scale("s", "default")
    assert scale.spec.replicas == 2 and scale.status.selector == "app=s"

    async def scale_to_4() -> client.V1Scale:
        # The Scale carries the Deployment's resourceVersion: a status write by the real
        # deployment controller in between is a conflict, so read afresh and go again.
        scale = await apps.read_namespaced_deployment_scale("s", "default")
        scale.spec.replicas = 4
        return await apps.replace_namespaced_deployment_scale("s", "default", scale)

    await retry_on_conflict(scale_to_4)
    assert (await apps.read_namespaced_deployment("s", "default")).spec.replicas == 4
    await apps.patch_namespaced_deployment_scale(
        "s", "default", {"spec": {"replicas": 1}},
        _content_type="application/merge-patch+json")
    assert (await apps.read_namespaced_deployment("s", "default")).spec.replicas == 1


async def test_secret_string_data_is_encoded(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    s = await core.create_namespaced_secret("default", client.V1Secret(
        metadata=client.V1ObjectMeta(name="s"), string_data={"user": "admin"}))
    assert s.data == {"user": "YWRtaW4="} and s.type == "Opaque" and s.string_data is None


async def test_dry_run_persists_nothing(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    out = await core.create_namespaced_config_map("default", cm("dry"), dry_run="All")
    assert out.metadata.name == "dry"
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_config_map("dry", "default")
    assert e.value.status == 404


async def test_delete_collection(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    for n in ("d1", "d2", "keep"):
        await core.create_namespaced_config_map(
            "default", cm(n, {"batch": "x" if n != "keep" else "y"}))
    await core.delete_collection_namespaced_config_map("default", label_selector="batch=x")
    left = {i.metadata.name for i in (await core.list_namespaced_config_map("default")).items}
    assert "keep" in left and not {"d1", "d2"} & left


async def test_leases_and_rbac_round_trip(kube: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(kube)
    lease = await coord.create_namespaced_lease("default", client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15)))
    assert lease.spec.holder_identity == "a"
    rbac = client.RbacAuthorizationV1Api(kube)
    role = await rbac.create_cluster_role(client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name="reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get"])]))
    assert role.rules[0].verbs == ["get"]
    ext = client.ApiextensionsV1Api(kube)
    assert (await ext.list_custom_resource_definition()).items == []


async def test_events_select_on_involved_object(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    for name, target in (("e1", "agent"), ("e2", "other")):
        await core.create_namespaced_event("default", client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=name),
            involved_object=client.V1ObjectReference(kind="ConfigMap", name=target,
                                                     namespace="default"),
            reason="SpecRejected", message="bad signature", type="Warning"))
    events = await core.list_namespaced_event(
        "default", field_selector="involvedObject.name=agent,involvedObject.kind=ConfigMap")
    assert [e.metadata.name for e in events.items] == ["e1"]
    assert events.items[0].reason == "SpecRejected"
