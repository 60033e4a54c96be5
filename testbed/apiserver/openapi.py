"""OpenAPI v3 documents: enough for kubectl to find server-side field validation and explain CRDs.

kubectl downloads `/openapi/v3` before `apply`/`create -f` and looks, per group-version, for a PATCH
operation tagged with the kind's group-version-kind that takes a `fieldValidation` query
parameter; finding it, it leaves validation to the server (`fieldValidation=Strict`). Strategic
merge patch is deliberately not advertised, so kubectl computes it from its compiled-in types.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import ResourceType

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "force")


def _gv_path(rt: ResourceType, version: str) -> str:
    return f"apis/{rt.group}/{version}" if rt.group else f"api/{version}"


def _schema_name(rt: ResourceType, version: str) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{version}.{rt.kind}"


def gv_document(types: list[ResourceType], gv_path: str) -> dict[str, Any] | None:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in types:
        for version in rt.versions:
            if _gv_path(rt, version) != gv_path:
                continue
            gvk = {"group": rt.group, "version": version, "kind": rt.kind}
            ns = "/namespaces/{namespace}" if rt.namespaced else ""
            item = f"/{gv_path}{ns}/{rt.plural}/{{name}}"
            ref = {"$ref": f"#/components/schemas/{_schema_name(rt, version)}"}
            body = {"content": {ct: {"schema": {"type": "object"}} for ct in (
                "application/json-patch+json", "application/merge-patch+json",
                "application/apply-patch+yaml")}}
            paths[item] = {
                "patch": {
                    "operationId": f"patch{rt.kind}",
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}}
                                   for p in _QUERY],
                    "requestBody": body,
                    "responses": {"200": {"description": "OK", "content": {
                        "application/json": {"schema": ref}}}},
                },
            }
            sch = dict(rt.schemas.get(version) or {"type": "object",
                                                   "x-kubernetes-preserve-unknown-fields": True})
            sch["x-kubernetes-group-version-kind"] = [gvk]
            schemas[_schema_name(rt, version)] = sch
    if not paths:
        return None
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.0"},
            "paths": paths, "components": {"schemas": schemas}}


def root_document(types: list[ResourceType]) -> dict[str, Any]:
    gvs = sorted({_gv_path(rt, v) for rt in types for v in rt.versions})
    out = {}
    for gv in gvs:
        doc = gv_document(types, gv)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
        out[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest.upper()}"}
    return {"paths": out}


def _pb_string(field: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (all lengths here are below 128)."""
    assert len(value) < 128
    return bytes([field << 3 | 2, len(value)]) + value


# The Swagger 2.0 document at /openapi/v2, as protobuf (gnostic openapi_v2.Document): field 1
# `swagger` = "2.0", field 2 `info` = {1 title, 2 version}.
V2_PROTOBUF_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
V2_PROTOBUF = _pb_string(1, b"2.0") + _pb_string(
    2, _pb_string(1, b"Kubernetes") + _pb_string(2, b"v1.36.0"))


def v2_document() -> dict[str, Any]:
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.36.0"},
            "paths": {}, "definitions": {}}
