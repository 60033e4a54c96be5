"""Deletion life cycle: finalizers, ownerReference garbage collection, namespaces, CRDs."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from tests.fixtures.kube import eventually

pytestmark = pytest.mark.both_backends


def cm(name: str, owner: client.V1ConfigMap | None = None, block: bool = False,
       finalizers: list[str] | None = None) -> client.V1ConfigMap:
    refs = None
    if owner is not None:
        refs = [client.V1OwnerReference(api_version="v1", kind="ConfigMap",
                                        name=owner.metadata.name, uid=owner.metadata.uid,
                                        block_owner_deletion=block or None)]
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, owner_references=refs,
                                                           finalizers=finalizers))


async def exists(core: client.CoreV1Api, name: str, ns: str = "default") -> bool:
    try:
        await core.read_namespaced_config_map(name, ns)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


async def test_finalizer_holds_deletion_until_removed(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map("default", cm("f", finalizers=["example.com/x"]))
    await core.delete_namespaced_config_map("f", "default")
    held = await core.read_namespaced_config_map("f", "default")
    assert held.metadata.deletion_timestamp is not None
    # Finalizers cannot be added to an object being deleted (422 Invalid, as metadata
    # validation rejects it on a real server).
    held.metadata.finalizers = ["example.com/x", "example.com/y"]
    with pytest.raises(ApiException) as e:
        await core.replace_namespaced_config_map("f", "default", held)
    assert e.value.status == 422 and "no new finalizers" in e.value.body
    await core.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": None}},
                                           _content_type="application/merge-patch+json")
    assert not await exists(core, "f")


async def test_background_propagation_collects_dependents(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    owner = await core.create_namespaced_config_map("default", cm("owner"))
    await core.create_namespaced_config_map("default", cm("dep", owner))
    await core.delete_namespaced_config_map("owner", "default",
                                            propagation_policy="Background")
    assert not await exists(core, "owner")

    async def dep_gone() -> bool:
        return not await exists(core, "dep")

    await eventually(dep_gone)


async def test_orphan_propagation_keeps_dependents(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    owner = await core.create_namespaced_config_map("default", cm("o"))
    await core.create_namespaced_config_map("default", cm("kept", owner))
    await core.delete_namespaced_config_map("o", "default", propagation_policy="Orphan")

    # The garbage collector orphans the dependent (drops its ownerReference), then lets the
    # owner go: a real one does both asynchronously.
    async def orphaned() -> None:
        kept = await core.read_namespaced_config_map("kept", "default")
        assert kept.metadata.owner_references is None
        assert not await exists(core, "o")

    await eventually(orphaned)
    assert await exists(core, "kept")


async def test_foreground_waits_for_blocking_dependents(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    owner = await core.create_namespaced_config_map("default", cm("fg"))
    await core.create_namespaced_config_map(
        "default", cm("child", owner, block=True, finalizers=["example.com/hold"]))
    await core.delete_namespaced_config_map("fg", "default", propagation_policy="Foreground")
    o = await core.read_namespaced_config_map("fg", "default")
    assert "foregroundDeletion" in o.metadata.finalizers and o.metadata.deletion_timestamp

    async def child_terminating() -> bool:
        c = await core.read_namespaced_config_map("child", "default")
        return c.metadata.deletion_timestamp is not None

    await eventually(child_terminating)
    assert await exists(core, "fg")  # still held by its blocking dependent
    await core.patch_namespaced_config_map("child", "default",
                                           {"metadata": {"finalizers": None}},
                                           _content_type="application/merge-patch+json")

    async def owner_gone() -> bool:
        return not await exists(core, "fg")

    await eventually(owner_gone)


async def test_delete_preconditions(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map("default", cm("p"))
    with pytest.raises(ApiException) as e:
        await core.delete_namespaced_config_map(
            "p", "default", body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid="not-the-uid")))
    assert e.value.status == 409
    assert await exists(core, "p")


async def test_namespace_deletion_empties_then_removes(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="gone")))

    async def has_default_sa() -> bool:
        sas = await core.list_namespaced_service_account("gone")
        return [s.metadata.name for s in sas.items] == ["default"]

    await eventually(has_default_sa)
    await core.create_namespaced_config_map("gone", cm("inside"))
    await core.delete_namespace("gone")
    ns = await core.read_namespace("gone")
    assert ns.status.phase == "Terminating"
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_config_map("gone", cm("late"))
    assert e.value.status == 403 and "being terminated" in e.value.body

    async def ns_gone() -> bool:
        try:
            await core.read_namespace("gone")
            return False
        except ApiException as exc:
            return exc.status == 404

    await eventually(ns_gone)
    assert not await exists(core, "inside", "gone")


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                  "shortNames": ["wd"]},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": ["size"], "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                    "color": {"type": "string", "enum": ["red", "blue"]}}},
                "status": {"type": "object", "properties": {
                    "ready": {"type": "boolean"}}}}}},
        }],
    },
}


async def test_crd_registers_kind_at_run_time_and_removal_drops_objects(
        kube: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(kube)
    created = await ext.create_custom_resource_definition(CRD)
    assert created.metadata.name == "widgets.example.com"

    async def established() -> None:  # at once on the emulator, a moment later on a real one
        crd = await ext.read_custom_resource_definition("widgets.example.com")
        conds = {c.type: c.status for c in crd.status.conditions or []}
        assert conds == {"NamesAccepted": "True", "Established": "True"}, conds
        try:
            await client.CustomObjectsApi(kube).get_api_resources("example.com", "v1")
        except ApiException as e:
            raise AssertionError(f"not served yet: {e.status}") from e

    await eventually(established)
    custom = client.CustomObjectsApi(kube)
    w = await custom.create_namespaced_custom_object(
        "example.com", "v1", "default", "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"},
         "spec": {"size": 3}})
    assert w["metadata"]["generation"] == 1
    res = await client.CustomObjectsApi(kube).get_api_resources("example.com", "v1")
    assert {r.name for r in res.resources} == {"widgets", "widgets/status"}
    await ext.delete_custom_resource_definition("widgets.example.com")

    # The CRD finalizer deletes the instances first, then the kind stops being served.
    async def gone() -> None:
        try:
            await custom.get_namespaced_custom_object("example.com", "v1", "default",
                                                      "widgets", "w1")
        except ApiException as e:
            assert e.status == 404
            return
        raise AssertionError("w1 is still served")

    await eventually(gone)
