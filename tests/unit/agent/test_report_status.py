"""Table tests of compute_status: phase, conditions and replica counts from plain CAPI dicts."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.report.status import CONDITION_TYPES, MAX_ERROR_CHARS, compute_status
from agent.spec import ClusterSpec, PoolStatus, ReplicaStatus, StatusReport

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
V = "v1.35.2"


def make_spec(revision: int = 2, **over: Any) -> ClusterSpec:
    base: dict[str, Any] = {
        "clusterName": "edge", "revision": revision, "kubernetesVersion": V,
        "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 3, "machine": {"provider": "dev"}},
        "workers": [{"name": "a", "replicas": 2, "machine": {"provider": "dev"}}],
    }
    base.update(over)
    return ClusterSpec.model_validate(base)


def kcp(replicas: int = 3, version: str = V, *, ready: int | None = None,
        up: int | None = None, observed: str | None = None, total: int | None = None,
        generation: int = 4, observed_generation: int = 4) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": observed_generation,
        "readyReplicas": replicas if ready is None else ready,
        "upToDateReplicas": replicas if up is None else up,
        "version": observed or version,
    }
    if total is not None:
        status["replicas"] = total
    return {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2",
            "kind": "KubeadmControlPlane",
            "metadata": {"name": "edge", "namespace": "default", "generation": generation},
            "spec": {"replicas": replicas, "version": version}, "status": status}


def md(pool: str = "a", replicas: int = 2, version: str = V, *, ready: int | None = None,
       up: int | None = None, labelled: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"edge-{pool}", "namespace": "default", "generation": 1}
    if labelled:
        meta["labels"] = {"outpost.io/pool": pool, "cluster.x-k8s.io/cluster-name": "edge"}
    return {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
            "metadata": meta,
            "spec": {"clusterName": "edge", "replicas": replicas,
                     "template": {"spec": {"version": version}}},
            "status": {"observedGeneration": 1,
                       "readyReplicas": replicas if ready is None else ready,
                       "upToDateReplicas": replicas if up is None else up}}


def with_deletion(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["deletionTimestamp"] = "2030-06-01T11:00:00Z"
    return obj


def report(**over: Any) -> StatusReport:
    args: dict[str, Any] = {
        "cluster": "edge", "spec": make_spec(), "observed_revision": 2, "applied_revision": 2,
        "control_plane": kcp(), "machine_deployments": [md()], "connected": True,
        "agent_version": "0.1.0", "now": NOW,
    }
    args.update(over)
    return compute_status(**args)


def conds(r: StatusReport) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in r.conditions}


@dataclass
class Case:
    id: str
    over: dict[str, Any]
    phase: str
    expect: dict[str, tuple[str, str]] = field(default_factory=dict)


CASES = [
    Case("converged", {}, "Converged", {
        "Ready": ("True", "Converged"), "SpecAccepted": ("True", "Accepted"),
        "SpecApplied": ("True", "Applied"), "ControlPlaneReady": ("True", "Ready"),
        "WorkersReady": ("True", "Ready"), "Reconciled": ("True", "NoError"),
        "Connected": ("True", "Connected")}),
    Case("no spec, nothing observed",
         {"spec": None, "observed_revision": 0, "applied_revision": 0, "control_plane": None,
          "machine_deployments": []},
         "Pending", {"Ready": ("False", "Pending"), "SpecAccepted": ("Unknown", "NoSpec"),
                     "SpecApplied": ("Unknown", "NoSpec"),
                     "ControlPlaneReady": ("Unknown", "NoSpec"),
                     "WorkersReady": ("Unknown", "NoSpec")}),
    Case("no spec, cluster already there", {"spec": None, "observed_revision": 0,
                                            "applied_revision": 0},
         "Pending", {"ControlPlaneReady": ("True", "Ready"), "WorkersReady": ("True", "Ready")}),
    Case("revision being applied", {"applied_revision": 1}, "Applying",
         {"Ready": ("False", "Applying"), "SpecApplied": ("False", "Applying")}),
    Case("newer revision received, not yet taken", {"observed_revision": 3}, "Applying",
         {"SpecApplied": ("False", "Applying"), "SpecAccepted": ("True", "Accepted")}),
    Case("control plane scaling up", {"control_plane": kcp(ready=2, up=2)}, "Applying",
         {"ControlPlaneReady": ("False", "RollingOut")}),
    Case("control plane machines not ready", {"control_plane": kcp(ready=2)}, "Applying",
         {"ControlPlaneReady": ("False", "WaitingForReplicas")}),
    Case("control plane still at the old version", {"control_plane": kcp(observed="v1.34.4")},
         "Applying", {"ControlPlaneReady": ("False", "Upgrading")}),
    Case("KCP not yet updated to the spec", {"control_plane": kcp(replicas=1)}, "Applying",
         {"ControlPlaneReady": ("False", "SpecNotApplied")}),
    Case("KCP version not yet updated", {"control_plane": kcp(version="v1.34.4")}, "Applying",
         {"ControlPlaneReady": ("False", "SpecNotApplied")}),
    Case("KCP status stale", {"control_plane": kcp(observed_generation=3)}, "Applying",
         {"ControlPlaneReady": ("False", "Reconciling")}),
    Case("surplus control plane machine", {"control_plane": kcp(total=4)}, "Applying",
         {"ControlPlaneReady": ("False", "ScalingDown")}),
    Case("KCP being deleted", {"control_plane": with_deletion(kcp())}, "Applying",
         {"ControlPlaneReady": ("False", "Deleting")}),
    Case("KCP missing", {"control_plane": None}, "Applying",
         {"ControlPlaneReady": ("False", "NotFound")}),
    Case("MachineDeployment missing", {"machine_deployments": []}, "Applying",
         {"WorkersReady": ("False", "PoolsNotReady"), "ControlPlaneReady": ("True", "Ready")}),
    Case("pool rolling out", {"machine_deployments": [md(up=1)]}, "Applying",
         {"WorkersReady": ("False", "PoolsNotReady")}),
    Case("pool at the wrong version", {"machine_deployments": [md(version="v1.34.4")]},
         "Applying", {"WorkersReady": ("False", "PoolsNotReady")}),
    Case("unlabelled MachineDeployment found by name",
         {"machine_deployments": [md(labelled=False)]}, "Converged",
         {"WorkersReady": ("True", "Ready")}),
    Case("pool removed from the spec but still there",
         {"machine_deployments": [md(), md("b", 1)]}, "Applying",
         {"WorkersReady": ("False", "PoolsNotReady")}),
    Case("unrelated unlabelled MachineDeployment ignored",
         {"machine_deployments": [md(), md("zz", 1, labelled=False)]}, "Converged"),
    Case("no worker pools", {"spec": make_spec(workers=[]), "machine_deployments": []},
         "Converged", {"WorkersReady": ("True", "NoWorkers")}),
    Case("pool with its own older version",
         {"spec": make_spec(workers=[{"name": "a", "replicas": 2, "version": "v1.34.4",
                                      "machine": {"provider": "dev"}}]),
          "machine_deployments": [md(version="v1.34.4")]},
         "Converged"),
    Case("last error", {"last_error": "kube API unreachable"}, "Degraded",
         {"Ready": ("False", "Degraded"), "Reconciled": ("False", "Error")}),
    Case("newest revision rejected",
         {"observed_revision": 3, "rejected_revision": 3, "rejection": "bad signature"},
         "Degraded", {"SpecAccepted": ("False", "SpecRejected"),
                      "SpecApplied": ("True", "Applied"), "Reconciled": ("True", "NoError")}),
    Case("rejected revision higher than the observed one",
         {"rejected_revision": 5, "rejection": "bad signature"}, "Degraded",
         {"SpecAccepted": ("False", "SpecRejected")}),
    Case("older rejection superseded", {"rejected_revision": 1, "rejection": "bad"},
         "Converged", {"SpecAccepted": ("True", "Accepted")}),
    Case("rejection before any spec",
         {"spec": None, "observed_revision": 1, "applied_revision": 0, "rejected_revision": 1,
          "rejection": "schema", "control_plane": None, "machine_deployments": []},
         "Degraded", {"SpecAccepted": ("False", "SpecRejected")}),
    Case("disconnected", {"connected": False}, "Converged",
         {"Connected": ("False", "Disconnected")}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_phase_and_conditions(case: Case) -> None:
    r = report(**case.over)
    assert r.phase == case.phase
    assert [c.type for c in r.conditions] == list(CONDITION_TYPES)
    got = conds(r)
    for ctype, want in case.expect.items():
        assert got[ctype] == want, ctype
    assert got["Ready"][0] == ("True" if case.phase == "Converged" else "False")
    assert all(c.last_transition_time == NOW for c in r.conditions)
    assert r.reported_at == NOW


def test_replica_counts_are_reported() -> None:
    r = report(control_plane=kcp(ready=2, up=1, observed="v1.34.4"),
               machine_deployments=[md(ready=1, up=0), md("b", 3)])
    assert r.control_plane == ReplicaStatus(desired=3, ready=2, up_to_date=1, version="v1.34.4")
    assert r.workers == (PoolStatus(name="a", desired=2, ready=1, up_to_date=0, version=V),
                         PoolStatus(name="b", desired=0, ready=3, up_to_date=3, version=V))


def test_missing_objects_report_desired_with_nothing_ready() -> None:
    r = report(control_plane=None, machine_deployments=[])
    assert r.control_plane == ReplicaStatus(desired=3)
    assert r.workers == (PoolStatus(name="a", desired=2),)
    assert "edge-a not found" in conds_msg(r, "WorkersReady")


def test_half_created_objects_are_read_defensively() -> None:
    bare_kcp = {"metadata": {"name": "edge"}, "spec": {"replicas": 3, "version": V},
                "status": {"readyReplicas": None, "upToDateReplicas": "3"}}
    r = report(control_plane=bare_kcp, machine_deployments=[{"metadata": {"name": "edge-a"}}])
    assert r.phase == "Applying"
    assert r.control_plane == ReplicaStatus(desired=3, ready=0, up_to_date=0, version=None)
    assert r.workers[0].ready == 0


def test_no_spec_reports_what_is_observed() -> None:
    r = report(spec=None, observed_revision=0, applied_revision=0,
               control_plane=kcp(replicas=1), machine_deployments=[md("b", 4, ready=2)])
    assert r.phase == "Pending"
    assert r.control_plane == ReplicaStatus(desired=1, ready=1, up_to_date=1, version=V)
    assert r.workers == (PoolStatus(name="b", desired=4, ready=2, up_to_date=4, version=V),)


def test_observed_revision_is_never_below_the_spec() -> None:
    assert report(observed_revision=0).observed_revision == 2


def conds_msg(r: StatusReport, ctype: str) -> str:
    return next(c.message for c in r.conditions if c.type == ctype)


def test_transition_time_kept_while_the_status_does_not_change() -> None:
    first = report(now=EARLIER, control_plane=kcp(ready=2))
    assert first.phase == "Applying"
    second = report(previous=first)  # control plane became ready
    times = {c.type: c.last_transition_time for c in second.conditions}
    assert times["ControlPlaneReady"] == NOW
    assert times["Ready"] == NOW
    assert times["SpecAccepted"] == EARLIER
    assert times["Connected"] == EARLIER
    third = report(previous=second, now=NOW + timedelta(minutes=5), connected=False)
    times = {c.type: c.last_transition_time for c in third.conditions}
    assert times["Connected"] == NOW + timedelta(minutes=5)
    assert times["ControlPlaneReady"] == NOW


def test_long_texts_are_cut() -> None:
    r = report(last_error="e" * 10_000, rejected_revision=3, rejection="r" * 10_000)
    assert r.last_error is not None and len(r.last_error) == MAX_ERROR_CHARS
    assert all(len(c.message) <= 1024 for c in r.conditions)
    assert r.phase == "Degraded"


def test_certificate_expiry_within_the_policy_is_a_warning_condition() -> None:
    spec = make_spec(certificates={"rotateBeforeDays": 30})
    soon = [("edge-cp-b", NOW + timedelta(days=12)), ("edge-cp-a", NOW + timedelta(days=200))]

    def report(certs: list[tuple[str, datetime]]) -> StatusReport:
        return compute_status("edge", spec, observed_revision=2, applied_revision=2,
                              control_plane=kcp(), machine_deployments=[md()], connected=True,
                              agent_version="t", now=NOW, certificates=certs)

    st = report(soon)
    assert st.certificates is not None
    assert [(c.machine, c.expires_at) for c in st.certificates] == soon
    c = next(c for c in st.conditions if c.type == "CertificatesExpiring")
    assert (c.status, c.reason) == ("True", "WithinRotationPolicy")
    assert "edge-cp-b's certificates expire 2030-06-13 12:00 UTC (in 12d), within " \
           "rotateBeforeDays 30" in c.message and "outpostctl rotate-certs" in c.message
    later = report([("edge-cp-a", NOW + timedelta(days=200))])
    c = next(c for c in later.conditions if c.type == "CertificatesExpiring")
    assert (c.status, c.reason) == ("False", "NotExpiring")
    none = report([])
    assert none.certificates is None
    assert all(c.type != "CertificatesExpiring" for c in none.conditions)
    # Left out of the wire form when unknown: a gateway that predates it reads the report.
    assert "certificates" not in none.model_dump(by_alias=True, exclude_none=True)
