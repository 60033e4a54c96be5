"""The OpenAPI 3.1 description of the API, its schemas generated from the pydantic models, so
the document cannot drift from what the handlers accept and return."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .models import ClusterDetail, ClusterList, Health, Operation
from .problems import PROBLEM_JSON, ProblemDetails

REF = "#/components/schemas/{model}"


def build_openapi(request_model: type[BaseModel], update_model: type[BaseModel]
                  ) -> dict[str, Any]:
    """The document; the two request models are passed in to keep this module import-light."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (request_model, "validation"), (update_model, "validation"),
        (Operation, "serialization"), (ClusterList, "serialization"),
        (ClusterDetail, "serialization"), (ProblemDetails, "serialization"),
        (Health, "serialization")]
    refs, defs = models_json_schema(wanted, by_alias=True, ref_template=REF)

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    def body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
        return {media: {"schema": schema}}

    def problem(description: str) -> dict[str, Any]:
        return {"description": description, "content": body(ref(ProblemDetails), PROBLEM_JSON)}

    def answer(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
        return {"description": description, "content": body(ref(model)), **extra}

    auth = {"401": problem("no or malformed Authorization header"),
            "403": problem("the bearer token is not accepted")}
    location = {"Location": {"description": "the cluster's URL, to follow it",
                             "schema": {"type": "string"}}}
    accepted = answer(Operation, "accepted; the bootstrap worker carries it out",
                      headers=location)
    name_param = {"name": "name", "in": "path", "required": True,
                  "description": "the cluster name (a DNS label)",
                  "schema": {"type": "string", "maxLength": 40,
                             "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}
    body_errors = {"400": problem("the body is not JSON"),
                   "413": problem("the body is larger than the limit"),
                   "415": problem("the body is not JSON (Content-Type)"),
                   "422": problem("the body is invalid or asks for a change that cannot "
                                  "apply; `errors` lists each field")}
    unreadable = problem("the cluster's record cannot be read (type record-unreadable): the "
                         "detail says why and how to repair it; the fleet view lists it as "
                         "Unreadable")
    unprotected: list[dict[str, list[str]]] = []
    paths: dict[str, Any] = {
        "/v1/clusters": {
            "get": {"operationId": "listClusters", "summary": "the fleet view",
                    "responses": {"200": answer(ClusterList, "every cluster"), **auth}},
            "post": {"operationId": "createCluster", "summary": "request a new cluster",
                     "requestBody": {"required": True,
                                     "content": body(ref(request_model, "validation"))},
                     "responses": {"202": accepted, **auth, **body_errors,
                                   "409": problem("a cluster of that name exists")}},
        },
        "/v1/clusters/{name}": {
            "parameters": [name_param],
            "get": {"operationId": "getCluster",
                    "summary": "one cluster: spec, steps with timings, agent status",
                    "responses": {"200": answer(ClusterDetail, "the cluster", headers={
                        "ETag": {"description": "the desired revision, for If-Match",
                                 "schema": {"type": "string"}}}),
                        **auth, "404": problem("no such cluster"),
                        "500": unreadable}},
            "delete": {"operationId": "deleteCluster", "summary": "mark a cluster Deleting",
                       "responses": {"202": accepted, **auth,
                                     "404": problem("no such cluster"),
                                     "500": unreadable,
                                     "409": problem("the record kept changing; retry")}},
        },
        "/v1/clusters/{name}/spec": {
            "parameters": [name_param],
            "put": {"operationId": "updateClusterSpec",
                    "summary": "day 2: replace the desired spec (a new revision)",
                    "parameters": [{"name": "If-Match", "in": "header", "required": False,
                                    "description": "the ETag of GET: refuse the change if the "
                                                   "spec moved on meanwhile",
                                    "schema": {"type": "string"}}],
                    "requestBody": {"required": True,
                                    "content": body(ref(update_model, "validation"))},
                    "responses": {"202": accepted, **auth, **body_errors,
                                  "404": problem("no such cluster"),
                                  "500": unreadable,
                                  "409": problem("the cluster is Failed or Deleting"),
                                  "412": problem("If-Match does not match the revision")}},
        },
        "/healthz": {"get": {"operationId": "healthz", "summary": "the process is alive",
                             "security": unprotected,
                             "responses": {"200": answer(Health, "alive"),
                                           "503": problem("a background task is stuck or "
                                                          "keeps failing: restart")}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "ready to serve",
                            "security": unprotected,
                            "responses": {"200": answer(Health, "ready"),
                                          "503": problem("not ready")}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                             "security": unprotected,
                             "responses": {"200": {"description": "text exposition format",
                                                   "content": body({"type": "string"},
                                                                   "text/plain")}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "this document",
                                  "security": unprotected,
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": body({"type": "object"})}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Outpost management gateway", "version": "1",
                 "description": "Request edge clusters, change their spec, follow the fleet. "
                                "Changes answer 202: the gateway bootstraps, pivots and "
                                "publishes in the background. Errors are RFC 9457 problem "
                                "details."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
