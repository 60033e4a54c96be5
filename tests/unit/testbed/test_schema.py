"""Pruning, defaulting and validation of custom resources against the vendored CRDs.

The expected messages are the real kube-apiserver's (kube-openapi wording as
converted by apiextensions-apiserver), so a client that parses them on the
testbed sees the same text on a real cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import testbed
from testbed.apiserver.schema import FieldError, apply_defaults, prune, validate

Schema = dict[str, Any]
Obj = dict[str, Any]

CRDS = Path(testbed.__file__).parent / "crds"
CLUSTER = "cluster-api/cluster.x-k8s.io_clusters.yaml"
KCP = "cluster-api/controlplane.cluster.x-k8s.io_kubeadmcontrolplanes.yaml"
VSPHERE_MT = "vsphere/infrastructure.cluster.x-k8s.io_vspheremachinetemplates.yaml"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.fixture(scope="module")
def crds() -> dict[str, Obj]:
    """The CRDs under test, parsed once for the whole module."""
    return {
        name: yaml.load((CRDS / name).read_text(), Loader=_LOADER)
        for name in (CLUSTER, KCP, VSPHERE_MT)
    }


def _version_schema(crd: Obj, version: str | None = None) -> Schema:
    """The named version's schema, or the storage version's."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version or (version is None and entry["storage"]):
            schema: Schema = entry["schema"]["openAPIV3Schema"]
            return schema
    raise LookupError(version)


@pytest.fixture(scope="module")
def cluster_schema(crds: dict[str, Obj]) -> Schema:
    return _version_schema(crds[CLUSTER], "v1beta2")


@pytest.fixture(scope="module")
def kcp_schema(crds: dict[str, Obj]) -> Schema:
    return _version_schema(crds[KCP], "v1beta2")


@pytest.fixture(scope="module")
def vmt_schema(crds: dict[str, Obj]) -> Schema:
    return _version_schema(crds[VSPHERE_MT])


def _cluster() -> Obj:
    return {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "Cluster",
        "metadata": {"name": "edge-1", "namespace": "default"},
        "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
            "controlPlaneRef": {
                "apiGroup": "controlplane.cluster.x-k8s.io",
                "kind": "KubeadmControlPlane",
                "name": "edge-1-cp",
            },
            "infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io",
                "kind": "VSphereCluster",
                "name": "edge-1",
            },
            "topology": {
                "classRef": {"name": "edge-class"},
                "version": "v1.31.0",
                "variables": [{"name": "site", "value": {"rack": "r1", "slots": [1, 2]}}],
                "workers": {
                    "machineDeployments": [{"class": "worker", "name": "md-0", "replicas": 2}]
                },
            },
        },
    }


def _kcp() -> Obj:
    return {
        "apiVersion": "controlplane.cluster.x-k8s.io/v1beta2",
        "kind": "KubeadmControlPlane",
        "metadata": {"name": "edge-1-cp", "namespace": "default"},
        "spec": {
            "version": "v1.31.0",
            "replicas": 3,
            "machineTemplate": {
                "spec": {
                    "infrastructureRef": {
                        "apiGroup": "infrastructure.cluster.x-k8s.io",
                        "kind": "VSphereMachineTemplate",
                        "name": "edge-1-cp",
                    }
                }
            },
            "rollout": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}},
            "kubeadmConfigSpec": {
                "format": "cloud-config",
                "clusterConfiguration": {
                    "apiServer": {
                        "certSANs": ["localhost"],
                        "extraArgs": [{"name": "audit-log-maxage", "value": "7"}],
                    }
                },
                "files": [{"path": "/etc/motd", "content": "edge", "permissions": "0644"}],
            },
        },
    }


def _vmt() -> Obj:
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
        "kind": "VSphereMachineTemplate",
        "metadata": {"name": "edge-1-cp", "namespace": "default"},
        "spec": {
            "template": {
                "spec": {
                    "template": "ubuntu-2204-kube-v1.31.0",
                    "network": {"devices": [{"networkName": "VM Network", "dhcp4": True}]},
                    "numCPUs": 2,
                    "memoryMiB": 8192,
                    "diskGiB": 25,
                    "cloneMode": "linkedClone",
                }
            }
        },
    }


def _admit(obj: Obj, schema: Schema) -> tuple[list[str], list[FieldError]]:
    """The server's write path: prune, default, validate."""
    pruned = prune(obj, schema)
    apply_defaults(obj, schema)
    return pruned, validate(obj, schema)


def _strs(errors: list[FieldError]) -> list[str]:
    return [str(e) for e in errors]


# -- valid objects -----------------------------------------------------------


@pytest.mark.parametrize(
    ("schema_fixture", "factory"),
    [("cluster_schema", _cluster), ("kcp_schema", _kcp), ("vmt_schema", _vmt)],
)
def test_minimal_valid_objects_pass_untouched(
    schema_fixture: str, factory: Callable[[], Obj], request: pytest.FixtureRequest
) -> None:
    schema = request.getfixturevalue(schema_fixture)
    obj = factory()
    assert _admit(obj, schema) == ([], [])
    assert obj == factory()


def test_vsphere_machine_template_valid_in_every_served_version(crds: dict[str, Obj]) -> None:
    served = [v["name"] for v in crds[VSPHERE_MT]["spec"]["versions"] if v["served"]]
    assert served == ["v1beta1", "v1beta2"]
    for version in served:
        obj = _vmt()
        obj["apiVersion"] = f"infrastructure.cluster.x-k8s.io/{version}"
        assert _admit(obj, _version_schema(crds[VSPHERE_MT], version)) == ([], [])


def test_vsphere_machine_template_with_maps_and_quantities(vmt_schema: Schema) -> None:
    obj = _vmt()
    spec = obj["spec"]["template"]["spec"]
    spec["customVMXKeys"] = {"guestinfo.edge": "yes"}
    spec["resources"] = {"requests": {"memory": "8Gi", "cpu": 2}}
    spec["dataDisks"] = [{"name": "data", "sizeGiB": 100, "provisioningMode": "Thin"}]
    assert _admit(obj, vmt_schema) == ([], [])


# -- pruning -----------------------------------------------------------------


def test_unknown_fields_are_pruned_and_reported(cluster_schema: Schema) -> None:
    obj = _cluster()
    obj["spec"]["unknownField"] = {"deep": {"er": 1}}
    obj["spec"]["topology"]["workers"]["machineDeployments"][0]["bogus"] = True
    obj["status"] = {"phase": "Provisioned", "extra": "x"}
    obj["topLevel"] = 1
    obj["metadata"]["notAMetaField"] = "kept: metadata belongs to the server"

    pruned = prune(obj, cluster_schema)

    assert pruned == [
        "spec.topology.workers.machineDeployments[0].bogus",
        "spec.unknownField",
        "status.extra",
        "topLevel",
    ]
    expected = _cluster()
    expected["status"] = {"phase": "Provisioned"}
    expected["metadata"]["notAMetaField"] = "kept: metadata belongs to the server"
    assert obj == expected


def test_preserve_unknown_fields_subtree_is_kept(cluster_schema: Schema) -> None:
    obj = _cluster()
    value = {"anything": {"nested": [{"goes": None}]}, "n": 1.5}
    obj["spec"]["topology"]["variables"] = [{"name": "free", "value": value, "junk": 1}]
    assert prune(obj, cluster_schema) == ["spec.topology.variables[0].junk"]
    assert obj["spec"]["topology"]["variables"] == [{"name": "free", "value": value}]
    assert validate(obj, cluster_schema) == []


def test_prune_drops_non_nullable_nulls_like_the_server(cluster_schema: Schema) -> None:
    obj = _cluster()
    obj["spec"]["paused"] = None
    assert prune(obj, cluster_schema) == []
    assert "paused" not in obj["spec"]


# -- defaulting --------------------------------------------------------------


def test_defaults_from_the_real_crd_are_applied(kcp_schema: Schema) -> None:
    obj = _kcp()
    api_server = obj["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["apiServer"]
    api_server["extraEnvs"] = [
        {"name": "A", "valueFrom": {"fileKeyRef": {"key": "k", "path": "p", "volumeName": "v"}}},
        {"name": "B", "valueFrom": {"configMapKeyRef": {"key": "k"}}},
        {
            "name": "C",
            "valueFrom": {
                "fileKeyRef": {"key": "k", "path": "p", "volumeName": "v", "optional": True}
            },
        },
    ]
    assert _admit(obj, kcp_schema) == ([], [])
    envs = api_server["extraEnvs"]
    assert envs[0]["valueFrom"]["fileKeyRef"]["optional"] is False
    assert envs[1]["valueFrom"]["configMapKeyRef"] == {"key": "k", "name": ""}
    assert envs[2]["valueFrom"]["fileKeyRef"]["optional"] is True


def test_defaults_are_deep_copies_and_fill_maps_lists_and_nulls() -> None:
    schema: Schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "opts": {"type": "object", "default": {"a": [1]}},
                    "ports": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"proto": {"type": "string", "default": "TCP"}},
                        },
                    },
                    "pools": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {"size": {"type": "integer", "default": 1}},
                        },
                    },
                    "mode": {"type": "string", "default": "auto"},
                },
            }
        },
    }
    first: Obj = {"spec": {"ports": [{}, {"proto": "UDP"}], "pools": {"a": {}}, "mode": None}}
    second: Obj = {"spec": {}}
    assert prune(first, schema) == []
    apply_defaults(first, schema)
    apply_defaults(second, schema)
    assert first["spec"] == {
        "ports": [{"proto": "TCP"}, {"proto": "UDP"}],
        "pools": {"a": {"size": 1}},
        "mode": "auto",
        "opts": {"a": [1]},
    }
    first["spec"]["opts"]["a"].append(2)
    assert second["spec"]["opts"] == {"a": [1]}
    assert schema["properties"]["spec"]["properties"]["opts"]["default"] == {"a": [1]}


# -- errors on the real schemas ----------------------------------------------


def test_wrong_type_names_the_field(kcp_schema: Schema) -> None:
    obj = _kcp()
    obj["spec"]["replicas"] = "three"
    assert _admit(obj, kcp_schema)[1] == [
        FieldError(
            "spec.replicas",
            "FieldValueTypeInvalid",
            'Invalid value: "string": spec.replicas in body must be of type integer: "string"',
        )
    ]


def test_bool_is_not_an_integer_and_null_is_a_type_error_in_lists(vmt_schema: Schema) -> None:
    obj = _vmt()
    spec = obj["spec"]["template"]["spec"]
    spec["numCPUs"] = True
    spec["memoryMiB"] = 8192.0  # an integral float is an integer to the server
    spec["network"]["devices"].append(None)
    assert _strs(_admit(obj, vmt_schema)[1]) == [
        'spec.template.spec.network.devices[1]: Invalid value: "null": '
        'spec.template.spec.network.devices[1] in body must be of type object: "null"',
        # kube-openapi checks the int32 format before the type, hence this odd text.
        'spec.template.spec.numCPUs: Invalid value: "": '
        'spec.template.spec.numCPUs in body must be of type int32: ""',
    ]


def test_missing_required_fields(kcp_schema: Schema) -> None:
    obj = _kcp()
    del obj["spec"]["version"]
    del obj["spec"]["machineTemplate"]["spec"]["infrastructureRef"]["name"]
    assert _admit(obj, kcp_schema)[1] == [
        FieldError(
            "spec.machineTemplate.spec.infrastructureRef.name",
            "FieldValueRequired",
            "Required value",
        ),
        FieldError("spec.version", "FieldValueRequired", "Required value"),
    ]
    assert _admit({"apiVersion": "v", "kind": "K", "metadata": {}}, kcp_schema)[1] == [
        FieldError("spec", "FieldValueRequired", "Required value")
    ]


def test_enum_violation(kcp_schema: Schema) -> None:
    obj = _kcp()
    obj["spec"]["kubeadmConfigSpec"]["format"] = "yaml"
    assert _strs(_admit(obj, kcp_schema)[1]) == [
        'spec.kubeadmConfigSpec.format: Unsupported value: "yaml": '
        'supported values: "cloud-config", "ignition"'
    ]


def test_numeric_bounds(cluster_schema: Schema, vmt_schema: Schema) -> None:
    cluster = _cluster()
    cluster["spec"]["clusterNetwork"]["apiServerPort"] = 70000
    assert _strs(_admit(cluster, cluster_schema)[1]) == [
        "spec.clusterNetwork.apiServerPort: Invalid value: 70000: spec.clusterNetwork."
        "apiServerPort in body should be less than or equal to 65535"
    ]
    vmt = _vmt()
    vmt["spec"]["template"]["spec"]["numCPUs"] = 1
    assert _admit(vmt, vmt_schema)[1] == [
        FieldError(
            "spec.template.spec.numCPUs",
            "FieldValueInvalid",
            "Invalid value: 1: spec.template.spec.numCPUs in body should be greater than or "
            "equal to 2",
        )
    ]


def test_int32_format_range_is_enforced_without_a_field(kcp_schema: Schema) -> None:
    obj = _kcp()
    obj["spec"]["replicas"] = 2**31
    assert _strs(_admit(obj, kcp_schema)[1]) == [
        '<nil>: Invalid value: "": Checked value must be of type integer with format int32 '
        "in spec.replicas"
    ]


def test_pattern_and_string_lengths(cluster_schema: Schema, kcp_schema: Schema) -> None:
    cluster = _cluster()
    cluster["spec"]["topology"]["workers"]["machineDeployments"][0]["name"] = "Bad_Name"
    assert _strs(_admit(cluster, cluster_schema)[1]) == [
        'spec.topology.workers.machineDeployments[0].name: Invalid value: "Bad_Name": '
        "spec.topology.workers.machineDeployments[0].name in body should match "
        "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'"
    ]
    kcp = _kcp()
    kcp["spec"]["kubeadmConfigSpec"]["files"][0]["path"] = "/" + "x" * 512
    kcp["spec"]["version"] = ""
    assert _admit(kcp, kcp_schema)[1] == [
        FieldError(
            "spec.version",
            "FieldValueInvalid",
            'Invalid value: "": spec.version in body should be at least 1 chars long',
        ),
        FieldError(
            "spec.kubeadmConfigSpec.files[0].path",
            "FieldValueTooLong",
            "Too long: may not be more than 512 bytes",
        ),
    ]


def test_item_and_property_counts(cluster_schema: Schema, vmt_schema: Schema) -> None:
    cluster = _cluster()
    cluster["spec"]["clusterNetwork"]["pods"]["cidrBlocks"] = []
    cluster["spec"]["topology"]["workers"] = {}
    assert _strs(_admit(cluster, cluster_schema)[1]) == [
        "spec.clusterNetwork.pods.cidrBlocks: Invalid value: 0: "
        "spec.clusterNetwork.pods.cidrBlocks in body should have at least 1 items",
        "spec.topology.workers: Invalid value: 0: "
        "spec.topology.workers in body should have at least 1 properties",
    ]
    vmt = _vmt()
    vmt["spec"]["template"]["spec"]["dataDisks"] = [
        {"name": f"d{i}", "sizeGiB": 1} for i in range(30)
    ]
    assert _strs(_admit(vmt, vmt_schema)[1]) == [
        "spec.template.spec.dataDisks: Too many: 30: must have at most 29 items"
    ]


def test_date_time_format(cluster_schema: Schema) -> None:
    obj = _cluster()
    condition = {"type": "Ready", "status": "True", "reason": "Done", "message": ""}
    obj["status"] = {
        "conditions": [
            {**condition, "lastTransitionTime": "2024-02-29T10:00:00Z"},
            {**condition, "type": "Other", "lastTransitionTime": "yesterday"},
        ]
    }
    assert _admit(obj, cluster_schema)[1] == [
        FieldError(
            "status.conditions[1].lastTransitionTime",
            "FieldValueTypeInvalid",
            'Invalid value: "yesterday": status.conditions[1].lastTransitionTime in body must '
            'be of type date-time: "yesterday"',
        )
    ]


def test_duplicates_in_list_type_map(cluster_schema: Schema, kcp_schema: Schema) -> None:
    cluster = _cluster()
    deployments = cluster["spec"]["topology"]["workers"]["machineDeployments"]
    deployments += [{"class": "worker", "name": "md-1"}, {"class": "other", "name": "md-0"}]
    assert _admit(cluster, cluster_schema)[1] == [
        FieldError(
            "spec.topology.workers.machineDeployments[2]",
            "FieldValueDuplicate",
            'Duplicate value: {"name":"md-0"}',
        )
    ]
    kcp = _kcp()
    api_server = kcp["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["apiServer"]
    api_server["extraArgs"] += [
        {"name": "audit-log-maxage", "value": "7"},
        # Same name, other value: allowed by the list-map keys, only the CRD's
        # CEL rule (not evaluated) rejects it.
        {"name": "audit-log-maxage", "value": "8"},
    ]
    assert _strs(_admit(kcp, kcp_schema)[1]) == [
        "spec.kubeadmConfigSpec.clusterConfiguration.apiServer.extraArgs[1]: "
        'Duplicate value: {"name":"audit-log-maxage","value":"7"}'
    ]


def test_int_or_string_quantities(vmt_schema: Schema) -> None:
    obj = _vmt()
    requests = {"memory": "8 GB", "cpu": True, "storage": 10}
    obj["spec"]["template"]["spec"]["resources"] = {"requests": requests}
    path = "spec.template.spec.resources.requests"
    assert _strs(_admit(obj, vmt_schema)[1]) == [
        f'{path}.memory: Invalid value: "8 GB": {path}.memory in body should match '
        "'^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?"
        "(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$'",
        f'{path}.cpu: Invalid value: "boolean": {path}.cpu in body must be of type '
        'integer,string: "boolean"',
        f'<nil>: Invalid value: "": "{path}.cpu" must validate at least one schema (anyOf)',
        f'{path}.cpu: Invalid value: "boolean": {path}.cpu in body must be of type integer: '
        '"boolean"',
    ]


def test_many_errors_at_once_in_document_order(vmt_schema: Schema) -> None:
    obj = _vmt()
    spec = obj["spec"]["template"]["spec"]
    spec["numCPUs"] = "four"
    spec["cloneMode"] = "instantClone"
    del spec["network"]["devices"][0]["networkName"]
    spec["dataDisks"] = [{"name": "d", "sizeGiB": 0}, {"name": "d", "sizeGiB": 1}]
    spec["customVMXKeys"] = {"a.b": 1}
    pruned, errors = _admit(obj, vmt_schema)
    assert pruned == []
    assert [(e.path, e.type) for e in errors] == [
        ("spec.template.spec.network.devices[0].networkName", "FieldValueRequired"),
        ("spec.template.spec.numCPUs", "FieldValueTypeInvalid"),
        ("spec.template.spec.cloneMode", "FieldValueNotSupported"),
        ("spec.template.spec.dataDisks[0].sizeGiB", "FieldValueInvalid"),
        ("spec.template.spec.customVMXKeys.a.b", "FieldValueTypeInvalid"),
        ("spec.template.spec.dataDisks[1]", "FieldValueDuplicate"),
    ]


def test_metadata_at_the_root_is_left_to_the_server(cluster_schema: Schema) -> None:
    obj = _cluster()
    obj["metadata"] = {"name": 5, "labels": "not a map"}
    assert _admit(obj, cluster_schema) == ([], [])


# -- handwritten schemas -----------------------------------------------------


def _obj_schema(**props: Schema) -> Schema:
    return {"type": "object", "properties": {"spec": {"type": "object", "properties": props}}}


def _spec_errors(schema: Schema, **spec: Any) -> list[str]:
    return _strs(validate({"spec": spec}, schema))


def test_nullable() -> None:
    schema = _obj_schema(
        a={"type": "string", "nullable": True}, b={"type": "string"}, c={"type": "object"}
    )
    assert _spec_errors(schema, a=None) == []
    assert _spec_errors(schema, b=None, c=None) == [
        'spec.b: Invalid value: "null": spec.b in body must be of type string: "null"',
        'spec.c: Invalid value: "null": spec.c in body must be of type object: "null"',
    ]
    obj: Obj = {"spec": {"a": None, "b": None}}
    assert prune(obj, schema) == []
    assert obj == {"spec": {"a": None}}


def test_int_or_string_without_any_of() -> None:
    schema = _obj_schema(port={"x-kubernetes-int-or-string": True})
    assert _spec_errors(schema, port=8080) == []
    assert _spec_errors(schema, port="http") == []
    assert _spec_errors(schema, port=1.5) == [
        'spec.port: Invalid value: "number": spec.port in body must be of type '
        'integer,string: "number"'
    ]


def test_numbers() -> None:
    schema = _obj_schema(
        ratio={"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1.5},
        count={"type": "integer", "maximum": 5, "exclusiveMaximum": True, "multipleOf": 2},
    )
    assert _spec_errors(schema, ratio=1, count=4.0) == []
    assert _spec_errors(schema, ratio=0, count=5) == [
        "spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0",
        "spec.count: Invalid value: 5: spec.count in body should be a multiple of 2",
        "spec.count: Invalid value: 5: spec.count in body should be less than 5",
    ]
    assert _spec_errors(schema, ratio=2.25, count=2.5) == [
        "spec.ratio: Invalid value: 2.25: spec.ratio in body should be less than or equal to 1.5",
        'spec.count: Invalid value: "number": spec.count in body must be of type integer: "number"',
        '<nil>: Invalid value: "": Checked value must be of type integer (default format) '
        "in spec.count",
        "spec.count: Invalid value: 2.5: spec.count in body should be a multiple of 2",
    ]


def test_enum_of_numbers_and_unicode_lengths() -> None:
    schema = _obj_schema(
        level={"type": "integer", "enum": [1, 2]},
        word={"type": "string", "maxLength": 3, "pattern": "^[a-zé]+$"},
    )
    assert _spec_errors(schema, level=2, word="été") == []
    assert _spec_errors(schema, level=3, word="abc\n") == [
        'spec.level: Unsupported value: 3: supported values: "1", "2"',
        "spec.word: Too long: may not be more than 3 bytes",
    ]
    assert _spec_errors(schema, word="ab\n") == [
        "spec.word: Invalid value: \"ab\\n\": spec.word in body should match '^[a-zé]+$'"
    ]


def test_additional_properties() -> None:
    schema = _obj_schema(
        labels={"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
        pools={
            "type": "object",
            "additionalProperties": {"type": "object", "properties": {"size": {"type": "integer"}}},
        },
        free={"type": "object", "additionalProperties": True},
    )
    obj: Obj = {
        "spec": {
            "labels": {"ok": "yes", "x/y": 7, "long": "long"},
            "pools": {"a": {"size": 1, "junk": 2}},
            "free": {"n": 1, "nested": {"dropped": True}},
        }
    }
    assert prune(obj, schema) == ["spec.free.nested.dropped", "spec.pools.a.junk"]
    assert obj["spec"]["pools"] == {"a": {"size": 1}}
    assert obj["spec"]["free"] == {"n": 1, "nested": {}}
    assert _strs(validate(obj, schema)) == [
        'spec.labels.x/y: Invalid value: "integer": spec.labels.x/y in body must be of type '
        'string: "integer"',
        "spec.labels.long: Too long: may not be more than 3 bytes",
    ]


def test_any_of_one_of_all_of_not() -> None:
    schema = _obj_schema(
        size={"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+Gi$"}]},
        choice={
            "type": "object",
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        },
        both={"type": "string", "allOf": [{"minLength": 2}, {"maxLength": 4}]},
        never={"type": "string", "not": {"enum": ["forbidden"]}},
    )
    assert _spec_errors(schema, size=3, choice={"a": "x"}, both="abc", never="ok") == []
    assert _spec_errors(schema, size="3Gi", choice={"b": "x"}) == []
    assert _spec_errors(
        schema, size="3G", choice={"a": "x", "b": "y"}, both="a", never="forbidden"
    ) == [
        '<nil>: Invalid value: "": "spec.size" must validate at least one schema (anyOf)',
        # The alternative that got furthest explains the failure.
        "spec.size: Invalid value: \"3G\": spec.size in body should match '^[0-9]+Gi$'",
        '<nil>: Invalid value: "": "spec.choice" must validate one and only one schema (oneOf). '
        "Found 2 valid alternatives",
        'spec.both: Invalid value: "a": spec.both in body should be at least 2 chars long',
        '<nil>: Invalid value: "": "spec.both" must validate all the schemas (allOf)',
        '<nil>: Invalid value: "": "spec.never" must not validate the schema (not)',
    ]
    assert _spec_errors(schema, choice={}) == [
        '<nil>: Invalid value: "": "spec.choice" must validate one and only one schema (oneOf). '
        "Found none valid",
        "spec.choice.a: Required value",
    ]


def test_list_type_set_and_multi_key_map() -> None:
    schema = _obj_schema(
        tags={"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        nums={"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "number"}},
        ports={
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["port", "protocol"],
            "items": {"type": "object", "properties": {"port": {}, "protocol": {}}},
        },
        atomic={"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}},
    )
    assert _spec_errors(
        schema,
        tags=["a", "b", "a", "a"],
        nums=[1, 1.0, 2, 2],
        ports=[{"port": 80, "protocol": "TCP"}, {"port": 80}, {"protocol": "TCP", "port": 80}],
        atomic=["x", "x"],
    ) == [
        'spec.tags[2]: Duplicate value: "a"',
        "spec.nums[3]: Duplicate value: 2",
        'spec.ports[2]: Duplicate value: {"port":80,"protocol":"TCP"}',
    ]


def test_embedded_resource_keeps_type_and_object_meta() -> None:
    schema = _obj_schema(
        template={
            "type": "object",
            "x-kubernetes-embedded-resource": True,
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}},
        },
        strict={
            "type": "object",
            "x-kubernetes-embedded-resource": True,
            "properties": {"spec": {"type": "object"}},
        },
    )
    embedded = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "z": 1}}
    obj: Obj = {
        "spec": {
            "template": {**copy.deepcopy(embedded), "spec": {"x": "a", "y": 1}, "extra": 1},
            "strict": {**copy.deepcopy(embedded), "spec": {}, "extra": 1},
        }
    }
    assert prune(obj, schema) == ["spec.strict.extra", "spec.template.spec.y"]
    assert obj["spec"]["template"] == {**embedded, "spec": {"x": "a"}, "extra": 1}
    assert obj["spec"]["strict"] == {**embedded, "spec": {}}


def test_string_formats() -> None:
    schema = _obj_schema(
        data={"type": "string", "format": "byte"},
        id={"type": "string", "format": "uuid"},
        ip={"type": "string", "format": "ipv4"},
        custom={"type": "string", "format": "made-up"},
    )
    valid = {"data": "aGVsbG8=", "id": "3F2504E0-4F89-11D3-9A0C-0305E82C3301", "ip": "10.0.0.1"}
    assert _spec_errors(schema, custom="anything", **valid) == []
    assert _spec_errors(schema, data="hello!", id="nope", ip="10.0.0") == [
        'spec.data: Invalid value: "hello!": spec.data in body must be of type byte: "hello!"',
        'spec.id: Invalid value: "nope": spec.id in body must be of type uuid: "nope"',
        'spec.ip: Invalid value: "10.0.0": spec.ip in body must be of type ipv4: "10.0.0"',
    ]


def test_field_error_renders_like_a_status_cause() -> None:
    error = FieldError("spec.replicas", "FieldValueRequired", "Required value")
    assert str(error) == "spec.replicas: Required value"
