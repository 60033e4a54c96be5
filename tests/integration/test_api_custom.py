"""Custom resources of the real CAPI CRDs: validation, pruning, PATCH types, server-side apply."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from testbed.apiserver import ApiServer

G, V = "controlplane.cluster.x-k8s.io", "v1beta2"
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"


pytestmark = pytest.mark.both_backends


def kcp(name: str = "cp", replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}", "kind": "KubeadmControlPlane",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas, "version": "v1.35.2",
            "machineTemplate": {"spec": {"infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachineTemplate",
                "name": "cp-tmpl"}}},
            **spec,
        },
    }


def body_of(e: ApiException) -> dict[str, Any]:
    return json.loads(e.body)


@pytest.fixture
def custom(capi_api: ApiServer, kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


async def create_kcp(custom: client.CustomObjectsApi, **kw: Any) -> dict[str, Any]:
    obj: dict[str, Any] = await custom.create_namespaced_custom_object(
        G, V, "default", "kubeadmcontrolplanes", kcp(**kw))
    return obj


async def test_valid_object_is_created_and_unknown_fields_pruned(
        custom: client.CustomObjectsApi) -> None:
    body = kcp()
    body["spec"]["notAField"] = True
    out = await custom.create_namespaced_custom_object(G, V, "default",
                                                       "kubeadmcontrolplanes", body)
    assert "notAField" not in out["spec"] and out["spec"]["replicas"] == 1
    assert out["metadata"]["generation"] == 1


async def test_invalid_object_is_422_naming_the_field(custom: client.CustomObjectsApi) -> None:
    bad = kcp()
    bad["spec"]["replicas"] = "three"
    with pytest.raises(ApiException) as e:
        await custom.create_namespaced_custom_object(G, V, "default", "kubeadmcontrolplanes",
                                                     bad)
    body = body_of(e.value)
    assert e.value.status == 422 and body["reason"] == "Invalid"
    # The schema's type error; the scale subresource cannot read its replicas either; and the
    # kind's CEL rules are not evaluated on an object of the wrong shape.
    assert body["message"] == (
        'KubeadmControlPlane.controlplane.cluster.x-k8s.io "cp" is invalid: ['
        'spec.replicas: Invalid value: "string": spec.replicas in body must be of type '
        'integer: "string", .spec.replicas: Invalid value: 0: .spec.replicas accessor error: '
        "three is of the type string, expected int64, <nil>: Invalid value: null: some "
        "validation rules were not checked because the object was invalid; correct the "
        "existing errors to complete validation]")
    assert [(c["field"], c["reason"]) for c in body["details"]["causes"]] == [
        ("spec.replicas", "FieldValueTypeInvalid"), (".spec.replicas", "FieldValueInvalid"),
        ("<nil>", "FieldValueInvalid")]
    missing = kcp()
    del missing["spec"]["version"]
    with pytest.raises(ApiException) as e:
        await custom.create_namespaced_custom_object(G, V, "default", "kubeadmcontrolplanes",
                                                     missing)
    assert e.value.status == 422
    assert any(c["field"] == "spec.version" and "Required value" in c["message"]
               for c in body_of(e.value)["details"]["causes"])


async def test_status_subresource_split_on_custom_resources(
        custom: client.CustomObjectsApi) -> None:
    created = await create_kcp(custom)
    created["status"] = {"replicas": 7}
    out = await custom.replace_namespaced_custom_object(G, V, "default",
                                                        "kubeadmcontrolplanes", "cp", created)
    assert "status" not in out
    out = await custom.patch_namespaced_custom_object_status(
        G, V, "default", "kubeadmcontrolplanes", "cp",
        {"status": {"replicas": 1}, "spec": {"replicas": 5}}, _content_type=MERGE)
    assert out["status"]["replicas"] == 1 and out["spec"]["replicas"] == 1
    assert out["metadata"]["generation"] == 1
    out = await custom.patch_namespaced_custom_object(
        G, V, "default", "kubeadmcontrolplanes", "cp", {"spec": {"replicas": 3}},
        _content_type=MERGE)
    assert out["metadata"]["generation"] == 2 and out["status"]["replicas"] == 1


async def test_scale_subresource_on_custom_resources(custom: client.CustomObjectsApi) -> None:
    await create_kcp(custom)
    scale = await custom.get_namespaced_custom_object_scale(G, V, "default",
                                                            "kubeadmcontrolplanes", "cp")
    assert scale["spec"]["replicas"] == 1 and scale["kind"] == "Scale"
    await custom.patch_namespaced_custom_object_scale(
        G, V, "default", "kubeadmcontrolplanes", "cp", {"spec": {"replicas": 3}},
        _content_type=MERGE)
    got = await custom.get_namespaced_custom_object(G, V, "default", "kubeadmcontrolplanes",
                                                    "cp")
    assert got["spec"]["replicas"] == 3


async def test_patch_content_types(custom: client.CustomObjectsApi) -> None:
    await create_kcp(custom)
    out = await custom.patch_namespaced_custom_object(
        G, V, "default", "kubeadmcontrolplanes", "cp",
        [{"op": "replace", "path": "/spec/replicas", "value": 3}],
        _content_type="application/json-patch+json")
    assert out["spec"]["replicas"] == 3
    # A dict body sent as JSON patch (the client's default for dicts) is a 400, as on a real server.
    with pytest.raises(ApiException) as e:
        await custom.patch_namespaced_custom_object(
            G, V, "default", "kubeadmcontrolplanes", "cp", {"spec": {"replicas": 5}})
    assert e.value.status == 400 and body_of(e.value)["reason"] == "BadRequest"
    with pytest.raises(ApiException) as e:
        await custom.patch_namespaced_custom_object(
            G, V, "default", "kubeadmcontrolplanes", "cp", {"spec": {"replicas": 5}},
            _content_type="application/strategic-merge-patch+json")
    assert e.value.status == 415
    # A patch that makes the object invalid is rejected whole.
    with pytest.raises(ApiException) as e:
        await custom.patch_namespaced_custom_object(
            G, V, "default", "kubeadmcontrolplanes", "cp", {"spec": {"version": 135}},
            _content_type=MERGE)
    assert e.value.status == 422
    got = await custom.get_namespaced_custom_object(G, V, "default", "kubeadmcontrolplanes",
                                                    "cp")
    assert got["spec"]["replicas"] == 3


async def test_patch_with_stale_resource_version_conflicts(
        custom: client.CustomObjectsApi) -> None:
    created = await create_kcp(custom)
    stale = created["metadata"]["resourceVersion"]
    await custom.patch_namespaced_custom_object(G, V, "default", "kubeadmcontrolplanes", "cp",
                                                {"spec": {"replicas": 3}}, _content_type=MERGE)
    with pytest.raises(ApiException) as e:
        await custom.patch_namespaced_custom_object(
            G, V, "default", "kubeadmcontrolplanes", "cp",
            {"metadata": {"resourceVersion": stale}, "spec": {"replicas": 5}},
            _content_type=MERGE)
    assert e.value.status == 409 and body_of(e.value)["reason"] == "Conflict"


async def test_server_side_apply_ownership(custom: client.CustomObjectsApi) -> None:
    async def apply(body: dict[str, Any], manager: str, force: bool | None = None) -> Any:
        return await custom.patch_namespaced_custom_object(
            G, V, "default", "kubeadmcontrolplanes", "cp", body, field_manager=manager,
            force=force, _content_type=APPLY)

    # Apply creates when missing (a 201, for which the client returns no body).
    await apply(kcp(rollout={"after": "2030-01-01T00:00:00Z"}), "agent")
    created = await custom.get_namespaced_custom_object(G, V, "default",
                                                        "kubeadmcontrolplanes", "cp")
    assert created["spec"]["rollout"]["after"] == "2030-01-01T00:00:00Z"
    managers = {m["manager"]: m["operation"] for m in created["metadata"]["managedFields"]}
    assert managers == {"agent": "Apply"}
    # Re-applying the same configuration changes nothing.
    again = await apply(kcp(rollout={"after": "2030-01-01T00:00:00Z"}), "agent")
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    # A field the same manager stops applying is removed.
    dropped = await apply(kcp(), "agent")
    assert "rollout" not in dropped["spec"]
    # Another manager changes replicas with a plain patch: it now owns that field.
    await custom.patch_namespaced_custom_object(
        G, V, "default", "kubeadmcontrolplanes", "cp", {"spec": {"replicas": 3}},
        field_manager="human", _content_type=MERGE)
    with pytest.raises(ApiException) as e:
        await apply(kcp(replicas=5), "agent")
    body = body_of(e.value)
    assert e.value.status == 409 and body["reason"] == "Conflict"
    assert 'conflict with "human"' in body["message"] and ".spec.replicas" in body["message"]
    # force takes the field over.
    forced = await apply(kcp(replicas=5), "agent", force=True)
    assert forced["spec"]["replicas"] == 5
    # Without fieldManager an apply is an invalid request.
    with pytest.raises(ApiException) as e:
        await custom.patch_namespaced_custom_object(G, V, "default", "kubeadmcontrolplanes",
                                                    "cp", kcp(), _content_type=APPLY)
    body = body_of(e.value)
    assert e.value.status == 422 and body["reason"] == "Invalid"
    assert body["message"] == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                               "value: is required for apply patch")


async def test_custom_object_watch_and_list_across_versions(
        custom: client.CustomObjectsApi) -> None:
    await create_kcp(custom)
    listed = await custom.list_namespaced_custom_object(G, V, "default",
                                                        "kubeadmcontrolplanes")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["cp"]
    assert listed["kind"] == "KubeadmControlPlaneList"
    old = await custom.get_namespaced_custom_object(G, "v1beta1", "default",
                                                    "kubeadmcontrolplanes", "cp")
    assert old["apiVersion"] == f"{G}/v1beta1"
