"""The OutpostCluster controller on an emulated management cluster: one bad cluster never stops
the fleet, what cannot be worked says why in a condition, older ConfigMap records are adopted,
only the leader writes, and a converged fleet costs no writes. The bootstrap steps are
stand-ins (the real ones need CAPI and NATS; the end-to-end tests run those); the informers,
queue, workers, status and Events are the gateway's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from agent.kube import ApiKubeClient, Obj
from agent.kube import resources as r
from agent.spec import ClusterSpec
from mgmt_gateway.adopt import adopt_records
from mgmt_gateway.bootstrap import AgentInstall, Bootstrapper
from mgmt_gateway.clusters import API_VERSION, CLUSTER_PROFILE, FINALIZER, OUTPOST_CLUSTER
from mgmt_gateway.controller import ClusterController
from mgmt_gateway.events import EventRecorder
from mgmt_gateway.publish import SpecPublisher, StatusCollector, generate_signing_key
from mgmt_gateway.state import LABEL, ClusterRecord, RecordStore
from mgmt_gateway.store import OutpostClusters
from testbed.apiserver import ApiServer
from testbed.crds import gateway_crd_files
from tests.fixtures.site import eventually

SSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests ops@site"


def cluster(name: str, namespace: str = "fleet", **over: Any) -> Obj:
    spec: dict[str, Any] = {
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
        "sshAuthorizedKeys": [SSH]}
    spec.update(over)
    return {"apiVersion": API_VERSION, "kind": "OutpostCluster",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class FakeSteps(Bootstrapper):
    """Requested -> Managed in one stand-in step; `broken` clusters raise what no step
    expects."""

    def __init__(self, *args: Any, broken: frozenset[str] = frozenset(), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.broken = broken
        self.attempts: dict[str, int] = {}
        self.retired: list[str] = []

    async def advance(self, rec: ClusterRecord) -> ClusterRecord | None:
        self.may_write()
        self.attempts[rec.name] = self.attempts.get(rec.name, 0) + 1
        if rec.name in self.broken:
            raise RuntimeError(f"surprise in {rec.name}")
        if rec.phase == "Managed" and rec.published_revision >= rec.spec.revision:
            return None
        return await self.store.update(rec.advanced("Managed", "stand-in step").model_copy(
            update={"published_revision": rec.spec.revision}) if rec.phase != "Managed"
            else rec.model_copy(update={"published_revision": rec.spec.revision}))

    async def retire(self, name: str, namespace: str, *, pivoted: bool) -> bool:
        self.retired.append(name)
        return True


@dataclass
class Plane:
    kube: ApiKubeClient
    fleet: OutpostClusters
    steps: FakeSteps
    controller: ClusterController
    registry: CollectorRegistry
    leader: list[bool]

    async def status(self, name: str, namespace: str = "fleet") -> dict[str, Any]:
        obj = await self.kube.get(OUTPOST_CLUSTER, name, namespace)
        return dict(obj.get("status") or {})

    async def phase_is(self, name: str, phase: str, namespace: str = "fleet") -> bool:
        return (await self.status(name, namespace)).get("phase") == phase


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == type_), {})


async def make_plane(kubeconfig: Path, tmp_path: Path, broken: frozenset[str] = frozenset()
                     ) -> tuple[Plane, list[asyncio.Task[None]]]:
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    fleet = OutpostClusters(kube)
    registry = CollectorRegistry()
    publisher = SpecPublisher(lambda: None, generate_signing_key(tmp_path / "key.pem"))
    steps = FakeSteps(fleet, kube, publisher, components=[],
                      agent=AgentInstall(image="x", nats_servers=[], public_keys=[]),
                      broken=broken)
    leader = [True]
    controller = ClusterController(fleet, steps, StatusCollector(lambda: None),
                                   EventRecorder(kube), leading=lambda: leader[0], workers=2,
                                   poll=0.05, retry_max=0.3, registry=registry)
    tasks = [asyncio.create_task(fleet.clusters.run()), asyncio.create_task(fleet.profiles.run()),
             *(asyncio.create_task(controller.run_worker(beat_every=0.1)) for _ in range(2))]
    await fleet.synced()
    return Plane(kube, fleet, steps, controller, registry, leader), tasks


@pytest_asyncio.fixture
async def mgmt(api: ApiServer, kubeconfig: Path) -> AsyncIterator[ApiKubeClient]:
    await api.install_crds(gateway_crd_files())
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    for ns in ("fleet", "other", "outpost-system"):
        await kube.create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": ns}})
    try:
        yield kube
    finally:
        await kube.close()


@pytest_asyncio.fixture
async def plane(mgmt: ApiKubeClient, kubeconfig: Path, tmp_path: Path,
                request: pytest.FixtureRequest) -> AsyncIterator[Plane]:
    broken = frozenset(getattr(request, "param", ()))
    p, tasks = await make_plane(kubeconfig, tmp_path, broken)
    try:
        yield p
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await p.kube.close()


@pytest.mark.parametrize("plane", [("bad",)], indirect=True)
async def test_an_unexpected_error_in_one_cluster_does_not_stop_another(
        plane: Plane, caplog: pytest.LogCaptureFixture) -> None:
    await plane.kube.create(OUTPOST_CLUSTER, cluster("bad"))
    await plane.kube.create(OUTPOST_CLUSTER, cluster("good"))
    await eventually(lambda: plane.phase_is("good", "Managed"), what="good Managed")

    async def error_shown() -> bool:
        st = await plane.status("bad")
        ready = condition(st, "Ready")
        return ("RuntimeError: surprise in bad" in st.get("lastError", "")
                and ready.get("reason") == "StepFailing")

    await eventually(error_shown, what="the failing cluster's error in its status")
    await eventually(lambda: plane.steps.attempts.get("bad", 0) >= 3, what="retried")
    assert (plane.registry.get_sample_value("outpost_gateway_bootstrap_step_errors_total",
                                            {"phase": "Requested", "error": "RuntimeError"})
            or 0) >= 3
    events = (await plane.kube.list(r.EVENT, "fleet")).items
    warned = [e for e in events if e["involvedObject"]["name"] == "bad"
              and e["reason"] == "StepFailed"]
    assert len(warned) == 1, "one Warning per distinct error, not one per retry"
    assert any(e["involvedObject"]["name"] == "good" and e["reason"] == "Managed"
               for e in events)
    assert any("raised unexpectedly" in rec.getMessage() and rec.exc_info
               for rec in caplog.records)


async def test_what_cannot_be_worked_says_why_and_the_rest_proceeds(plane: Plane) -> None:
    # The API's schema cannot see the version skew; the controller can.
    skewed = cluster("skewed", workers=[{"name": "a", "replicas": 1, "version": "v1.36.0",
                                         "machine": {"provider": "dev"}}])
    await plane.kube.create(OUTPOST_CLUSTER, skewed)
    await plane.kube.create(OUTPOST_CLUSTER, cluster("profiled",
                                                     profile={"name": "base", "version": "1"}))
    await plane.kube.create(OUTPOST_CLUSTER, cluster("fine"))
    await plane.kube.create(OUTPOST_CLUSTER, cluster("fine", namespace="other"))
    await eventually(lambda: plane.phase_is("fine", "Managed"), what="fine Managed")

    async def refused(name: str, reason: str, namespace: str = "fleet") -> bool:
        c = condition(await plane.status(name, namespace), "SpecAccepted")
        return c.get("status") == "False" and c.get("reason") == reason

    await eventually(lambda: refused("skewed", "InvalidSpec"), what="skew refused")
    await eventually(lambda: refused("profiled", "ProfileNotFound"), what="no profile")
    await eventually(lambda: refused("fine", "NameInUse", "other"), what="duplicate name")
    st = await plane.status("skewed")
    assert "newer than the control plane" in condition(st, "SpecAccepted")["message"]
    assert "phase" not in st
    assert plane.registry.get_sample_value("outpost_gateway_invalid_clusters") == 3

    # Publishing the profile lets the cluster that names it go on.
    await plane.kube.create(CLUSTER_PROFILE, {
        "apiVersion": API_VERSION, "kind": "ClusterProfile",
        "metadata": {"name": "base-1", "namespace": "fleet"},
        "spec": {"name": "base", "version": "1", "addons": []}})
    await eventually(lambda: plane.phase_is("profiled", "Managed"), what="profiled Managed")
    # Fixing the spec does the same.
    obj = await plane.kube.get(OUTPOST_CLUSTER, "skewed", "fleet")
    obj["spec"]["workers"][0]["version"] = "v1.35.0"
    await plane.kube.replace(OUTPOST_CLUSTER, obj, field_manager="kubectl")
    await eventually(lambda: plane.phase_is("skewed", "Managed"), what="skewed Managed")
    await eventually(lambda: plane.registry.get_sample_value(
        "outpost_gateway_invalid_clusters") == 1, what="only the duplicate stays invalid")


async def test_revisions_follow_content_and_a_converged_fleet_costs_no_writes(
        plane: Plane) -> None:
    await plane.kube.create(OUTPOST_CLUSTER, cluster("edge-1"))
    await eventually(lambda: plane.phase_is("edge-1", "Managed"), what="Managed")
    st = await plane.status("edge-1")
    assert st["desiredRevision"] == 1 and st["publishedRevision"] == 1
    obj = await plane.kube.get(OUTPOST_CLUSTER, "edge-1", "fleet")
    assert FINALIZER in obj["metadata"]["finalizers"]
    assert st["observedGeneration"] == obj["metadata"]["generation"]

    # The same spec applied again (GitOps) is no new revision, and no write at all.
    await asyncio.sleep(0.3)
    before = sum(plane.kube.requests[v] for v in ("create", "apply", "patch", "replace"))
    await plane.kube.apply(OUTPOST_CLUSTER, cluster("edge-1"), field_manager="argocd")
    for key in list(plane.fleet.clusters.items):
        plane.controller.queue.add(key)
    await asyncio.sleep(0.5)
    after = sum(plane.kube.requests[v] for v in ("create", "apply", "patch", "replace"))
    assert after - before == 1, "only the test's own apply"
    assert (await plane.status("edge-1"))["desiredRevision"] == 1

    # A real change is revision 2, published once.
    changed = cluster("edge-1", workers=[{"name": "a", "replicas": 2,
                                          "machine": {"provider": "dev"}}])
    await plane.kube.apply(OUTPOST_CLUSTER, changed, field_manager="argocd")

    async def published_2() -> bool:
        s = await plane.status("edge-1")
        return s.get("desiredRevision") == 2 and s.get("publishedRevision") == 2

    await eventually(published_2, what="revision 2 published")
    events = (await plane.kube.list(r.EVENT, "fleet")).items
    assert [e["message"] for e in events if e["reason"] == "RevisionCreated"] == [
        "spec revision 2 is the desired state"]


async def test_only_the_leader_writes(plane: Plane) -> None:
    plane.leader[0] = False
    plane.controller.leadership_changed(False)
    await plane.kube.create(OUTPOST_CLUSTER, cluster("edge-1"))
    await asyncio.sleep(0.5)
    obj = await plane.kube.get(OUTPOST_CLUSTER, "edge-1", "fleet")
    assert not obj.get("status") and not obj["metadata"].get("finalizers")
    assert plane.steps.attempts == {}
    plane.leader[0] = True
    plane.controller.leadership_changed(True)
    await eventually(lambda: plane.phase_is("edge-1", "Managed"), what="Managed once leading")


async def test_deleting_the_resource_retires_the_cluster(plane: Plane) -> None:
    await plane.kube.create(OUTPOST_CLUSTER, cluster("edge-1"))
    await eventually(lambda: plane.phase_is("edge-1", "Managed"), what="Managed")
    await plane.kube.delete(OUTPOST_CLUSTER, "edge-1", "fleet")

    async def gone() -> bool:
        return not (await plane.kube.list(OUTPOST_CLUSTER, "fleet")).items

    await eventually(gone, what="the finalizer released once retired")
    assert plane.steps.retired == ["edge-1"]
    reasons = [e["reason"] for e in (await plane.kube.list(r.EVENT, "fleet")).items
               if e["involvedObject"]["name"] == "edge-1"]
    assert "Retiring" in reasons and "Retired" in reasons


def spec(name: str, revision: int = 3) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "clusterName": name, "revision": revision, "namespace": "fleet",
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
        "sshAuthorizedKeys": [SSH]})


async def test_configmap_records_of_an_older_gateway_are_adopted(mgmt: ApiKubeClient) -> None:
    store = RecordStore(mgmt, "outpost-system")
    rec = ClusterRecord(name="old-1", spec=spec("old-1"), published_revision=3,
                        published_kv_revision=7, pivot_journal=("create:a", "create:b"))
    rec = rec.advanced("CapiCreated").advanced("FirstControlPlaneReady").advanced(
        "AgentInstalled")
    await store.create(rec)
    await mgmt.create(r.SECRET, {"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "outpost-workload-old-1",
                                              "namespace": "outpost-system"},
                                 "data": {"value": "a3ViZWNvbmZpZw=="}})
    await mgmt.create(r.CONFIG_MAP, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "outpost-cluster-broken", "namespace": "outpost-system",
                     "labels": {LABEL: "broken"}},
        "data": {"record": json.dumps({"name": "broken"})[:10]}})

    assert await adopt_records(mgmt, "outpost-system", EventRecorder(mgmt)) == 1
    obj = await mgmt.get(OUTPOST_CLUSTER, "old-1", "fleet")
    st = obj["status"]
    assert st["phase"] == "AgentInstalled"
    assert st["desiredRevision"] == 3 and st["publishedRevision"] == 3
    assert st["publishedKvRevision"] == 7
    assert [s["phase"] for s in st["steps"]] == ["CapiCreated", "FirstControlPlaneReady",
                                                 "AgentInstalled"]
    journal = await mgmt.get(r.CONFIG_MAP, "outpost-pivot-old-1", "fleet")
    assert sorted(journal["data"].values()) == ["create:a", "create:b"]
    copy = await mgmt.get(r.SECRET, "outpost-kubeconfig-old-1", "fleet")
    assert copy["data"]["value"] == "a3ViZWNvbmZpZw=="
    left = [c["metadata"]["name"] for c in (await mgmt.list(
        r.CONFIG_MAP, "outpost-system", label_selector=LABEL)).items]
    assert left == ["outpost-cluster-broken"], "only the unreadable record stays"
    warned = [e for e in (await mgmt.list(r.EVENT, "outpost-system")).items
              if e["reason"] == "UnreadableRecord"]
    assert [e["involvedObject"]["name"] for e in warned] == ["outpost-cluster-broken"]
    # Adopted as it was: the controller computes the same hash, so no new revision.
    fleet = OutpostClusters(mgmt)
    found = fleet.desired(obj)
    assert not isinstance(found, type(None))
    assert isinstance(found, tuple) and found[0].revision == 3


async def test_an_upgrade_with_a_gap_or_a_downgrade_is_refused_and_the_last_spec_stays(
        plane: Plane) -> None:
    await plane.kube.create(OUTPOST_CLUSTER, cluster("edge-1"))
    await eventually(lambda: plane.phase_is("edge-1", "Managed"), what="Managed")
    assert (await plane.status("edge-1"))["kubernetesVersion"] == "v1.35.2"

    async def refused(reason: str) -> str | None:
        c = condition(await plane.status("edge-1"), "SpecAccepted")
        return c["message"] if c.get("status") == "False" and c.get("reason") == reason else None

    # v1.35 -> v1.38 with only v1.36 named: v1.37 is missing.
    await plane.kube.apply(OUTPOST_CLUSTER, cluster("edge-1", kubernetesVersion="v1.38.1",
                                                    upgrade={"path": ["v1.36.4"]}),
                           field_manager="kubectl", force=True)
    msg = await eventually(lambda: refused("UpgradePathGap"), what="the gap refused")
    assert "goes through v1.37" in msg and "spec.upgrade.path names no v1.37 release" in msg
    st = await plane.status("edge-1")
    assert st["desiredRevision"] == 1 and st["kubernetesVersion"] == "v1.35.2"
    # A downgrade likewise.
    await plane.kube.apply(OUTPOST_CLUSTER, cluster("edge-1", kubernetesVersion="v1.34.9"),
                           field_manager="kubectl", force=True)
    msg = await eventually(lambda: refused("UpgradeRefused"), what="the downgrade refused")
    assert "cannot be downgraded" in msg and "set v1.35.2 or newer" in msg
    # With the missing stop named, the upgrade is revision 2.
    await plane.kube.apply(OUTPOST_CLUSTER, cluster(
        "edge-1", kubernetesVersion="v1.38.1", upgrade={"path": ["v1.36.4", "v1.37.2"]}),
        field_manager="kubectl", force=True)

    async def accepted() -> bool:
        st = await plane.status("edge-1")
        return st.get("desiredRevision") == 2 and st.get("kubernetesVersion") == "v1.38.1"
    await eventually(accepted, what="the upgrade accepted as revision 2")
