"""The skip decision read from the agent's own managedFields, against the emulator's SSA."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.plan.compare import (
    CAPI_SCHEMAS,
    ListType,
    Schema,
    applied_fields,
    decode_fields,
    encode_fields,
    up_to_date,
)
from agent.spec import capi
from testbed.apiserver.patch import ITEM
from tests.unit.agent.test_plan_topology import (
    AGENT,
    KEY_A,
    applied,
    lists_for,
    make_spec,
    written,
)


def kcp_body(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{capi.CP_GROUP}/{capi.V}", "kind": "KubeadmControlPlane",
            "metadata": {"name": "cp", "namespace": "ns"}, "spec": spec}


GATES = ListType("map", ("conditionType",))
KCP_WITH_GATES = Schema(lists={**CAPI_SCHEMAS["KubeadmControlPlane"].lists,
                               ("spec", "machineTemplate", "spec", "readinessGates"): GATES})


def test_the_agents_field_set_is_what_the_server_records() -> None:
    spec = make_spec(sshAuthorizedKeys=[KEY_A])
    for body, kind in ((capi.control_plane_fields(spec, "v1.35.2", "t"), "KubeadmControlPlane"),
                       (capi.machine_deployment(spec, spec.workers[0], "v1.35.2", "i", "b"),
                        "MachineDeployment")):
        live = applied(None, body)
        entry = live["metadata"]["managedFields"][0]
        assert set(applied_fields(body, CAPI_SCHEMAS[kind])) == decode_fields(entry["fieldsV1"])
        assert up_to_date(live, body, AGENT, CAPI_SCHEMAS[kind])


def test_keyed_lists_compare_item_by_item() -> None:
    body = kcp_body(replicas=1, machineTemplate={"spec": {"readinessGates": [
        {"conditionType": "A"}, {"conditionType": "B"}]}})
    live = applied(None, body)
    assert up_to_date(live, body, AGENT, KCP_WITH_GATES)
    # Someone else adds an item of their own: still nothing for the agent to write.
    other = applied(live, kcp_body(machineTemplate={"spec": {"readinessGates": [
        {"conditionType": "C"}]}}), "someone")
    assert len(other["spec"]["machineTemplate"]["spec"]["readinessGates"]) == 3
    assert up_to_date(other, body, AGENT, KCP_WITH_GATES)
    # The agent drops one of its items: it owns one more than it applies.
    fewer = kcp_body(replicas=1, machineTemplate={"spec": {"readinessGates": [
        {"conditionType": "A"}]}})
    assert not up_to_date(other, fewer, AGENT, KCP_WITH_GATES)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda b: b, True),
    (lambda b: b["spec"].update(replicas=3), False),                 # a value differs
    (lambda b: b["spec"].pop("version"), False),                    # the agent owns one more
    (lambda b: b["spec"].update(rollout={"after": "x"}), False),     # one less
    (lambda b: b.update(apiVersion="controlplane.cluster.x-k8s.io/v1beta1"), False),
])
def test_skip_only_on_exact_ownership_and_values(change: Any, expected: bool) -> None:
    body = kcp_body(replicas=1, version="v1.35.2")
    live = applied(None, body)
    want = copy.deepcopy(body)
    change(want)
    assert up_to_date(live, want, AGENT) is expected


def test_no_entry_or_only_an_update_entry_is_never_up_to_date() -> None:
    body = kcp_body(replicas=1)
    assert not up_to_date(written(None, body, AGENT), body, AGENT)  # Update, not Apply
    assert not up_to_date(applied(None, body, "someone"), body, AGENT)


def test_fields_v1_round_trip() -> None:
    spec = make_spec(sshAuthorizedKeys=[KEY_A])
    live = applied(None, capi.control_plane_fields(spec, "v1.35.2", "t"))
    fields = live["metadata"]["managedFields"][0]["fieldsV1"]
    assert encode_fields(decode_fields(fields)) == fields
    gates = applied(None, kcp_body(machineTemplate={"spec": {"readinessGates": [
        {"conditionType": "A"}]}}))["metadata"]["managedFields"][0]["fieldsV1"]
    assert encode_fields(decode_fields(gates)) == gates  # "." markers on keyed items


@pytest.mark.parametrize("kind", sorted(CAPI_SCHEMAS))
def test_declared_schemas_match_the_crds(kind: str) -> None:
    """Every list and map in what the agent applies has the semantics the CRD declares."""
    spec = make_spec(sshAuthorizedKeys=[KEY_A])
    body = capi.control_plane_fields(spec, "v1.35.2", "t") if kind == "KubeadmControlPlane" \
        else capi.machine_deployment(spec, spec.workers[0], "v1.35.2", "i", "b")
    lists, declared = lists_for(kind), CAPI_SCHEMAS[kind]

    def walk(value: Any, path: tuple[str, ...], names: tuple[str, ...]) -> None:
        # `path` is the CRD schema path (ITEM for list items), `names` ours (items skipped).
        if isinstance(value, dict):
            assert lists.is_atomic_map(path) == (names in declared.atomic_maps), names
            for k, v in value.items():
                walk(v, (*path, k), (*names, k))
        elif isinstance(value, list):
            crd, ours = lists.list_type(path), declared.lists.get(names, ListType())
            assert (crd.kind, tuple(crd.keys)) == (ours.kind, ours.keys), names
            for item in value:
                walk(item, (*path, ITEM), names)

    walk(body["spec"], ("spec",), ("spec",))
