"""The gateway API, a façade over OutpostCluster resources, on an emulated API server with the
gateway's CRDs, over real HTTP. The controller does not run here: where a test needs its work
(a status with a phase, a revision, steps), the test writes the status as the controller
would, through the /status subresource."""

from __future__ import annotations

import asyncio
import functools
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

from agent.kube import ApiKubeClient, NotFound, Obj
from agent.kube import resources as r
from agent.spec import Condition, StatusReport
from mgmt_gateway.api import PROBLEM_JSON, ApiDeps, make_app
from mgmt_gateway.clusters import FINALIZER, MANAGER, OUTPOST_CLUSTER
from mgmt_gateway.clusters import Invalid as NotWorkable
from mgmt_gateway.publish import ObservedStatus
from mgmt_gateway.state import ClusterRecord
from mgmt_gateway.store import OutpostClusters
from testbed.apiserver import ApiServer
from testbed.crds import gateway_crd_files
from tests.fixtures.site import eventually

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
    fleet: OutpostClusters
    statuses: dict[str, ObservedStatus]
    deps: ApiDeps
    ready: list[bool] = field(default_factory=lambda: [True])

    @property
    def kube(self) -> ApiKubeClient:
        return self.fleet.kube  # type: ignore[return-value]

    async def post(self, body: Any, **kw: Any) -> Any:
        return await self.client.post("/v1/clusters", json=body, headers=AUTH, **kw)

    async def put(self, name: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return await self.client.put(f"/v1/clusters/{name}/spec", json=body,
                                     headers={**AUTH, **(headers or {})})

    async def get(self, path: str) -> Any:
        return await self.client.get(path, headers=AUTH)

    async def delete(self, name: str) -> Any:
        return await self.client.delete(f"/v1/clusters/{name}", headers=AUTH)

    async def record(self, name: str) -> ClusterRecord:
        rec = await self.fleet.get(name)
        assert rec is not None
        return rec

    async def stored(self, name: str, namespace: str = "fleet") -> Obj:
        """The OutpostCluster as the API server has it (not the informer's cache)."""
        return await self.kube.get(OUTPOST_CLUSTER, name, namespace)

    async def created(self) -> list[str]:
        """`namespace/name` of every OutpostCluster on the API server, and in the cache."""
        listed = await self.kube.list(OUTPOST_CLUSTER)
        names = sorted(f"{o['metadata']['namespace']}/{o['metadata']['name']}"
                       for o in listed.items)
        assert sorted(self.fleet.clusters.items) == names
        return names

    def cache(self, name: str) -> Obj:
        """The OutpostCluster as the gateway's informer has it."""
        obj = self.fleet.owner_of(name)
        assert obj is not None, f"{name} is not in the cache"
        return obj

    async def cached(self, name: str, rv: str) -> Obj:
        """Wait until the informer holds `name` at resourceVersion `rv` or newer."""
        def seen() -> bool:
            obj = self.fleet.owner_of(name)
            return obj is not None and int(obj["metadata"]["resourceVersion"]) >= int(rv)
        await eventually(seen, timeout=10, interval=0.01, what=f"{name} at {rv}")
        return self.cache(name)

    async def controller_writes(self, name: str, **status: Any) -> Obj:
        """Write the status as the controller would: it accepted the current spec (its
        revision and hash), plus `status` (phase, steps, ...); waits until the cache has it."""
        obj = self.cache(name)
        found = self.fleet.desired(obj)
        assert not isinstance(found, NotWorkable), found
        spec, digest = found
        new = await self.fleet.write_status(obj, {
            "phase": "Requested", **(obj.get("status") or {}),
            "desiredRevision": spec.revision, "specHash": digest, **status})
        return await self.cached(name, new["metadata"]["resourceVersion"])


@pytest_asyncio.fixture
async def fleet(api: ApiServer, kubeconfig: Path) -> AsyncIterator[OutpostClusters]:
    """The informers of a gateway over a management cluster that serves the gateway's CRDs."""
    await api.install_crds(gateway_crd_files())
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    fleet = OutpostClusters(kube)
    tasks = [asyncio.create_task(fleet.clusters.run()), asyncio.create_task(fleet.profiles.run())]
    try:
        await fleet.synced()
        yield fleet
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await kube.close()


@pytest_asyncio.fixture
async def gw(fleet: OutpostClusters) -> AsyncIterator[Gw]:
    statuses: dict[str, ObservedStatus] = {}
    ready = [True]
    deps = ApiDeps(fleet=fleet, statuses=lambda: statuses, tokens={TOKEN, "another-token"},
                   ready=lambda: ready[0], registry=CollectorRegistry())
    async with TestClient(TestServer(make_app(deps))) as client:
        yield Gw(client, fleet, statuses, deps, ready)


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
    # The request became an OutpostCluster in its namespace (which the API created), its
    # spec the request's without the name and namespace, its status the controller's to write.
    await gw.kube.get(r.NAMESPACE, "fleet")
    obj = await gw.stored("edge-1")
    assert "status" not in obj
    spec = obj["spec"]
    assert spec["kubernetesVersion"] == "v1.35.2" and spec["controlPlane"]["replicas"] == 3
    assert spec["workers"] == [{"name": "line-a", "replicas": 2, "machine": {"provider": "dev"}}]
    assert spec["sshAuthorizedKeys"] == [SSH] and not {"name", "namespace"} & set(spec)
    assert await gw.created() == ["fleet/edge-1"]
    rec = await gw.record("edge-1")
    assert rec.phase == "Requested"
    assert rec.spec.cluster_name == "edge-1" and rec.spec.revision == 1
    assert rec.spec.namespace == "fleet" and rec.spec.control_plane.replicas == 3
    assert rec.steps == ()  # the controller records the steps as it works them


@pytest.mark.parametrize("namespace", ["fleet", "other"])
async def test_duplicate_name_is_a_conflict(gw: Gw, namespace: str) -> None:
    """A cluster name is unique across the fleet (it keys NATS), whatever the namespace."""
    assert (await gw.post(dev_request())).status == 202
    body = await problem(await gw.post(dev_request(kubernetesVersion="v1.35.3",
                                                   namespace=namespace)), 409)
    assert "already exists" in body["detail"] and "PUT /v1/clusters/edge-1/spec" in body["detail"]
    assert (await gw.record("edge-1")).spec.kubernetes_version == "v1.35.2"
    assert (await gw.stored("edge-1"))["spec"]["kubernetesVersion"] == "v1.35.2"
    assert await gw.created() == ["fleet/edge-1"]


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
    assert await gw.created() == []


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
    assert await gw.created() == []


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
    assert await gw.created() == []


async def test_unknown_token_is_403(gw: Gw) -> None:
    resp = await gw.client.post("/v1/clusters", json=dev_request(),
                                headers={"Authorization": "Bearer not-the-token"})
    assert "not accepted" in (await problem(resp, 403))["detail"]
    assert await gw.created() == []
    ok = await gw.client.get("/v1/clusters", headers={"Authorization": "bearer another-token"})
    assert ok.status == 200


async def test_probes_and_docs_need_no_token(gw: Gw) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await gw.client.get(path)).status == 200, path
    gw.ready[0] = False
    await problem(await gw.client.get("/readyz"), 503)
    assert (await gw.client.get("/healthz")).status == 200


async def test_no_configured_tokens_refuse_everyone(fleet: OutpostClusters) -> None:
    deps = ApiDeps(fleet=fleet, statuses=dict, tokens=set())
    async with TestClient(TestServer(make_app(deps))) as client:
        resp = await client.get("/v1/clusters", headers=AUTH)
        assert "no tokens are configured" in (await problem(resp, 403))["detail"]


# -- reading ---------------------------------------------------------------------------------------
async def test_fleet_view_joins_records_and_agent_reports(gw: Gw) -> None:
    for name in ("edge-2", "edge-1"):
        assert (await gw.post(dev_request(name))).status == 202
    await gw.controller_writes("edge-1", phase="CapiCreated", publishedRevision=1)
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
    assert one["namespace"] == "fleet" and one["publishedRevision"] == 1
    assert one["appliedRevision"] == 1 and one["inSync"] is True
    assert one["connected"] is True and one["agentPhase"] == "Degraded"
    assert one["lastError"] == "disk pressure"
    [cond] = one["conditions"]  # plan notes reach the fleet view as conditions
    assert cond["type"] == "DowngradeRefused" and cond["status"] == "True"
    assert "v1.34.1" in cond["message"]
    assert datetime.fromisoformat(one["lastSeen"]) == now
    assert two["phase"] == "Requested" and two["desiredRevision"] == 1
    assert two["connected"] is False and two["publishedRevision"] == 0
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
    began = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    created = began + timedelta(seconds=12)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    await gw.controller_writes("edge-1", phase="CapiCreated", steps=[
        {"phase": "Requested", "startedAt": began.strftime(stamp),
         "finishedAt": created.strftime(stamp), "durationSeconds": 12.0},
        {"phase": "CapiCreated", "startedAt": created.strftime(stamp),
         "detail": "12 objects"}])
    gw.statuses["edge-1"] = ObservedStatus(report("edge-1", 0), datetime.now(UTC), 1)
    resp = await gw.get("/v1/clusters/edge-1")
    assert resp.status == 200
    assert resp.headers["ETag"] == '"1"'
    body = await resp.json()
    assert body["spec"]["clusterName"] == "edge-1" and body["spec"]["revision"] == 1
    assert body["phase"] == "CapiCreated"
    first, second = body["steps"]
    assert first["phase"] == "Requested" and first["durationSeconds"] == 12
    assert datetime.fromisoformat(first["startedAt"]) == began
    assert first["finishedAt"] == second["startedAt"]
    assert datetime.fromisoformat(second["startedAt"]) == created
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
    await gw.controller_writes("edge-1")  # revision 1 is the desired spec
    workers = [{"name": "line-a", "replicas": 4, "machine": {"provider": "dev"}}]
    resp = await gw.put("edge-1", spec_update(workers=workers, kubernetesVersion="v1.36.0"))
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"] == "/v1/clusters/edge-1"
    assert (await resp.json())["revision"] == 2
    obj = await gw.stored("edge-1")
    assert obj["spec"]["kubernetesVersion"] == "v1.36.0"
    assert obj["spec"]["workers"] == workers and "namespace" not in obj["spec"]
    assert obj["status"]["desiredRevision"] == 1  # the spec changed, not the status
    rec = await gw.record("edge-1")
    assert rec.spec.revision == 2 and rec.spec.workers[0].replicas == 4
    assert rec.spec.kubernetes_version == "v1.36.0" and rec.spec.cluster_name == "edge-1"
    # The same spec again is not a new revision, and writes nothing.
    resp = await gw.put("edge-1", spec_update(workers=workers, kubernetesVersion="v1.36.0"))
    assert resp.status == 202 and (await resp.json())["revision"] == 2
    assert (await gw.stored("edge-1"))["metadata"]["resourceVersion"] == \
        obj["metadata"]["resourceVersion"]
    assert (await gw.record("edge-1")).spec.revision == 2
    # Once the controller has taken revision 2, the next change is revision 3.
    await gw.controller_writes("edge-1")
    resp = await gw.put("edge-1", spec_update(workers=workers, kubernetesVersion="v1.36.1"))
    assert resp.status == 202 and (await resp.json())["revision"] == 3
    assert (await gw.record("edge-1")).spec.revision == 3


NOT_TAKEN = pytest.mark.parametrize("taken", [False, True],
                                    ids=["before-first-pass", "after-revision-1"])


async def change_not_taken_yet(gw: Gw, taken: bool) -> None:
    """A cluster whose spec the controller has not taken yet: no status at all (before its
    first pass), or a status naming revision 1 under a spec changed since."""
    assert (await gw.post(dev_request())).status == 202
    if taken:
        await gw.controller_writes("edge-1")
        assert (await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3"))).status == 202


@NOT_TAKEN
async def test_a_change_answers_the_revision_it_gets(gw: Gw, taken: bool) -> None:
    """Before the controller has taken the spec, the revision a PUT answers is the one GET then
    shows, the one an identical PUT answers, and the one the controller gives that spec."""
    await change_not_taken_yet(gw, taken)
    resp = await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.4"))
    assert resp.status == 202, await resp.text()
    answered = (await resp.json())["revision"]
    got = await gw.get("/v1/clusters/edge-1")
    assert (await got.json())["spec"]["kubernetesVersion"] == "v1.35.4"
    assert (await got.json())["desiredRevision"] == answered, (
        "PUT answered another revision than GET shows")
    resp = await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.4"))
    assert resp.status == 202 and (await resp.json())["revision"] == answered
    await gw.controller_writes("edge-1")
    assert gw.cache("edge-1")["status"]["desiredRevision"] == answered


@NOT_TAKEN
async def test_if_match_guards_changes_not_taken_yet(gw: Gw, taken: bool) -> None:
    """Two clients read the same ETag before the controller has taken the spec: the second
    change must not silently overwrite the first."""
    await change_not_taken_yet(gw, taken)
    etag = (await gw.get("/v1/clusters/edge-1")).headers["ETag"]
    first = await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.4"), {"If-Match": etag})
    assert first.status == 202, await first.text()
    await problem(await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.5"),
                               {"If-Match": etag}), 412)
    assert (await gw.stored("edge-1"))["spec"]["kubernetesVersion"] == "v1.35.4"


async def test_spec_update_keeps_the_namespace_when_omitted(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    body = spec_update(controlPlane={"replicas": 5, "machine": {"provider": "dev"}})
    del body["namespace"]
    assert (await gw.put("edge-1", body)).status == 202
    rec = await gw.record("edge-1")
    assert rec.spec.namespace == "fleet" and rec.spec.control_plane.replicas == 5
    assert (await gw.stored("edge-1"))["spec"]["controlPlane"]["replicas"] == 5


async def test_spec_update_accepts_a_round_trip_of_the_same_name(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    body = {**spec_update(kubernetesVersion="v1.35.3"), "clusterName": "edge-1"}
    assert (await gw.put("edge-1", body)).status == 202
    assert (await gw.stored("edge-1"))["spec"]["kubernetesVersion"] == "v1.35.3"


async def test_spec_update_retries_when_the_controller_saves_meanwhile(
        gw: Gw, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await gw.post(dev_request())).status == 202
    await gw.controller_writes("edge-1")
    real_replace = gw.fleet.replace_spec
    tried: list[str] = []

    async def racing_replace(obj: Obj, spec: dict[str, Any]) -> Obj:
        tried.append(obj["metadata"]["resourceVersion"])
        if len(tried) == 1:  # the controller writes the status just before the API saves
            await gw.controller_writes("edge-1", phase="CapiCreated")
        return await real_replace(obj, spec)

    monkeypatch.setattr(gw.fleet, "replace_spec", racing_replace)
    resp = await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3"))
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["revision"] == 2
    assert len(tried) == 2 and tried[0] != tried[1]  # a conflict, then a fresh read
    obj = await gw.stored("edge-1")
    assert obj["spec"]["kubernetesVersion"] == "v1.35.3"
    assert obj["status"]["phase"] == "CapiCreated"  # the controller's write stands
    rec = await gw.record("edge-1")
    assert rec.phase == "CapiCreated" and rec.spec.revision == 2


async def test_if_match_guards_against_lost_updates(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    await gw.controller_writes("edge-1")
    etag = (await gw.get("/v1/clusters/edge-1")).headers["ETag"]
    assert etag == '"1"'
    assert (await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3"),
                         {"If-Match": etag})).status == 202
    got = await problem(await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.4"),
                                     {"If-Match": etag}), 412)
    assert 'is now "2"' in got["detail"]
    await problem(await gw.put("edge-1", spec_update(), {"If-Match": "yesterday"}), 400)
    assert (await gw.record("edge-1")).spec.kubernetes_version == "v1.35.3"
    assert (await gw.stored("edge-1"))["spec"]["kubernetesVersion"] == "v1.35.3"


@pytest.mark.parametrize(("body", "field", "message"), [
    pytest.param({**spec_update(), "namespace": "elsewhere"}, "namespace", "cannot change",
                 id="namespace"),
    pytest.param({k: v for k, v in vsphere_request("edge-1").items() if k != "name"},
                 "infrastructure.provider", "cannot change from 'dev' to 'vsphere'",
                 id="provider"),
    pytest.param(spec_update(kubernetesVersion="v1.34.9"), "kubernetesVersion",
                 "cannot be downgraded", id="downgrade"),
    pytest.param(spec_update(kubernetesVersion="v1.38.1", upgrade={"path": ["v1.36.4"]}),
                 "upgrade.path", "names no v1.37 release, but the upgrade from v1.35.2 to "
                 "v1.38.1 goes through v1.37", id="path-gap"),
    pytest.param(spec_update(kubernetesVersion="v1.37.1", upgrade={"path": ["v1.37.0"]}),
                 "(root)", "upgrade.path: v1.37.0 is not older than the target's minor",
                 id="path-invalid"),
    pytest.param(spec_update(upgrade={"order": ["nope"]}), "(root)",
                 "upgrade.order names pools the spec does not have: nope",
                 id="order-unknown-pool"),
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
    assert (await gw.stored("edge-1"))["metadata"]["generation"] == 1  # nothing written


@pytest.mark.parametrize("phase", ["Failed", "Deleting"])
async def test_failed_or_deleting_clusters_cannot_change(gw: Gw, phase: str) -> None:
    assert (await gw.post(dev_request())).status == 202
    await gw.controller_writes("edge-1", phase=phase, **(
        {"failedReason": "CapiCreated: quota"} if phase == "Failed" else {}))
    got = await problem(await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3")), 409)
    assert phase in got["detail"]
    if phase == "Failed":
        assert "CapiCreated: quota" in got["detail"]
    assert (await gw.record("edge-1")).spec.revision == 1
    assert (await gw.stored("edge-1"))["spec"]["kubernetesVersion"] == "v1.35.2"


# -- delete ---------------------------------------------------------------------------------------
async def hold_with_finalizer(gw: Gw, name: str) -> None:
    """Add the controller's finalizer, as it does on its first pass."""
    obj = await gw.kube.patch(OUTPOST_CLUSTER, name, {"metadata": {"finalizers": [FINALIZER]}},
                              "fleet", field_manager=MANAGER)
    await gw.cached(name, obj["metadata"]["resourceVersion"])


async def test_delete_marks_deleting(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    await gw.controller_writes("edge-1")
    assert (await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3"))).status == 202
    await gw.controller_writes("edge-1")  # revision 2 is the desired spec
    await hold_with_finalizer(gw, "edge-1")
    for _ in range(2):  # idempotent
        resp = await gw.delete("edge-1")
        assert resp.status == 202, await resp.text()
        assert await resp.json() == {"name": "edge-1", "phase": "Deleting", "revision": 2,
                                     "href": "/v1/clusters/edge-1"}
    # The resource stays until the controller has retired the cluster and drops its finalizer.
    obj = await gw.stored("edge-1")
    assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["finalizers"] == [FINALIZER]
    assert (await gw.get("/v1/clusters/edge-1")).status == 200


async def test_delete_without_a_finalizer_removes_the_cluster(gw: Gw) -> None:
    assert (await gw.post(dev_request())).status == 202
    resp = await gw.delete("edge-1")
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"name": "edge-1", "phase": "Deleting", "revision": 1,
                                 "href": "/v1/clusters/edge-1"}
    with pytest.raises(NotFound):
        await gw.stored("edge-1")
    await eventually(lambda: gw.fleet.owner_of("edge-1") is None, timeout=10, interval=0.01,
                     what="the deletion in the cache")
    await problem(await gw.get("/v1/clusters/edge-1"), 404)
    await problem(await gw.delete("edge-1"), 404)
    assert await gw.created() == []


async def test_a_cluster_being_deleted_cannot_change(gw: Gw) -> None:
    """Deleted, the controller still retiring it (its finalizer holds the resource), before
    the controller has written phase Deleting: the DELETE said Deleting, so no new revision."""
    assert (await gw.post(dev_request())).status == 202
    await hold_with_finalizer(gw, "edge-1")
    assert (await gw.delete("edge-1")).status == 202
    await eventually(lambda: "deletionTimestamp" in gw.cache("edge-1")["metadata"],
                     timeout=10, interval=0.01, what="the deletion in the cache")
    got = await problem(await gw.put("edge-1", spec_update(kubernetesVersion="v1.35.3")), 409)
    assert "Deleting" in got["detail"]
    assert (await gw.stored("edge-1"))["spec"]["kubernetesVersion"] == "v1.35.2"


# -- management cluster down -----------------------------------------------------------------------
async def test_management_cluster_down_is_503(gw: Gw, api: ApiServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    gw.kube.request_timeout = 0.5
    # How long a request waits for the informers to list again: short, to keep this fast.
    monkeypatch.setattr(gw.fleet, "synced", functools.partial(gw.fleet.synced, timeout=0.1))
    await api.stop()
    resp = await gw.post(dev_request())  # whether or not the informers have noticed yet
    got = await problem(resp, 503)
    assert "retry" in got["detail"] and resp.headers["Retry-After"]
    await eventually(lambda: not gw.fleet.clusters.synced.is_set(), timeout=10,
                     what="the informer to notice the outage")
    for method, path in [("POST", "/v1/clusters"), ("GET", "/v1/clusters"),
                         ("GET", "/v1/clusters/edge-1"), ("DELETE", "/v1/clusters/edge-1"),
                         ("PUT", "/v1/clusters/edge-1/spec")]:
        resp = await gw.client.request(method, path, headers=AUTH, json=dev_request())
        got = await problem(resp, 503)
        assert "retry" in got["detail"] and resp.headers["Retry-After"], path


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
