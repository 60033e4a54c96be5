"""PATCH semantics of the emulated apiserver: RFC 6902, RFC 7386 and strategic merge."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from testbed.apiserver.patch import (
    BUILTIN_LISTS,
    ITEM,
    ListType,
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
    schema_lists,
    unsupported_patch_type,
)

GENERIC_422 = "the server rejected our request due to an error in our request"


# -- RFC 6902 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "patch", "expected"),
    [
        pytest.param(  # A.1
            {"foo": "bar"},
            [{"op": "add", "path": "/baz", "value": "qux"}],
            {"foo": "bar", "baz": "qux"},
            id="add-member",
        ),
        pytest.param(  # A.2
            {"foo": ["bar", "baz"]},
            [{"op": "add", "path": "/foo/1", "value": "qux"}],
            {"foo": ["bar", "qux", "baz"]},
            id="add-array-element",
        ),
        pytest.param(  # A.3
            {"baz": "qux", "foo": "bar"},
            [{"op": "remove", "path": "/baz"}],
            {"foo": "bar"},
            id="remove-member",
        ),
        pytest.param(  # A.4
            {"foo": ["bar", "qux", "baz"]},
            [{"op": "remove", "path": "/foo/1"}],
            {"foo": ["bar", "baz"]},
            id="remove-array-element",
        ),
        pytest.param(  # A.5
            {"baz": "qux", "foo": "bar"},
            [{"op": "replace", "path": "/baz", "value": "boo"}],
            {"baz": "boo", "foo": "bar"},
            id="replace",
        ),
        pytest.param(  # A.6
            {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
            [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
            {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
            id="move",
        ),
        pytest.param(  # A.7
            {"foo": ["all", "grass", "cows", "eat"]},
            [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
            {"foo": ["all", "cows", "eat", "grass"]},
            id="move-array-element",
        ),
        pytest.param(  # A.8
            {"baz": "qux", "foo": ["a", 2, "c"]},
            [
                {"op": "test", "path": "/baz", "value": "qux"},
                {"op": "test", "path": "/foo/1", "value": 2},
            ],
            {"baz": "qux", "foo": ["a", 2, "c"]},
            id="test-success",
        ),
        pytest.param(  # A.10
            {"foo": "bar"},
            [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
            {"foo": "bar", "child": {"grandchild": {}}},
            id="add-nested",
        ),
        pytest.param(  # A.14
            {"/": 9, "~1": 10},
            [
                {"op": "test", "path": "/~01", "value": 10},
                {"op": "add", "path": "/a~1b", "value": 1},
            ],
            {"/": 9, "~1": 10, "a/b": 1},
            id="escapes",
        ),
        pytest.param(  # A.16
            {"foo": ["bar"]},
            [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
            {"foo": ["bar", ["abc", "def"]]},
            id="append-dash",
        ),
        pytest.param(
            {"a": {"b": [1, 2]}},
            [
                {"op": "copy", "from": "/a/b", "path": "/c"},
                {"op": "add", "path": "/c/0", "value": 0},
            ],
            {"a": {"b": [1, 2]}, "c": [0, 1, 2]},
            id="copy-is-deep",
        ),
        pytest.param(
            {"a": [1, 2, 3]},
            [{"op": "remove", "path": "/a/-1"}],
            {"a": [1, 2]},
            id="negative-index-like-apiserver",
        ),
    ],
)
def test_json_patch_rfc_examples(doc: dict[str, Any], patch: Any, expected: Any) -> None:
    before = copy.deepcopy(doc)
    assert apply_json_patch(doc, patch) == expected
    assert doc == before


def test_json_patch_with_object_body_is_the_apiserver_400() -> None:
    with pytest.raises(PatchError) as info:
        apply_json_patch({"a": 1}, {"op": "add", "path": "/b", "value": 1})
    err = info.value
    assert (err.code, err.reason) == (400, "BadRequest")
    assert err.message == (
        "error decoding patch: json: cannot unmarshal object into Go value of type "
        "[]handlers.jsonPatchOp"
    )
    assert err.to_status()["code"] == 400


def test_json_patch_failed_test_is_422_invalid() -> None:
    with pytest.raises(PatchError) as info:
        apply_json_patch({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}])
    assert (info.value.code, info.value.reason, info.value.message) == (
        422,
        "Invalid",
        GENERIC_422,
    )
    assert info.value.detail == "testing value /baz failed: test failed"


def test_json_patch_remove_of_missing_path_is_422() -> None:
    with pytest.raises(PatchError) as info:
        apply_json_patch({"a": {}}, [{"op": "remove", "path": "/a/nope"}])
    assert info.value.code == 422
    assert info.value.detail is not None
    assert "Unable to remove nonexistent key: nope" in info.value.detail
    with pytest.raises(PatchError) as info:
        apply_json_patch({}, [{"op": "add", "path": "/x/y", "value": 1}])
    assert info.value.code == 422


def test_json_patch_malformed_ops() -> None:
    with pytest.raises(PatchError) as info:
        apply_json_patch({}, [{"op": "add", "path": 5, "value": 1}])
    assert info.value.code == 400
    assert "jsonPatchOp.path of type string" in info.value.message
    with pytest.raises(PatchError) as info:
        apply_json_patch({}, ["add"])
    assert info.value.code == 400
    with pytest.raises(PatchError) as info:
        apply_json_patch({}, [{"op": "frobnicate", "path": "/a"}])
    assert (info.value.code, info.value.detail) == (422, "Unexpected kind: frobnicate")


def test_json_patch_does_not_share_values_with_the_patch() -> None:
    value = {"deep": [1]}
    result = apply_json_patch({}, [{"op": "add", "path": "/v", "value": value}])
    result["v"]["deep"].append(2)
    assert value == {"deep": [1]}


# -- RFC 7386 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc_examples(target: dict[str, Any], patch: Any, expected: Any) -> None:
    before = copy.deepcopy(target)
    assert apply_merge_patch(target, patch) == expected
    assert target == before


def test_merge_patch_rejects_non_objects() -> None:
    with pytest.raises(PatchError) as info:
        apply_merge_patch({}, ["a"])
    assert info.value.code == 400
    assert info.value.message == (
        "error decoding patch: json: cannot unmarshal array into Go value of type "
        "map[string]interface {}"
    )
    with pytest.raises(PatchError) as info:
        apply_merge_patch({}, None)
    assert (info.value.code, info.value.message) == (400, "Invalid JSON Patch")


# -- strategic merge patch ---------------------------------------------------------------


def _pod(containers: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", **meta},
        "spec": {"containers": containers},
    }


def smp(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    before = copy.deepcopy(doc)
    result = apply_strategic_merge_patch(doc, patch, BUILTIN_LISTS)
    assert doc == before, "input mutated"
    return result


def test_smp_merges_containers_and_env_by_name() -> None:
    doc = _pod(
        [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "sidecar", "image": "side:1"},
        ]
    )
    patch = {
        "spec": {
            "containers": [
                {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]},
            ]
        }
    }
    result = smp(doc, patch)
    # Without $setElementOrder the apiserver puts new items ahead of untouched ones.
    assert result["spec"]["containers"] == [
        {
            "name": "app",
            "image": "app:2",
            "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
        },
        {"name": "sidecar", "image": "side:1"},
    ]


def test_smp_new_items_are_placed_like_the_apiserver() -> None:
    doc = _pod([{"name": "a"}, {"name": "b"}])
    assert [
        c["name"] for c in smp(doc, {"spec": {"containers": [{"name": "c"}]}})["spec"]["containers"]
    ] == ["c", "a", "b"]
    reordered = smp(doc, {"spec": {"containers": [{"name": "b"}, {"name": "a"}]}})
    assert [c["name"] for c in reordered["spec"]["containers"]] == ["b", "a"]


def test_smp_unions_finalizers_and_replaces_atomic_lists() -> None:
    doc = _pod([{"name": "app", "args": ["x", "y"]}], finalizers=["a", "b"])
    patch = {
        "metadata": {"finalizers": ["b", "c"]},
        "spec": {"containers": [{"name": "app", "args": ["z"]}]},
    }
    result = smp(doc, patch)
    assert result["metadata"]["finalizers"] == ["a", "b", "c"]
    assert result["spec"]["containers"][0]["args"] == ["z"]


def test_smp_null_deletes_and_patch_delete_removes_list_items() -> None:
    doc = _pod(
        [{"name": "app", "image": "a"}, {"name": "sidecar", "image": "s"}],
        labels={"keep": "1", "drop": "2"},
    )
    patch = {
        "metadata": {"labels": {"drop": None, "missing": None}},
        "spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]},
    }
    result = smp(doc, patch)
    assert result["metadata"]["labels"] == {"keep": "1"}
    assert result["spec"]["containers"] == [{"name": "app", "image": "a"}]


def test_smp_patch_replace_and_delete_on_maps() -> None:
    doc = {"spec": {"selector": {"a": "1", "b": "2"}, "other": {"x": 1}}}
    result = smp(doc, {"spec": {"selector": {"c": "3", "$patch": "replace"}}})
    assert result["spec"]["selector"] == {"c": "3"}
    # Like the apiserver: deleting an existing map leaves it empty.
    assert smp(doc, {"spec": {"other": {"$patch": "delete"}}})["spec"]["other"] == {}
    assert smp(doc, {"$patch": "replace", "z": 1}) == {"z": 1}


def test_smp_patch_replace_on_a_list() -> None:
    doc = _pod([{"name": "a"}, {"name": "b"}])
    patch = {"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}}
    assert smp(doc, patch)["spec"]["containers"] == [{"name": "c"}]


def test_smp_patch_merge_directive_is_plain_merge() -> None:
    doc = {"spec": {"template": {"a": 1}}}
    assert smp(doc, {"spec": {"template": {"$patch": "merge", "b": 2}}}) == {
        "spec": {"template": {"a": 1, "b": 2}}
    }


def test_smp_retain_keys_clears_other_fields() -> None:
    doc = {
        "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
        }
    }
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert smp(doc, patch) == {"spec": {"strategy": {"type": "Recreate"}}}
    with pytest.raises(PatchError) as info:
        smp(doc, {"spec": {"strategy": {"$retainKeys": ["type"], "other": 1}}})
    assert (info.value.code, info.value.message) == (400, "invalid patch format of retainKeys")


def test_smp_set_element_order_is_honoured() -> None:
    doc = _pod(
        [
            {"name": "1", "other": "a"},
            {"name": "3", "value": "3"},
            {"name": "4", "value": "4"},
            {"name": "2", "value": "2"},
            {"name": "9"},
        ]
    )
    patch = {
        "spec": {
            "$setElementOrder/containers": [
                {"name": "4"},
                {"name": "2"},
                {"name": "3"},
                {"name": "1"},
            ]
        }
    }
    result = smp(doc, patch)
    assert [c["name"] for c in result["spec"]["containers"]] == ["4", "2", "3", "1", "9"]
    assert result["spec"]["containers"][3] == {"name": "1", "other": "a"}
    assert "$setElementOrder/containers" not in result["spec"]


def test_smp_set_element_order_with_delete_from_primitive_list() -> None:
    doc = {"metadata": {"finalizers": ["1", "2", "3"]}}
    patch = {
        "metadata": {
            "$setElementOrder/finalizers": ["2", "1"],
            "$deleteFromPrimitiveList/finalizers": ["3"],
        }
    }
    assert smp(doc, patch) == {"metadata": {"finalizers": ["2", "1"]}}


def test_smp_directives_never_reach_the_result() -> None:
    patch = {
        "spec": {
            "new": {"$retainKeys": ["a"], "a": 1, "gone": None},
            "containers": [{"name": "x", "$patch": "delete"}, {"name": "y"}],
            "$setElementOrder/containers": [{"name": "y"}],
        }
    }
    result = smp({"spec": {}}, patch)
    assert result == {"spec": {"new": {"a": 1}, "containers": [{"name": "y"}]}}


def test_smp_service_ports_merge_by_port_and_container_ports_by_container_port() -> None:
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    result = smp(svc, {"spec": {"ports": [{"port": 443, "targetPort": 8443}]}})
    assert result["spec"]["ports"][1] == {"port": 443, "name": "https", "targetPort": 8443}
    pod = _pod([{"name": "a", "ports": [{"containerPort": 80, "name": "http"}]}])
    patch = {
        "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 1}]}]}
    }
    assert smp(pod, patch)["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "name": "http", "hostPort": 1}
    ]


def test_smp_errors() -> None:
    with pytest.raises(PatchError) as info:
        smp({}, ["not", "an", "object"])
    assert info.value.code == 400
    assert info.value.message == (
        "json: cannot unmarshal array into Go value of type map[string]interface {}"
    )
    with pytest.raises(PatchError) as info:
        smp(_pod([{"name": "a"}]), {"spec": {"containers": [{"image": "no-name"}]}})
    assert info.value.code == 422
    assert smp({"a": 1}, None) == {"a": 1}


def test_unsupported_patch_type() -> None:
    err = unsupported_patch_type(["application/json-patch+json", "application/merge-patch+json"])
    assert (err.code, err.reason) == (415, "UnsupportedMediaType")
    assert err.message.startswith("the body of the request was in an unknown format")


# -- list schemas ------------------------------------------------------------------------

CRD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "properties": {
                "ports": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["port", "protocol"],
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "integer"},
                            "protocol": {"type": "string", "default": "TCP"},
                        },
                    },
                },
                "tags": {"type": "array", "x-kubernetes-list-type": "set"},
                "args": {"type": "array", "items": {"type": "string"}},
                "selector": {"type": "object", "x-kubernetes-map-type": "atomic"},
                "byName": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "items": {
                                "type": "array",
                                "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["id"],
                            }
                        },
                    },
                },
            },
        },
        "status": {
            "type": "object",
            "properties": {
                "conditions": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["type"],
                }
            },
        },
    },
}


def test_schema_lists_reads_crd_annotations() -> None:
    lists = schema_lists(CRD_SCHEMA)
    assert lists.list_type(("spec", "ports")) == ListType(
        "map", ("port", "protocol"), (("protocol", "TCP"),)
    )
    assert lists.list_type(("spec", "tags")).kind == "set"
    assert lists.list_type(("spec", "args")).kind == "atomic"
    assert lists.list_type(("spec", "unknown")).kind == "atomic"
    assert lists.list_type(("spec", "byName", "anything", "items")).keys == ("id",)
    assert lists.list_type(("status", "conditions")).keys == ("type",)
    assert lists.list_type(("metadata", "ownerReferences")).keys == ("uid",)
    assert lists.list_type(("metadata", "finalizers")).kind == "set"
    assert lists.is_atomic_map(("spec", "selector"))
    assert not lists.is_atomic_map(("spec",))


def test_schema_lists_drive_strategic_merge() -> None:
    lists = schema_lists(CRD_SCHEMA)
    doc = {"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "a"}], "args": ["x"]}}
    patch = {
        "spec": {
            "ports": [
                {"port": 80, "protocol": "TCP", "name": "b"},
                {"port": 81, "protocol": "UDP"},
            ],
            "args": ["y"],
        }
    }
    assert apply_strategic_merge_patch(doc, patch, lists) == {
        "spec": {
            "ports": [
                {"port": 80, "protocol": "TCP", "name": "b"},
                {"port": 81, "protocol": "UDP"},
            ],
            "args": ["y"],
        }
    }


def test_builtin_lists() -> None:
    pod_spec = ("spec", "template", "spec")
    assert BUILTIN_LISTS.list_type((*pod_spec, "initContainers")).keys == ("name",)
    assert BUILTIN_LISTS.list_type((*pod_spec, "containers", ITEM, "env")).keys == ("name",)
    assert BUILTIN_LISTS.list_type((*pod_spec, "containers", ITEM, "volumeMounts")).keys == (
        "mountPath",
    )
    assert BUILTIN_LISTS.list_type((*pod_spec, "containers", ITEM, "ports")).keys == (
        "containerPort",
    )
    assert BUILTIN_LISTS.list_type(("spec", "ports")).keys == ("port",)
    assert BUILTIN_LISTS.list_type(("status", "conditions")).keys == ("type",)
    assert BUILTIN_LISTS.list_type(("metadata", "ownerReferences")).keys == ("uid",)
    assert BUILTIN_LISTS.list_type((*pod_spec, "tolerations")).kind == "atomic"
    assert BUILTIN_LISTS.is_atomic_map(("spec", "selector"))
