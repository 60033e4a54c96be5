"""The gateway API against a RecordStore on an emulated API server, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from agent.kube import ApiKubeClient
from agent.kube import resources as r
from agent.spec import Condition, StatusReport
from mgmt_gateway.api import PROBLEM_JSON, ApiDeps, make_app
from mgmt_gateway.publish import ObservedStatus
from mgmt_gateway.state import ClusterRecord, RecordStore
from testbed.apiserver import ApiServer

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests ops@site"


def dev_request(name: str = "edge-1", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name, "namespace": "fleet", "kubernetesVersion": "v1.35.2",
        "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 3, "machine": {"provider": "dev"}},
        "workers": [{"name": "line-a", "replicas": 2, "machine": {"provider": "dev"}}],
        "sshAuthorizedKeys": [SSH],
    }
    body.update(over)
    return body


def spec_update(**over: Any) -> dict[str, Any]:
    body = dev_request(**over)
    del body["name"]
    return body


def vsphere_request(name: str = "edge-v") -> dict[str, Any]:
    machine = {"provider": "vsphere", "template": "ubuntu-2404-kube"}
    return dev_request(name, infrastructure={
        "provider": "vsphere", "server": "vc.example", "datacenter": "dc1", "datastore": "ds1",
        "network": "net1", "identityName": "vc-creds", "controlPlaneEndpoint": "10.0.0.10"},
        controlPlane={"replicas": 1, "machine": machine},
        workers=[{"name": "w", "replicas": 1, "machine": machine}])


@dataclass
class Gw:
    client: TestClient  # type: ignore[type-arg]
    store: RecordStore
    woken: list[str]
    statuses: dict[str, ObservedStatus]
    deps: ApiDeps
    ready: list[bool] = field(default_factory=lambda: [True])

    async def post(self, body: Any, **kw: Any) -> Any:
        return await self.client.post("/v1/clusters", json=body, headers=AUTH, **kw)

    async def put(self, name: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return await self.client.put(f"/v1/clusters/{name}/spec", json=body,
                                     headers={**AUTH, **(headers or {})})

    async def get(self, path: str) -> Any:
        return await self.client.get(path, headers=AUTH)

    async def record(self, name: str) -> ClusterRecord:
        rec = await self.store.get(name)
        assert rec is not None
        return rec


@pytest_asyncio.fixture
async def store(api: ApiServer, kubeconfig: Path) -> AsyncIterator[RecordStore]:
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    await kube.create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": "outpost-system"}})
    try:
        yield RecordStore(kube)
    finally:
        await kube.close()


@pytest_asyncio.fixture
async def gw(store: RecordStore) -> AsyncIterator[Gw]:
    woken: list[str] = []
    statuses: dict[str, ObservedStatus] = {}
    ready = [True]
    deps = ApiDeps(records=store, statuses=lambda: statuses, wake=woken.append,
                   tokens={TOKEN, "another-token"}, ready=lambda: ready[0],
                   registry=CollectorRegistry())
    async with TestClient(TestServer(make_app(deps))) as client:
        yield Gw(client, store, woken, statuses, deps, ready)


async def problem(resp: Any, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 answer and return its body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM_JSON
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    assert body["instance"] == resp.url.path
    return body


def report(name: str, applied: int, *, connected: bool = True,
           error: str | None = None, conditions: tuple[Condition, ...] = ()) -> StatusReport:
    return StatusReport(cluster=name, observed_revision=applied, applied_revision=applied,
                        phase="Converged" if error is None else "Degraded",
                        connected=connected, last_error=error, agent_version="0.1.0",
                        reported_at=datetime.now(UTC), conditions=conditions)


# -- create -------------------------------------------------------------------------------------
async def test_create_is_accepted_and_recorded(gw: Gw) -> None:
    resp = await gw.post(dev_request())
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"] == "/v1/clusters/edge-1"
    assert await resp.json() == {"name": "edge-1", "phase": "Requested", "revision": 1,
                                 "href": "/v1/clusters/edge-1"}
    rec = await gw.record("edge-1")
    assert rec.phase == "Requested"
    assert rec.spec.cluster_name == "edge-1" and rec.spec.revision == 1
    assert rec.spec.namespace == "fleet" and rec.spec.control_plane.replicas == 3
    assert [s.phase for s in rec.steps] == ["Requested"]
    assert gw.woken == ["edge-1"]


async def test_duplicate_name_is_a_conflict(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    body = await problem(await gw.post(dev_request(kubernetesVersion="v1.35.3")), 409)
    assert "already exists" in body["detail"] and "PUT /v1/clusters/edge-1/spec" in body["detail"]
    assert (await gw.record("edge-1")).spec.kubernetes_version == "v1.35.2"


# -- bad requests ---------------------------------------------------------------------------
def _without(key: str) -> dict[str, Any]:
    body = dev_request()
    del body[key]
    return body


BAD_BODIES = [
    pytest.param(dev_request("Edge_1"), "name", "DNS-1123", id="invalid-name"),
    pytest.param(dev_request("x" * 41), "name", "at most 40", id="name-too-long"),
    pytest.param(dev_request(controlPlane={"replicas": 2, "machine": {"provider": "dev"}}),
                 "controlPlane.replicas", "1, 3 or 5", id="cp-replicas-2"),
    pytest.param(dev_request(infrastructure={"provider": "aws"}),
                 "infrastructure", "unknown provider 'aws'", id="unknown-provider"),
    pytest.param(dev_request(infrastructure={}), "infrastructure", "'vsphere', 'dev'",
                 id="provider-missing"),
    pytest.param(_without("kubernetesVersion"), "kubernetesVersion", "is required",
                 id="missing-version"),
    pytest.param(_without("controlPlane"), "controlPlane", "is required", id="missing-cp"),
    pytest.param(dev_request(kubernetesVersion="1.35"), "kubernetesVersion", "v1.35.2",
                 id="bad-version"),
    pytest.param(dev_request(controlPlane={"replicas": 1, "machine": {
        "provider": "vsphere", "template": "t"}}), None,
                 "infrastructure provider", id="provider-mismatch"),
    pytest.param(dev_request(workers=[{"name": "a", "replicas": 1,
                                       "machine": {"provider": "dev", "cpus": 4}}]),
                 "workers[0].machine.cpus", "not a known field", id="unknown-nested-field"),
    pytest.param(dev_request(replicas=3), "replicas", "not a known field", id="unknown-field"),
    pytest.param([dev_request()], "(root)", "JSON object", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_BODIES)
async def test_invalid_requests_say_what_to_fix_and_create_nothing(
        gw: Gw, body: Any, field: str | None, message: str) -> None:
    got = await problem(await gw.post(body), 422)
    assert message in got["detail"]
    if field is not None:
        fields = {e["field"]: e["message"] for e in got["errors"]}
        assert field in fields, fields
        assert message in fields[field]
    assert await gw.store.list() == []
    assert gw.woken == []


async def test_every_invalid_field_is_listed_at_once(gw: Gw) -> None:
    body = dev_request("Bad!", kubernetesVersion="latest",
                       controlPlane={"replicas": 4, "machine": {"provider": "dev"}})
    got = await problem(await gw.post(body), 422)
    assert {e["field"] for e in got["errors"]} == {"name", "kubernetesVersion",
                                                   "controlPlane.replicas"}
    assert got["detail"].startswith("the cluster request has 3 problems")


async def test_vsphere_fields_are_named_without_pydantic_internals(gw: Gw) -> None:
    body = vsphere_request()
    del body["infrastructure"]["datacenter"]
    got = await problem(await gw.post(body), 422)
    assert [e["field"] for e in got["errors"]] == ["infrastructure.datacenter"]


@pytest.mark.parametrize(("data", "headers", "status", "message"), [
    pytest.param(b'{"name": "edge-1",', {}, 400, "not valid JSON", id="malformed"),
    pytest.param(b"", {}, 400, "empty", id="empty"),
    pytest.param(b"\xff\xfe{}", {}, 400, "not UTF-8", id="not-utf8"),
    pytest.param(b"name=edge-1", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
                 "application/json", id="form"),
    pytest.param(b"{" + b" " * (1024 * 1024 + 10) + b"}", {}, 413, "exceeds the limit",
                 id="oversize"),
])
async def test_unreadable_bodies(gw: Gw, data: bytes, headers: dict[str, str], status: int,
                                 message: str) -> None:
    headers = {"Content-Type": "application/json", **AUTH, **headers}
    resp = await gw.client.post("/v1/clusters", data=data, headers=headers)
    got = await problem(resp, status)
    assert message in got["detail"]
    assert await gw.store.list() == []


async def test_oversize_chunked_body_is_refused(gw: Gw) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    resp = await gw.client.post("/v1/clusters", data=chunks(),
                                headers={**AUTH, "Content-Type": "application/json"})
    assert "exceeds the limit" in (await problem(resp, 413))["detail"]


# -- auth -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwdw==", "Bearer", "Bearer  ",
                                    "Bearer a b", TOKEN])
async def test_missing_or_malformed_credentials_are_401(gw: Gw, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in [("GET", "/v1/clusters"), ("POST", "/v1/clusters"),
                         ("GET", "/v1/clusters/edge-1"), ("DELETE", "/v1/clusters/edge-1"),
                         ("PUT", "/v1/clusters/edge-1/spec"), ("GET", "/v1/nothing")]:
        resp = await gw.client.request(method, path, headers=headers, json=dev_request())
        await problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await gw.store.list() == []


async def test_unknown_token_is_403(gw: Gw) -> None:
    resp = await gw.client.post("/v1/clusters", json=dev_request(),
                                headers={"Authorization": "Bearer not-the-token"})
    assert "not accepted" in (await problem(resp, 403))["detail"]
    assert await gw.store.list() == []
    ok = await gw.client.get("/v1/clusters", headers={"Authorization": "bearer another-token"})
    assert ok.status == 200


async def test_probes_and_docs_need_no_token(gw: Gw) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await gw.client.get(path)).status == 200, path
    gw.ready[0] = False
    await problem(await gw.client.get("/readyz"), 503)
    assert (await gw.client.get("/healthz")).status == 200


async def test_no_configured_tokens_refuse_everyone(store: RecordStore) -> None:
    deps = ApiDeps(records=store, statuses=dict, wake=lambda _: None, tokens=set())
    async with TestClient(TestServer(make_app(deps))) as client:
        resp = await client.get("/v1/clusters", headers=AUTH)
        assert "no tokens are configured" in (await problem(resp, 403))["detail"]


# -- reading ---------------------------------------------------------------------------------------
async def test_fleet_view_joins_records_and_agent_reports(gw: Gw) -> None:
    for name in ("edge-2", "edge-1"):
        assert (await gw.post(dev_request(name))).status == 202
    rec = await gw.record("edge-1")
    await gw.store.update(rec.advanced("CapiCreated").model_copy(
        update={"published_revision": 1}))
    now = datetime.now(UTC)
    refused = Condition(type="DowngradeRefused", status="True", reason="DowngradeRefused",
                        message="the spec asks for v1.34.1 but the control plane runs v1.35.2",
                        last_transition_time=now)
    gw.statuses["edge-1"] = ObservedStatus(report("edge-1", 1, error="disk pressure",
                                                  conditions=(refused,)),
                                           last_seen=now, kv_revision=7)
    resp = await gw.get("/v1/clusters")
    assert resp.status == 200
    items = (await resp.json())["items"]
    assert [i["name"] for i in items] == ["edge-1", "edge-2"]
    one, two = items
    assert one["phase"] == "CapiCreated" and one["desiredRevision"] == 1
    assert one["appliedRevision"] == 1 and one["inSync"] is True
    assert one["connected"] is True and one["agentPhase"] == "Degraded"
    assert one["lastError"] == "disk pressure"
    [cond] = one["conditions"]  # plan notes reach the fleet view as conditions
    assert cond["type"] == "DowngradeRefused" and cond["status"] == "True"
    assert "v1.34.1" in cond["message"]
    assert datetime.fromisoformat(one["lastSeen"]) == now
    assert two["phase"] == "Requested" and two["connected"] is False
    assert "appliedRevision" not in two and two["inSync"] is False


async def test_a_silent_agent_is_not_connected(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    gw.statuses["edge-1"] = ObservedStatus(
        report("edge-1", 1), last_seen=datetime.now(UTC) - timedelta(minutes=10),
        kv_revision=3)
    (item,) = (await (await gw.get("/v1/clusters")).json())["items"]
    assert item["connected"] is False and item["appliedRevision"] == 1


async def test_detail_has_spec_steps_with_timings_and_status(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    rec = await gw.record("edge-1")
    rec = await gw.store.update(rec.advanced("CapiCreated", "12 objects"))
    gw.statuses["edge-1"] = ObservedStatus(report("edge-1", 0), datetime.now(UTC), 1)
    resp = await gw.get("/v1/clusters/edge-1")
    assert resp.status == 200
    assert resp.headers["ETag"] == '"1"'
    body = await resp.json()
    assert body["spec"]["clusterName"] == "edge-1" and body["spec"]["revision"] == 1
    first, second = body["steps"]
    assert first["phase"] == "Requested" and first["durationSeconds"] >= 0
    assert first["finishedAt"] == second["startedAt"]
    assert second == {"phase": "CapiCreated", "startedAt": second["startedAt"],
                      "detail": "12 objects"}
    assert body["status"]["cluster"] == "edge-1" and body["status"]["appliedRevision"] == 0
    assert body["inSync"] is False


async def test_unknown_cluster_is_404(gw: Gw) -> None:
    for method, path in [("GET", "/v1/clusters/nope"), ("DELETE", "/v1/clusters/nope"),
                         ("GET", "/v1/clusters/Not_A_Name")]:
        await problem(await gw.client.request(method, path, headers=AUTH), 404)
    await problem(await gw.put("nope", spec_update()), 404)


async def test_unknown_routes_and_methods_are_problems(gw: Gw) -> None:
    assert "/openapi.json" in (await problem(await gw.get("/v1/clustrs"), 404))["detail"]
    resp = await gw.client.patch("/v1/clusters", headers=AUTH)
    got = await problem(resp, 405)
    assert "GET" in got["detail"] and "POST" in resp.headers["Allow"]


# -- day 2 ----------------------------------------------------------------------------------------
async def test_spec_update_bumps_the_revision(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    workers = [{"name": "line-a", "replicas": 4, "machine": {"provider": "dev"}}]
    resp = await gw.put("edge-1", spec_update(workers=workers, kubernetesVersion="v1.36.0"))
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"] == "/v1/clusters/edge-1"
    assert (await resp.json())["revision"] == 2
    rec = await gw.record("edge-1")
    assert rec.spec.revision == 2 and rec.spec.workers[0].replicas == 4
    assert rec.spec.kubernetes_version == "v1.36.0" and rec.spec.cluster_name == "edge-1"
    assert gw.woken == ["edge-1", "edge-1"]
    # The same spec again is not a new revision.
    resp = await gw.put("edge-1", spec_update(workers=workers, kubernetesVersion="v1.36.0"))
    assert resp.status == 202 and (await resp.json())["revision"] == 2
    assert (await gw.record("edge-1")).spec.revision == 2


async def test_spec_update_keeps_the_namespace_when_omitted(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    body = spec_update(controlPlane={"replicas": 5, "machine": {"provider": "dev"}})
    del body["namespace"]
    assert (await gw.put("edge-1", body)).status == 202
    rec = await gw.record("edge-1")
    assert rec.spec.namespace == "fleet" and rec.spec.control_plane.replicas == 5


async def test_spec_update_accepts_a_round_trip_of_the_same_name(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    body = {**spec_update(kubernetesVersion="v1.35.3"), "clusterName": "edge-1"}
    assert (await gw.put("edge-1", body)).status == 202


async def test_spec_update_retries_when_the_worker_saves_meanwhile(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    real_update = gw.store.update
    raced: list[bool] = []

    async def racing_update(rec: ClusterRecord) -> ClusterRecord:
        if not raced:  # the worker advances the record just before the API saves
            raced.append(True)
            current = await gw.store.get(rec.name)
            assert current is not None
            await real_update(current.advanced("CapiCreated"))
        return await real_update(rec)

    gw.store.update = racing_update  # type: ignore[method-assign]
    resp = await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3"))
    assert resp.status == 202, await resp.text()
    rec = await gw.record("edge-1")
    assert rec.phase == "CapiCreated" and rec.spec.revision == 2


async def test_if_match_guards_against_lost_updates(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    etag = (await gw.get("/v1/clusters/edge-1")).headers["ETag"]
    assert (await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3"),
                         {"If-Match": etag})).status == 202
    got = await problem(await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.4"),
                                     {"If-Match": etag}), 412)
    assert "revision 2" in got["detail"]
    await problem(await gw.put("edge-1", spec_update(), {"If-Match": "yesterday"}), 400)
    assert (await gw.record("edge-1")).spec.kubernetes_version == "v1.35.3"


@pytest.mark.parametrize(("body", "field", "message"), [
    pytest.param({**spec_update(), "namespace": "elsewhere"}, "namespace", "cannot change",
                 id="namespace"),
    pytest.param({k: v for k, v in vsphere_request("edge-1").items() if k != "name"},
                 "infrastructure.provider", "cannot change from 'dev' to 'vsphere'",
                 id="provider"),
    pytest.param(spec_update(kubernetesVersion="v1.34.9"), "kubernetesVersion",
                 "cannot be downgraded", id="downgrade"),
    pytest.param({**spec_update(), "name": "edge-2"}, "name", "cannot be renamed",
                 id="rename"),
    pytest.param({**spec_update(), "clusterName": "edge-2"}, "clusterName",
                 "cannot be renamed", id="rename-clustername"),
    pytest.param({**spec_update(), "revision": 7}, "revision", "assigned by the gateway",
                 id="revision"),
    pytest.param(spec_update(controlPlane={"replicas": 2, "machine": {"provider": "dev"}}),
                 "controlPlane.replicas", "1, 3 or 5", id="invalid"),
    pytest.param(spec_update(controlPlane={"replicas": 1, "machine": {
        "provider": "vsphere", "template": "t"}}), "(root)", "infrastructure provider",
                 id="provider-mismatch"),
])
async def test_changes_that_cannot_apply_are_refused(gw: Gw, body: dict[str, Any], field: str,
                                                     message: str) -> None:
    assert (await gw.post(dev_request())).status == 202
    got = await problem(await gw.put("edge-1", body), 422)
    fields = {e["field"]: e["message"] for e in got["errors"]}
    assert field in fields and message in fields[field], fields
    assert message in got["detail"]
    rec = await gw.record("edge-1")
    assert rec.spec.revision == 1 and rec.spec.kubernetes_version == "v1.35.2"


@pytest.mark.parametrize("phase", ["Failed", "Deleting"])
async def test_failed_or_deleting_clusters_cannot_change(gw: Gw, phase: str) -> None:
    assert (await gw.post(dev_request())).status == 202
    rec = await gw.record("edge-1")
    await gw.store.update(rec.failed("CapiCreated: quota") if phase == "Failed"
                          else rec.advanced("Deleting"))
    got = await problem(await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3")), 409)
    assert phase in got["detail"]
    assert (await gw.record("edge-1")).spec.revision == 1


# -- delete ---------------------------------------------------------------------------------------
async def test_delete_marks_deleting(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    for _ in range(2):  # idempotent
        resp = await gw.client.delete("/v1/clusters/edge-1", headers=AUTH)
        assert resp.status == 202
        assert (await resp.json())["phase"] == "Deleting"
    rec = await gw.record("edge-1")
    assert rec.phase == "Deleting"
    assert [s.phase for s in rec.steps] == ["Requested", "Deleting"]
    assert gw.woken == ["edge-1", "edge-1"]


# -- management cluster down -----------------------------------------------------------------------
async def test_management_cluster_down_is_503(gw: Gw, api: ApiServer) -> None:
    gw.store.kube.request_timeout = 2  # type: ignore[attr-defined]
    await api.stop()
    resp = await gw.post(dev_request())
    got = await problem(resp, 503)
    assert "retry" in got["detail"] and resp.headers["Retry-After"]


# -- documents ------------------------------------------------------------------------------------
async def test_openapi_document_describes_the_api(gw: Gw) -> None:
    resp = await gw.client.get("/openapi.json")
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert {p: sorted(k for k in v if k != "parameters") for p, v in doc["paths"].items()} == {
        "/v1/clusters": ["get", "post"], "/v1/clusters/{name}": ["delete", "get"],
        "/v1/clusters/{name}/spec": ["put"], "/healthz": ["get"], "/readyz": ["get"],
        "/metrics": ["get"], "/openapi.json": ["get"]}
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [
                x for v in node.values() for x in refs(v)]
        if isinstance(node, list):
            return [x for v in node for x in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref
    post = doc["paths"]["/v1/clusters"]["post"]
    request_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = schemas[request_ref.split("/")[-1]]
    assert {"name", "kubernetesVersion", "controlPlane"} <= set(request_schema["required"])
    assert "application/problem+json" in post["responses"]["422"]["content"]
    assert {"401", "403", "409", "413"} <= set(post["responses"])
    detail = schemas["ClusterDetail"]["properties"]
    assert {"steps", "spec", "appliedRevision", "lastSeen", "connected"} <= set(detail)


async def test_metrics_count_requests_by_route_template(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    await gw.get("/v1/clusters/edge-1")
    await gw.client.get("/v1/clusters")  # 401
    text = await (await gw.client.get("/metrics")).text()
    assert ('outpost_gateway_http_requests_total{code="202",method="POST",'
            'route="/v1/clusters"} 1.0') in text
    assert ('outpost_gateway_http_requests_total{code="200",method="GET",'
            'route="/v1/clusters/{name}"} 1.0') in text
    assert ('outpost_gateway_http_requests_total{code="401",method="GET",'
            'route="/v1/clusters"} 1.0') in text
    assert "outpost_gateway_http_request_duration_seconds_bucket{" in text
    assert 'route="/v1/clusters/edge-1"' not in text
