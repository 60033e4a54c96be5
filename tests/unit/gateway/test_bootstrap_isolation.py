"""One bad cluster never stops the fleet: unreadable records and failing steps, on an emulated
management cluster. The steps are stand-ins (the real ones need CAPI and NATS); the loop, the
record store and the API are the gateway's own."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from agent.kube import ApiKubeClient, KubeClient
from agent.kube import resources as r
from agent.spec import ClusterSpec
from mgmt_gateway.api import ApiDeps, make_app
from mgmt_gateway.bootstrap import AgentInstall, Bootstrapper
from mgmt_gateway.publish import SpecPublisher, generate_signing_key
from mgmt_gateway.state import LABEL, ClusterRecord, RecordStore
from testbed.apiserver import ApiServer
from tests.fixtures.site import eventually

NS = "outpost-system"
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests ops@site"

# ConfigMaps with the record label as a person or a broken tool might leave them.
BAD: dict[str, tuple[dict[str, str] | None, str]] = {
    "no-data": (None, "missing"),
    "truncated": ({"record": '{"name": "truncated", "phase": "Requ'}, "not valid JSON"),
    "not-a-record": ({"record": json.dumps({"name": "not-a-record", "colour": "blue"})},
                     "not a valid cluster record"),
}


def spec(name: str) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "clusterName": name, "revision": 1, "namespace": "fleet",
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
        "sshAuthorizedKeys": [SSH]})


class FakeSteps(Bootstrapper):
    """The gateway's loop with one-line steps: Requested -> Managed; `broken` clusters raise
    something no step is written to expect."""

    def __init__(self, *args: Any, broken: frozenset[str] = frozenset(), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.broken = broken
        self.attempts: dict[str, int] = {}

    async def advance(self, rec: ClusterRecord) -> ClusterRecord | None:
        self.attempts[rec.name] = self.attempts.get(rec.name, 0) + 1
        if rec.name in self.broken:
            raise RuntimeError(f"surprise in {rec.name}")
        if rec.phase == "Managed":
            return None
        return await self.store.update(rec.advanced("Managed", "stand-in step"))


@pytest_asyncio.fixture
async def mgmt(api: ApiServer, kubeconfig: Path) -> AsyncIterator[KubeClient]:
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    await kube.create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": NS}})
    try:
        yield kube
    finally:
        await kube.close()


def bootstrapper(mgmt: KubeClient, tmp_path: Path, registry: CollectorRegistry,
                 broken: frozenset[str] = frozenset()) -> FakeSteps:
    publisher = SpecPublisher(lambda: None, generate_signing_key(tmp_path / "key.pem"))
    return FakeSteps(RecordStore(mgmt), mgmt, publisher, components=[],
                     agent=AgentInstall(image="x", nats_servers=[], public_keys=[]),
                     work_dir=tmp_path, poll=0.05, retry_max=0.2, registry=registry,
                     broken=broken)


async def put_bad_records(mgmt: KubeClient) -> None:
    for name, (data, _) in BAD.items():
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": f"outpost-cluster-{name}", "namespace": NS,
                                            "labels": {LABEL: name}}}
        if data is not None:
            obj["data"] = data
        await mgmt.create(r.CONFIG_MAP, obj)
    # A valid record filed under the wrong name: copied by hand, say.
    stray = RecordStore(mgmt)._to_obj(ClusterRecord(name="elsewhere", spec=spec("elsewhere")))
    stray["metadata"].update(name="outpost-cluster-copied", labels={LABEL: "copied"})
    await mgmt.create(r.CONFIG_MAP, stray)


async def phase_of(store: RecordStore, name: str) -> str:
    rec = await store.get(name)
    return rec.phase if rec else ""


async def test_unreadable_records_are_skipped_and_the_fleet_proceeds(
        mgmt: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="outpost.gateway.bootstrap")
    await put_bad_records(mgmt)
    store = RecordStore(mgmt)
    await store.create(ClusterRecord(name="edge-1", spec=spec("edge-1")))
    registry = CollectorRegistry()
    boot = bootstrapper(mgmt, tmp_path, registry)
    task = asyncio.create_task(boot.run())
    try:
        await eventually(lambda: _is(phase_of(store, "edge-1"), "Managed"),
                         what="edge-1 Managed despite the bad records")
        # A cluster requested later is picked up too: the loop is alive, not just lucky.
        await store.create(ClusterRecord(name="edge-2", spec=spec("edge-2")))
        boot.wake("edge-2")
        await eventually(lambda: _is(phase_of(store, "edge-2"), "Managed"),
                         what="edge-2 Managed")
        await eventually(lambda: registry.get_sample_value(
            "outpost_gateway_unreadable_records") == 4, what="gauge of unreadable records")
        reasons = {u.name: u.reason for u in boot.unreadable.values()}
        assert set(reasons) == {*BAD, "copied"}
        for name, (_, why) in BAD.items():
            assert why in reasons[name], reasons
        assert "'elsewhere'" in reasons["copied"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Reported once per distinct problem, not on every poll.
    skips = [rec for rec in caplog.records if "skipping cluster record" in rec.getMessage()]
    assert len(skips) == 4, [s.getMessage() for s in skips]
    assert all("kubectl -n outpost-system delete configmap" in s.getMessage() for s in skips)
    assert registry.get_sample_value("outpost_gateway_unreadable_records_seen_total") == 4
    events = (await mgmt.list(r.EVENT, NS)).items
    flagged = {e["involvedObject"]["name"] for e in events if e["reason"] == "UnreadableRecord"}
    assert flagged == {f"outpost-cluster-{n}" for n in [*BAD, "copied"]}


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_a_repaired_record_is_picked_up(mgmt: KubeClient, tmp_path: Path) -> None:
    await put_bad_records(mgmt)
    registry = CollectorRegistry()
    boot = bootstrapper(mgmt, tmp_path, registry)
    task = asyncio.create_task(boot.run())
    try:
        await eventually(lambda: len(boot.unreadable) == 4, what="bad records seen")
        # Someone restores the truncated record from a backup.
        store = RecordStore(mgmt)
        good = store._to_obj(ClusterRecord(name="truncated", spec=spec("truncated")))
        await mgmt.apply(r.CONFIG_MAP, good, field_manager="backup", force=True)
        await eventually(lambda: _is(phase_of(store, "truncated"), "Managed"),
                         what="the repaired cluster Managed")
        await eventually(lambda: registry.get_sample_value(
            "outpost_gateway_unreadable_records") == 3, what="gauge down to 3")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_unexpected_error_in_one_cluster_does_not_stop_another(
        mgmt: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = RecordStore(mgmt)
    await store.create(ClusterRecord(name="bad", spec=spec("bad")))
    await store.create(ClusterRecord(name="good", spec=spec("good")))
    registry = CollectorRegistry()
    boot = bootstrapper(mgmt, tmp_path, registry, broken=frozenset({"bad"}))
    task = asyncio.create_task(boot.run())
    try:
        await eventually(lambda: _is(phase_of(store, "good"), "Managed"),
                         what="the healthy cluster Managed")

        async def error_saved() -> bool:
            rec = await store.get("bad")
            return rec is not None and "RuntimeError: surprise in bad" in (rec.last_error or "")

        await eventually(error_saved, what="the failing cluster's last error in its record")
        await eventually(lambda: boot.attempts.get("bad", 0) >= 3,
                         what="the failing cluster retried")
        assert not task.done()
        bad = await store.get("bad")
        assert bad is not None and bad.phase == "Requested"  # retried, not failed outright
        assert (registry.get_sample_value("outpost_gateway_bootstrap_step_errors_total",
                                          {"phase": "Requested", "error": "RuntimeError"})
                or 0) >= 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    tracebacks = [rec for rec in caplog.records
                  if "raised unexpectedly" in rec.getMessage() and rec.exc_info]
    assert tracebacks, "the unexpected error is logged with its traceback"


async def test_fleet_view_lists_unreadable_records_and_says_why(mgmt: KubeClient) -> None:
    await put_bad_records(mgmt)
    store = RecordStore(mgmt)
    await store.create(ClusterRecord(name="edge-1", spec=spec("edge-1")))
    deps = ApiDeps(records=store, statuses=lambda: {}, wake=lambda _: None, tokens={TOKEN},
                   registry=CollectorRegistry())
    async with TestClient(TestServer(make_app(deps))) as client:
        resp = await client.get("/v1/clusters", headers=AUTH)
        assert resp.status == 200, await resp.text()
        items = {i["name"]: i for i in (await resp.json())["items"]}
        assert items["edge-1"]["phase"] == "Requested"
        assert "unreadableReason" not in items["edge-1"]
        for name, (_, why) in BAD.items():
            assert items[name]["phase"] == "Unreadable"
            assert why in items[name]["unreadableReason"]
            assert f"outpost-cluster-{name}" in items[name]["unreadableReason"]
        assert items["copied"]["phase"] == "Unreadable"

        resp = await client.get("/v1/clusters/truncated", headers=AUTH)
        assert resp.status == 500
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        assert body["type"].endswith("/record-unreadable")
        assert "not valid JSON" in body["detail"] and "delete configmap" in body["detail"]
        # The same name cannot be requested again until the bad record is dealt with.
        resp = await client.post("/v1/clusters", headers=AUTH, json={
            "name": "truncated", "namespace": "fleet", "kubernetesVersion": "v1.35.2",
            "infrastructure": {"provider": "dev"},
            "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
            "sshAuthorizedKeys": [SSH]})
        assert resp.status == 409
        assert "unreadable" in (await resp.json())["detail"]
