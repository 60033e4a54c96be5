"""Decoding of kubectl's protobuf request bodies (testbed.apiserver.protobuf).

The fixture bodies under data/kubectl_protobuf/ were recorded from the real kubectl
(see test_real_kubectl_bodies, which re-records them when the kubectl binary is present;
set OUTPOST_RECORD_PROTOBUF_FIXTURES=1 to rewrite the files).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from testbed.apiserver.protobuf import SUPPORTED_KINDS, ProtobufError, decode
from tests.fixtures.tools import find_kubectl

DATA = Path(__file__).parent / "data" / "kubectl_protobuf"
RBAC = "rbac.authorization.k8s.io"
RBAC_V1 = f"{RBAC}/v1"
BINARY_FILE = b"\x00\x01\xfe\xffbinary"

# Body of `kubectl create configmap foo --from-literal=a=b`.
CAPTURED_CONFIGMAP = (b'k8s\x00\n\x0f\n\x02v1\x12\tConfigMap\x12\x1d\n\x13\n\x03foo\x12\x00\x1a\x00'
                      b'"\x00*\x002\x008\x00B\x00\x12\x06\n\x01a\x12\x01b\x1a\x00')


def test_captured_configmap() -> None:
    assert decode(CAPTURED_CONFIGMAP) == {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "foo"},
        "data": {"a": "b"},
    }


# name -> (kubectl arguments after `create`, has --dry-run, expected decoded object)
CASES: dict[str, tuple[list[str], bool, dict[str, Any]]] = {
    "namespace": (
        ["namespace", "ns1"], True,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}},
    ),
    "configmap": (
        ["configmap", "cm1", "--from-literal=a=b", "--from-literal=c=d", "-n", "default"], True,
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "cm1", "namespace": "default"}, "data": {"a": "b", "c": "d"}},
    ),
    "configmap_binary": (
        ["configmap", "cm2", "--from-file=bin={binary_file}", "--from-literal=t=x"], True,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm2"},
         "data": {"t": "x"},
         "binaryData": {"bin": base64.b64encode(BINARY_FILE).decode()}},
    ),
    "secret": (
        ["secret", "generic", "s1", "--from-literal=password=hunter2", "--type=Opaque"], True,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"},
         "data": {"password": base64.b64encode(b"hunter2").decode()}, "type": "Opaque"},
    ),
    "serviceaccount": (
        ["serviceaccount", "sa1"], True,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa1"}},
    ),
    "role": (
        ["role", "r1", "--verb=get,list", "--resource=pods"], True,
        {"apiVersion": RBAC_V1, "kind": "Role", "metadata": {"name": "r1"},
         "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]},
    ),
    "clusterrole": (
        ["clusterrole", "cr1", "--verb=get", "--resource=nodes"], True,
        {"apiVersion": RBAC_V1, "kind": "ClusterRole", "metadata": {"name": "cr1"},
         "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]}]},
    ),
    "clusterrole_aggregated": (
        ["clusterrole", "cr2", "--aggregation-rule=example.com/aggregate=true"], True,
        {"apiVersion": RBAC_V1, "kind": "ClusterRole", "metadata": {"name": "cr2"},
         "aggregationRule": {"clusterRoleSelectors": [
             {"matchLabels": {"example.com/aggregate": "true"}}]}},
    ),
    "rolebinding": (
        ["rolebinding", "rb1", "--role=r1", "--serviceaccount=default:sa1"], True,
        {"apiVersion": RBAC_V1, "kind": "RoleBinding", "metadata": {"name": "rb1"},
         "subjects": [{"kind": "ServiceAccount", "name": "sa1", "namespace": "default"}],
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "r1"}},
    ),
    "clusterrolebinding": (
        ["clusterrolebinding", "crb1", "--clusterrole=cr1", "--user=alice"], True,
        {"apiVersion": RBAC_V1, "kind": "ClusterRoleBinding", "metadata": {"name": "crb1"},
         "subjects": [{"kind": "User", "apiGroup": RBAC, "name": "alice"}],
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cr1"}},
    ),
    "token": (
        ["token", "sa1", "--audience=a", "--duration=10m", "--bound-object-kind=Pod",
         "--bound-object-name=p"], False,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
         "spec": {"audiences": ["a"], "expirationSeconds": 600,
                  "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_kubectl_body(name: str) -> None:
    body = (DATA / f"{name}.pb").read_bytes()
    assert decode(body) == CASES[name][2]


def test_supported_kinds() -> None:
    assert {
        ("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"),
        (RBAC_V1, "Role"), (RBAC_V1, "ClusterRole"), (RBAC_V1, "RoleBinding"),
        (RBAC_V1, "ClusterRoleBinding"), ("coordination.k8s.io/v1", "Lease"),
    } <= SUPPORTED_KINDS


# ----------------------------------------------------------------- hand-built bodies


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def vi(num: int, n: int) -> bytes:
    return _varint(num << 3) + _varint(n)


def ld(num: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def entry(num: int, key: str, value: bytes | str) -> bytes:
    return ld(num, ld(1, key) + ld(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return (b"k8s\x00" + ld(1, ld(1, api_version) + ld(2, kind)) + ld(2, raw)
            + ld(3, "") + ld(4, ""))


def ts(num: int, seconds: int, nanos: int = 0) -> bytes:
    return ld(num, vi(1, seconds) + (vi(2, nanos) if nanos else b""))


def test_object_meta_fields() -> None:
    owner = (ld(1, "Deployment") + ld(3, "web") + ld(4, "u-1") + ld(5, "apps/v1")
             + vi(6, 1) + vi(7, 0))
    managed = (ld(1, "kubectl") + ld(2, "Update") + ld(3, "v1") + ts(4, 1_700_000_000)
               + ld(6, "FieldsV1") + ld(7, ld(1, '{"f:data":{}}')))
    meta = (ld(1, "cm") + ld(2, "cm-") + ld(3, "ns") + ld(4, "") + ld(5, "uid-1")
            + ld(6, "42") + vi(7, 3) + ts(8, 1_700_000_000, 999) + ts(9, 1_700_000_060)
            + vi(10, 0) + entry(11, "app", "x") + entry(11, "tier", "")
            + entry(12, "note", "hi") + ld(13, owner) + ld(14, "a/b") + ld(14, "c")
            + ld(17, managed)
            # unknown fields of every wire type are skipped
            + vi(90, 7) + _varint(91 << 3 | 1) + b"\x00" * 8 + _varint(92 << 3 | 5)
            + b"\x00" * 4 + ld(93, "junk"))
    body = envelope("v1", "ConfigMap", ld(1, meta) + entry(2, "k", "v"))
    assert decode(body) == {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "cm", "generateName": "cm-", "namespace": "ns", "uid": "uid-1",
            "resourceVersion": "42", "generation": 3,
            "creationTimestamp": "2023-11-14T22:13:20Z",
            "deletionTimestamp": "2023-11-14T22:14:20Z",
            "deletionGracePeriodSeconds": 0,
            "labels": {"app": "x", "tier": ""}, "annotations": {"note": "hi"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                 "uid": "u-1", "controller": True,
                                 "blockOwnerDeletion": False}],
            "finalizers": ["a/b", "c"],
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                               "time": "2023-11-14T22:13:20Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:data": {}}}],
        },
        "data": {"k": "v"},
    }


def test_split_submessage_is_merged() -> None:
    body = envelope("v1", "Namespace", ld(1, ld(1, "a")) + ld(1, ld(3, "b"))
                    + ld(2, ld(1, "kubernetes")))
    assert decode(body) == {"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "a", "namespace": "b"},
                            "spec": {"finalizers": ["kubernetes"]}}


def test_secret_binary_and_pointer_bool() -> None:
    raw = (ld(1, ld(1, "s")) + entry(2, "bin", b"\xff\x00") + entry(4, "plain", "text")
           + ld(3, "") + vi(5, 0))
    assert decode(envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "immutable": False, "data": {"bin": "/wA="}, "stringData": {"plain": "text"},
    }


def test_service_account() -> None:
    raw = (ld(1, ld(1, "sa")) + ld(2, ld(1, "Secret") + ld(3, "tok") + ld(2, "ns"))
           + ld(3, ld(1, "regcred")) + ld(3, b"") + vi(4, 0))
    assert decode(envelope("v1", "ServiceAccount", raw)) == {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"},
        "secrets": [{"kind": "Secret", "namespace": "ns", "name": "tok"}],
        "imagePullSecrets": [{"name": "regcred"}, {}],
        "automountServiceAccountToken": False,
    }


def test_lease_pointer_fields_and_micro_time() -> None:
    spec = (ld(1, "") + vi(2, -1) + ts(3, 1_700_000_000, 123_456_789)
            + ts(4, 1_700_000_001) + vi(5, 0) + ld(7, "node-b"))
    raw = ld(1, ld(1, "leader") + ld(3, "kube-system")) + ld(2, spec)
    assert decode(envelope("coordination.k8s.io/v1", "Lease", raw)) == {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "leader", "namespace": "kube-system"},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": -1,
                 "acquireTime": "2023-11-14T22:13:20.123456Z",
                 "renewTime": "2023-11-14T22:13:21.000000Z",
                 "leaseTransitions": 0, "preferredHolder": "node-b"},
    }


def test_policy_rule_lists_and_match_expressions() -> None:
    rule = ld(1, "*") + ld(5, "/healthz") + ld(5, "/readyz")
    selector = ld(2, ld(1, "tier") + ld(2, "In") + ld(3, "a") + ld(3, "b"))
    raw = ld(1, ld(1, "cr")) + ld(2, rule) + ld(3, ld(1, selector))
    assert decode(envelope(RBAC_V1, "ClusterRole", raw)) == {
        "apiVersion": RBAC_V1, "kind": "ClusterRole", "metadata": {"name": "cr"},
        "rules": [{"verbs": ["*"], "nonResourceURLs": ["/healthz", "/readyz"]}],
        "aggregationRule": {"clusterRoleSelectors": [
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}]},
    }


def test_unsupported_kind_says_to_send_json() -> None:
    with pytest.raises(ProtobufError, match=r"Deployment.*JSON.*kubectl apply -f"):
        decode(envelope("apps/v1", "Deployment", ld(1, ld(1, "d"))))


@pytest.mark.parametrize("body", [
    b"",
    b'{"apiVersion": "v1"}',
    CAPTURED_CONFIGMAP[:-5],  # truncated inside a length-delimited field
    b"k8s\x00" + ld(2, ld(1, ld(1, "x"))),  # no type metadata
    envelope("v1", "ConfigMap", vi(1, 5)),  # metadata with a varint wire type
    envelope("v1", "ConfigMap", b"\x80"),  # truncated varint
    envelope("v1", "ConfigMap", b"\x0b"),  # group wire type
    envelope("v1", "ConfigMap", ld(1, ld(17, ld(7, ld(1, "{not json"))))),
    b"k8s\x00" + ld(1, ld(1, "v1") + ld(2, "ConfigMap")) + ld(3, "gzip"),
], ids=["empty", "json", "truncated", "no-typemeta", "wire-type", "varint", "group",
        "fieldsv1", "encoding"])
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode(body)


# ----------------------------------------------------------------- real kubectl


def _resources(group_version: str, *entries: tuple[str, str, bool]) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": plural, "singularName": plural[:-1], "namespaced": namespaced,
                           "kind": kind, "verbs": ["create", "get", "list"]}
                          for plural, kind, namespaced in entries]}


_GV = {"groupVersion": RBAC_V1, "version": "v1"}
DISCOVERY: dict[str, dict[str, Any]] = {
    "/api": {"kind": "APIVersions", "versions": ["v1"]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": RBAC, "versions": [_GV], "preferredVersion": _GV}]},
    "/api/v1": _resources("v1", ("pods", "Pod", True), ("nodes", "Node", False),
                          ("configmaps", "ConfigMap", True),
                          ("serviceaccounts", "ServiceAccount", True)),
    f"/apis/{RBAC_V1}": _resources(RBAC_V1, ("roles", "Role", True),
                                   ("clusterroles", "ClusterRole", False)),
}


def _drop_empty(obj: Any) -> Any:
    """kubectl's JSON minus the empty structs (spec: {}, status: {}) the decoder leaves out."""
    if isinstance(obj, dict):
        out = {k: _drop_empty(v) for k, v in obj.items() if v is not None}
        return {k: v for k, v in out.items() if v != {} or k == "metadata"}
    if isinstance(obj, list):
        return [_drop_empty(v) for v in obj]
    return obj


@pytest.mark.kubectl
async def test_real_kubectl_bodies(tmp_path: Path) -> None:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not installed")
    bodies: list[tuple[str, str, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET" and request.path in DISCOVERY:
            return web.json_response(DISCOVERY[request.path])
        if request.method != "POST":
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "code": 404, "reason": "NotFound"}, status=404)
        bodies.append((request.path, request.content_type, await request.read()))
        if request.path.endswith("/token"):
            return web.json_response({"apiVersion": "authentication.k8s.io/v1",
                                      "kind": "TokenRequest", "status": {"token": "t"}},
                                     status=201)
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"},
                                 status=201)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
        "current-context": "t",
    }))
    binary_file = tmp_path / "bin"
    binary_file.write_bytes(BINARY_FILE)
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}

    async def run(*args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            kubectl, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path / 'cache'}",
            "--request-timeout=60s", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (args, err.decode())
        return out

    record = os.environ.get("OUTPOST_RECORD_PROTOBUF_FIXTURES") == "1"
    try:
        for name, (args, dry_run, expected) in CASES.items():
            argv = [a.replace("{binary_file}", str(binary_file)) for a in args]
            bodies.clear()
            await run("create", *argv)
            assert len(bodies) == 1, name
            _, content_type, body = bodies[0]
            assert content_type == "application/vnd.kubernetes.protobuf", name
            assert decode(body) == expected, name
            if dry_run:  # kubectl's own JSON rendering of the very same object
                shown = json.loads(await run("create", *argv, "--dry-run=client", "-o", "json"))
                assert decode(body) == _drop_empty(shown), name
            if record:
                DATA.mkdir(parents=True, exist_ok=True)
                (DATA / f"{name}.pb").write_bytes(body)

        bodies.clear()
        proc = await asyncio.create_subprocess_exec(
            kubectl, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path / 'cache'}",
            "create", "deployment", "d", "--image=nginx", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.wait_for(proc.wait(), 60)
        assert len(bodies) == 1
        with pytest.raises(ProtobufError, match="Deployment"):
            decode(bodies[0][2])
    finally:
        await runner.cleanup()
