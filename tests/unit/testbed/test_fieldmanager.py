"""managedFields tracking and server-side apply semantics of the emulated apiserver."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.apiserver.fieldmanager import (
    ApplyConflict,
    FieldPath,
    fieldset,
    from_fields_v1,
    managed_fields_for_update,
    record_update,
    render_path,
    server_side_apply,
    to_fields_v1,
)
from testbed.apiserver.patch import BUILTIN_LISTS, PatchError, schema_lists

T0, T1, T2, T3 = (f"2024-01-0{d}T00:00:00Z" for d in (1, 2, 3, 4))


def deployment(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replicas": 3,
        "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
    }
    base.update(spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": base,
    }


def apply(
    live: dict[str, Any] | None,
    config: dict[str, Any],
    *,
    manager: str = "kubectl",
    force: bool = False,
    now: str = T0,
    subresource: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    managed = list(((live or {}).get("metadata") or {}).get("managedFields") or [])
    before = copy.deepcopy((live, config, managed))
    result = server_side_apply(
        live,
        config,
        managed,
        manager=manager,
        force=force,
        api_version=config.get("apiVersion", "apps/v1"),
        subresource=subresource,
        lists=BUILTIN_LISTS,
        now=now,
    )
    assert (live, config, managed) == before, "inputs mutated"
    return result


def update(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    manager: str,
    now: str = T1,
    subresource: str | None = None,
) -> dict[str, Any]:
    """A non-apply write, stored the way the server stores it."""
    managed = list(((old or {}).get("metadata") or {}).get("managedFields") or [])
    fields = record_update(
        old,
        new,
        managed,
        manager=manager,
        api_version=new.get("apiVersion", "apps/v1"),
        subresource=subresource,
        lists=BUILTIN_LISTS,
        now=now,
    )
    stored = copy.deepcopy(new)
    stored.setdefault("metadata", {}).pop("managedFields", None)
    if fields:
        stored["metadata"]["managedFields"] = fields
    return stored


def entry(obj: dict[str, Any], manager: str, operation: str | None = None) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [
        e
        for e in obj["metadata"].get("managedFields", [])
        if e["manager"] == manager and operation in (None, e["operation"])
    ]
    assert len(matches) == 1, obj["metadata"].get("managedFields")
    return matches[0]


def owned(obj: dict[str, Any], manager: str, operation: str | None = None) -> set[FieldPath]:
    return from_fields_v1(entry(obj, manager, operation)["fieldsV1"])


def managers(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["manager"], e["operation"]) for e in obj["metadata"].get("managedFields", [])]


APP = 'k:{"name":"app"}'
CONTAINERS = ("f:spec", "f:template", "f:spec", "f:containers")


# -- server-side apply -------------------------------------------------------------------


def test_apply_creates_and_records_the_config_fields() -> None:
    obj, managed = apply(None, deployment())
    assert obj["spec"]["replicas"] == 3
    assert obj["metadata"]["managedFields"] == managed
    assert managed == [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:template": {
                        "f:spec": {
                            "f:containers": {
                                APP: {".": {}, "f:image": {}, "f:name": {}},
                            }
                        }
                    },
                },
            },
        }
    ]


def test_reapplying_the_same_config_is_a_no_op() -> None:
    obj, managed = apply(None, deployment())
    again, managed_again = apply(obj, deployment(), now=T1)
    assert again == obj
    assert managed_again == managed  # not even the timestamp moves


def test_field_dropped_from_config_is_removed() -> None:
    obj, _ = apply(None, deployment(paused=True))
    obj, managed = apply(obj, deployment(), now=T1)
    assert "paused" not in obj["spec"]
    assert ("f:spec", "f:paused") not in owned(obj, "kubectl")
    assert managed[0]["time"] == T1


def test_co_owned_field_survives_when_one_manager_drops_it() -> None:
    obj, _ = apply(None, deployment())
    shared = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 3},
    }
    obj, _ = apply(obj, shared, manager="scaler", now=T1)  # same value: no conflict
    assert ("f:spec", "f:replicas") in owned(obj, "scaler")
    assert ("f:spec", "f:replicas") in owned(obj, "kubectl")

    without = deployment()
    del without["spec"]["replicas"]
    obj, _ = apply(obj, without, now=T2)
    assert obj["spec"]["replicas"] == 3
    assert ("f:spec", "f:replicas") not in owned(obj, "kubectl")
    assert ("f:spec", "f:replicas") in owned(obj, "scaler")


def test_conflict_with_an_update_manager() -> None:
    obj, _ = apply(None, deployment())
    edited = copy.deepcopy(obj)
    edited["spec"]["replicas"] = 5
    obj = update(obj, edited, manager="kubectl-edit")
    assert owned(obj, "kubectl-edit") == {("f:spec", "f:replicas")}
    assert ("f:spec", "f:replicas") not in owned(obj, "kubectl")

    with pytest.raises(ApplyConflict) as info:
        apply(obj, deployment(), now=T2)
    err = info.value
    assert str(err) == (
        'Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas'
    )
    assert err.conflicts == [("kubectl-edit", ".spec.replicas")]
    status = err.to_status()
    assert (status["code"], status["reason"]) == (409, "Conflict")
    assert status["details"]["causes"] == [
        {
            "type": "FieldManagerConflict",
            "message": 'conflict with "kubectl-edit" using apps/v1',
            "field": ".spec.replicas",
        }
    ]


def test_several_conflicts_are_listed_per_manager() -> None:
    obj, _ = apply(None, deployment())
    edited = copy.deepcopy(obj)
    edited["spec"]["replicas"] = 5
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "app:2"
    obj = update(obj, edited, manager="x")
    with pytest.raises(ApplyConflict) as info:
        apply(obj, deployment(), now=T2)
    assert str(info.value) == (
        'Apply failed with 2 conflicts: conflicts with "x" using apps/v1:\n'
        "- .spec.replicas\n"
        '- .spec.template.spec.containers[name="app"].image'
    )


def test_conflict_with_another_applier_names_no_version() -> None:
    obj, _ = apply(None, deployment())
    other = deployment(replicas=7)
    with pytest.raises(ApplyConflict) as info:
        apply(obj, other, manager="helm", now=T1)
    assert str(info.value).startswith(
        'Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas'
    )


def test_force_takes_ownership() -> None:
    obj, _ = apply(None, deployment())
    edited = copy.deepcopy(obj)
    edited["spec"]["replicas"] = 5
    obj = update(obj, edited, manager="kubectl-edit")
    obj, managed = apply(obj, deployment(), force=True, now=T2)
    assert obj["spec"]["replicas"] == 3
    assert ("f:spec", "f:replicas") in owned(obj, "kubectl")
    assert [m["manager"] for m in managed] == ["kubectl"]  # emptied entry dropped


def test_list_map_item_removal() -> None:
    two = deployment(
        template={
            "spec": {
                "containers": [
                    {"name": "app", "image": "app:1"},
                    {"name": "sidecar", "image": "side:1"},
                ]
            }
        }
    )
    obj, _ = apply(None, two)
    assert (*CONTAINERS, 'k:{"name":"sidecar"}') in owned(obj, "kubectl")
    obj, _ = apply(obj, deployment(), now=T1)
    assert obj["spec"]["template"]["spec"]["containers"] == [{"name": "app", "image": "app:1"}]
    assert not any('"sidecar"' in "".join(p) for p in owned(obj, "kubectl"))


def test_list_item_added_by_someone_else_is_kept() -> None:
    obj, _ = apply(None, deployment())
    edited = copy.deepcopy(obj)
    edited["spec"]["template"]["spec"]["containers"].append({"name": "inject", "image": "i"})
    obj = update(obj, edited, manager="injector")
    obj, _ = apply(obj, deployment(replicas=4), now=T2)
    names = [c["name"] for c in obj["spec"]["template"]["spec"]["containers"]]
    assert names == ["app", "inject"]


def test_set_items_and_map_keys_are_owned_individually() -> None:
    config = deployment()
    config["metadata"]["finalizers"] = ["a.example/x", "b.example/y"]
    config["metadata"]["labels"]["tier"] = "web"
    obj, _ = apply(None, config)
    assert ("f:metadata", "f:finalizers", 'v:"a.example/x"') in owned(obj, "kubectl")

    trimmed = deployment()
    trimmed["metadata"]["finalizers"] = ["b.example/y"]
    obj, _ = apply(obj, trimmed, now=T1)
    assert obj["metadata"]["finalizers"] == ["b.example/y"]
    assert obj["metadata"]["labels"] == {"app": "web"}


def test_dropping_a_whole_map_removes_it() -> None:
    obj, _ = apply(None, deployment())
    unlabeled = deployment()
    del unlabeled["metadata"]["labels"]
    obj, managed = apply(obj, unlabeled, now=T1)
    assert "labels" not in obj["metadata"]
    assert managed[0]["time"] == T1


def test_dropping_part_of_a_shared_map_counts_as_a_change() -> None:
    obj, _ = apply(None, deployment())
    edited = copy.deepcopy(obj)
    edited["metadata"]["labels"]["team"] = "a"
    obj = update(obj, edited, manager="labeller", now=T1)
    unlabeled = deployment()
    del unlabeled["metadata"]["labels"]
    obj, _ = apply(obj, unlabeled, now=T2)
    assert obj["metadata"]["labels"] == {"team": "a"}
    assert entry(obj, "kubectl")["time"] == T2


def test_finalizer_added_by_a_controller_survives_reapply() -> None:
    obj, _ = apply(None, deployment())
    edited = copy.deepcopy(obj)
    edited["metadata"]["finalizers"] = ["ctrl/cleanup"]
    obj = update(obj, edited, manager="controller")
    obj, _ = apply(obj, deployment(), now=T2)
    assert obj["metadata"]["finalizers"] == ["ctrl/cleanup"]


def test_emptied_containers_disappear_but_top_level_stays() -> None:
    config = deployment()
    config["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 1}}
    obj, _ = apply(None, config)
    obj, _ = apply(obj, deployment(), now=T1)
    assert "strategy" not in obj["spec"]


def test_server_owned_metadata_in_config_is_ignored() -> None:
    obj, _ = apply(None, deployment())
    obj["metadata"].update(uid="u-1", resourceVersion="7", creationTimestamp=T0)
    config = deployment()
    config["metadata"].update(resourceVersion="1", uid="other", managedFields=[{"x": 1}])
    again, _ = apply(obj, config, now=T1)
    assert again == obj


def test_null_in_config_removes_the_field() -> None:
    obj, _ = apply(None, deployment(paused=True))
    obj, _ = apply(obj, deployment(paused=None), now=T1)
    assert "paused" not in obj["spec"]


def test_apply_to_untracked_object_conflicts_with_before_first_apply() -> None:
    live = deployment(replicas=1)
    with pytest.raises(ApplyConflict) as info:
        apply(live, deployment())
    assert info.value.conflicts == [("before-first-apply", ".spec.replicas")]
    obj, _ = apply(live, deployment(), force=True)
    assert managers(obj) == [("kubectl", "Apply"), ("before-first-apply", "Update")]


def test_status_is_owned_through_the_status_subresource_only() -> None:
    obj, _ = apply(None, deployment())
    status_config = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "status": {"replicas": 3},
        "spec": {"replicas": 99},
    }
    obj, _ = apply(obj, status_config, manager="ctrl", subresource="status", now=T1)
    assert obj["status"] == {"replicas": 3}
    assert obj["spec"]["replicas"] == 3
    assert owned(obj, "ctrl") == {("f:status", "f:replicas")}
    assert entry(obj, "ctrl")["subresource"] == "status"
    # A main-resource apply neither owns nor clobbers status.
    main = deployment()
    main["status"] = {"replicas": 0}
    again, _ = apply(obj, main, now=T2)
    assert again["status"] == {"replicas": 3}


def test_invalid_apply_configs() -> None:
    dup = deployment(
        template={"spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]}}
    )
    with pytest.raises(PatchError) as info:
        apply(None, dup)
    assert info.value.code == 500
    assert 'duplicate entries for key [name="a"]' in info.value.message
    keyless = deployment(template={"spec": {"containers": [{"image": "x"}]}})
    with pytest.raises(PatchError) as info:
        apply(None, keyless)
    assert 'omits key field "name"' in info.value.message


def test_apply_uses_crd_list_semantics() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "hosts": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                    },
                    "args": {"type": "array"},
                },
            }
        },
    }
    lists = schema_lists(schema)
    config = {
        "apiVersion": "example.com/v1",
        "kind": "Thing",
        "metadata": {"name": "t"},
        "spec": {"hosts": [{"name": "a", "ip": "1"}], "args": ["x"]},
    }
    obj, managed = server_side_apply(
        None,
        config,
        [],
        manager="m",
        force=False,
        api_version="example.com/v1",
        subresource=None,
        lists=lists,
        now=T0,
    )
    assert from_fields_v1(managed[0]["fieldsV1"]) == {
        ("f:spec", "f:hosts", 'k:{"name":"a"}'),
        ("f:spec", "f:hosts", 'k:{"name":"a"}', "f:name"),
        ("f:spec", "f:hosts", 'k:{"name":"a"}', "f:ip"),
        ("f:spec", "f:args"),
    }
    config["spec"] = {"hosts": [{"name": "b", "ip": "2"}], "args": ["y"]}
    obj, _ = server_side_apply(
        obj,
        config,
        managed,
        manager="m",
        force=False,
        api_version="example.com/v1",
        subresource=None,
        lists=lists,
        now=T1,
    )
    assert obj["spec"] == {"hosts": [{"name": "b", "ip": "2"}], "args": ["y"]}


# -- record_update -----------------------------------------------------------------------


def test_create_is_tracked_with_containers_marked() -> None:
    obj = update(None, deployment(), manager="kubectl-create", now=T0)
    [e] = obj["metadata"]["managedFields"]
    assert (e["manager"], e["operation"], e["time"]) == ("kubectl-create", "Update", T0)
    assert e["fieldsV1"]["f:metadata"] == {"f:labels": {".": {}, "f:app": {}}}
    assert "subresource" not in e


def test_update_moves_ownership_and_drops_removed_fields() -> None:
    obj = update(None, deployment(paused=True), manager="creator", now=T0)
    edited = copy.deepcopy(obj)
    edited["spec"]["replicas"] = 1
    del edited["spec"]["paused"]
    obj = update(obj, edited, manager="editor", now=T1)
    assert owned(obj, "editor") == {("f:spec", "f:replicas")}
    creator = owned(obj, "creator")
    assert ("f:spec", "f:replicas") not in creator
    assert ("f:spec", "f:paused") not in creator


def test_update_that_empties_an_entry_drops_it() -> None:
    obj = update(None, deployment(), manager="creator", now=T0)
    for n, manager in enumerate(("scaler-1", "scaler-2")):
        edited = copy.deepcopy(obj)
        edited["spec"]["replicas"] = 10 + n
        obj = update(obj, edited, manager=manager, now=T1)
    assert managers(obj) == [("creator", "Update"), ("scaler-2", "Update")]
    assert owned(obj, "scaler-2") == {("f:spec", "f:replicas")}


def test_update_keeps_ownership_of_maps_that_survive() -> None:
    obj = update(None, deployment(), manager="creator", now=T0)
    replaced = copy.deepcopy(obj)
    replaced["metadata"]["labels"] = {"app": "other"}
    replaced["spec"] = {"replicas": 9}
    obj = update(obj, replaced, manager="editor", now=T1)
    # The creator added the labels map itself; only its content changed hands.
    assert owned(obj, "creator") == {("f:metadata", "f:labels")}
    assert ("f:metadata", "f:labels", "f:app") in owned(obj, "editor")


def test_update_without_changes_leaves_managed_fields_alone() -> None:
    obj = update(None, deployment(), manager="creator", now=T0)
    same = update(obj, copy.deepcopy(obj), manager="other", now=T1)
    assert same["metadata"]["managedFields"] == obj["metadata"]["managedFields"]


def test_status_update_tracks_only_status() -> None:
    obj = update(None, deployment(), manager="creator", now=T0)
    with_status = copy.deepcopy(obj)
    with_status["status"] = {"readyReplicas": 1}
    main = update(obj, with_status, manager="sneaky", now=T1)
    assert managers(main) == [("creator", "Update")]
    via_status = update(obj, with_status, manager="ctrl", now=T1, subresource="status")
    assert owned(via_status, "ctrl") == {("f:status", "f:readyReplicas")}
    assert entry(via_status, "ctrl")["subresource"] == "status"


def test_existing_object_without_managed_fields_is_not_tracked() -> None:
    assert (
        record_update(
            deployment(),
            deployment(replicas=2),
            [],
            manager="m",
            api_version="apps/v1",
            subresource=None,
            lists=BUILTIN_LISTS,
            now=T0,
        )
        == []
    )


def test_update_managers_are_capped() -> None:
    obj = update(None, deployment(), manager="creator", now="2024-01-01T00:00:00Z")
    for n in range(12):
        edited = copy.deepcopy(obj)
        edited["metadata"]["labels"][f"l{n}"] = "x"
        obj = update(obj, edited, manager=f"m{n}", now=f"2024-01-01T00:00:{n + 10:02d}Z")
    names = [m for m, _ in managers(obj)]
    assert len(names) == 10
    assert "ancient-changes" in names


def test_managed_fields_for_update_follows_the_apiserver() -> None:
    live = update(None, deployment(), manager="creator", now=T0)
    new = copy.deepcopy(live)
    assert managed_fields_for_update(live, new) == live["metadata"]["managedFields"]
    new["metadata"]["managedFields"] = [{}]
    assert managed_fields_for_update(live, new) == []
    new["metadata"]["managedFields"] = [{"manager": "x", "operation": "Bogus"}]
    assert managed_fields_for_update(live, new) == live["metadata"]["managedFields"]
    new["metadata"]["managedFields"] = []
    assert (
        managed_fields_for_update(live, new, subresource="status")
        == (live["metadata"]["managedFields"])
    )


# -- field sets and fieldsV1 -------------------------------------------------------------


def test_fieldset_excludes_server_owned_fields() -> None:
    obj = deployment()
    obj["metadata"].update(uid="u", resourceVersion="1", generation=2, managedFields=[])
    obj["status"] = {"replicas": 1}
    paths = fieldset(obj, BUILTIN_LISTS)
    assert all(p[0] not in ("f:apiVersion", "f:kind", "f:status") for p in paths)
    assert ("f:metadata", "f:labels", "f:app") in paths
    assert not any(p[:2] == ("f:metadata", "f:name") for p in paths)
    assert ("f:status", "f:replicas") in fieldset(obj, BUILTIN_LISTS, include_status=True)
    assert ("f:spec", "f:selector") in fieldset(
        deployment(selector={"matchLabels": {"a": "b"}}), BUILTIN_LISTS
    )


def test_fields_v1_encoding() -> None:
    paths = {
        ("f:spec", "f:replicas"),
        (*CONTAINERS, APP),
        (*CONTAINERS, APP, "f:image"),
    }
    encoded = to_fields_v1(paths)
    assert encoded == {
        "f:spec": {
            "f:replicas": {},
            "f:template": {
                "f:spec": {"f:containers": {APP: {".": {}, "f:image": {}}}},
            },
        }
    }
    assert from_fields_v1(encoded) == paths
    assert from_fields_v1({"f:a": {'k:{"port": 80, "name": "x"}': {}}}) == {
        ("f:a", 'k:{"name":"x","port":80}')
    }


def test_render_path() -> None:
    assert render_path((*CONTAINERS, APP, "f:image")) == (
        '.spec.template.spec.containers[name="app"].image'
    )
    assert render_path(("f:metadata", "f:finalizers", 'v:"x"')) == '.metadata.finalizers[="x"]'
    assert render_path(("f:ports", 'k:{"port":80,"protocol":"TCP"}')) == (
        '.ports[port=80,protocol="TCP"]'
    )


# Go's encoder escapes these inside keys, so canonical elements never contain them raw.
_text = st.text(alphabet=st.characters(exclude_characters="<>&\u2028\u2029"), max_size=6)
_name = _text.filter(bool)
_scalar = st.one_of(_text, st.integers(-5, 5), st.booleans(), st.none())
_field = _name.map(lambda s: "f:" + s)
_key = st.dictionaries(_name, _scalar, min_size=1, max_size=2).map(
    lambda d: "k:" + json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
)
_value = _scalar.map(lambda v: "v:" + json.dumps(v, ensure_ascii=False))
_index = st.integers(0, 9).map(lambda i: f"i:{i}")
_element = st.one_of(_field, _field, _key, _value, _index)
_paths = st.sets(st.lists(_element, min_size=1, max_size=4).map(tuple), max_size=12)


@given(_paths)
def test_fields_v1_round_trip(paths: set[FieldPath]) -> None:
    encoded = to_fields_v1(paths)
    assert from_fields_v1(encoded) == paths
    assert to_fields_v1(from_fields_v1(json.loads(json.dumps(encoded)))) == encoded
