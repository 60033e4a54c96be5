"""The custom resources of the management plane, and how they map to the gateway's records.

An `OutpostCluster` holds what a platform team asks for (spec, written by people and GitOps)
and what the gateway and the agent report (status, written by the gateway only, through the
`/status` subresource). A `ClusterProfile` is a named, versioned, immutable set of add-ons
that clusters refer to. Everything here is pure: parsing objects and building status.

The desired revision counts distinct desired specs, not edits: the gateway gives a spec a new
revision only when its content (the profile it resolves to included) differs from the one
`status.specHash` names, so re-applying the same YAML publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, ValidationError

from agent.kube import Obj, Resource
from agent.spec import ClusterSpec, Condition, StatusReport, explain
from agent.spec.addons import ClusterProfile
from agent.spec.base import Model, Namespace
from agent.spec.maintenance import Approval, MaintenancePolicy
from agent.spec.models import (
    CertificatePolicy,
    ClusterName,
    ControlPlane,
    Infrastructure,
    KubeVersion,
    SshKey,
    UpgradePolicy,
    WorkerPool,
    path_gap,
    version_problem,
    version_tuple,
)

from .profiles import NotRendered, Profile, RenderContext, profile_of
from .render.addons import RenderError
from .state import ClusterRecord, Phase, StepRecord

GROUP = "outpost.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
OUTPOST_CLUSTER = Resource(GROUP, VERSION, "outpostclusters", "OutpostCluster")
CLUSTER_PROFILE = Resource(GROUP, VERSION, "clusterprofiles", "ClusterProfile")
FINALIZER = "outpost.io/retire"
MANAGER = "outpost-gateway"
PHASES: frozenset[str] = frozenset(Phase.__args__)  # type: ignore[attr-defined]


class ProfileRef(Model):
    """Which ClusterProfile (in the cluster's namespace) the agent installs."""

    name: str = Field(min_length=1, max_length=63)
    version: str = Field(min_length=1, max_length=64)
    values: dict[str, Any] = Field(
        default_factory=dict, description="per-cluster values for the profile's add-ons")


class OutpostClusterSpec(Model):
    """`OutpostCluster.spec`: the desired cluster. The CRD's OpenAPI schema and CEL rules
    validate the same on the API server; this model is the authority (the ClusterSpec rules
    that span fields, e.g. the worker version skew, only run here)."""

    kubernetes_version: KubeVersion
    infrastructure: Infrastructure
    control_plane: ControlPlane
    workers: tuple[WorkerPool, ...] = ()
    profile: ProfileRef | None = None
    certificates: CertificatePolicy = CertificatePolicy()
    ssh_authorized_keys: tuple[SshKey, ...] = ()
    upgrade: UpgradePolicy | None = None
    maintenance: MaintenancePolicy | None = None
    approvals: tuple[Approval, ...] | None = None

    def to_spec(self, name: str, namespace: str, revision: int,
                profile: ClusterProfile | None) -> ClusterSpec:
        """The signed contract at `revision`; raises ValidationError on a cross-field rule."""
        fields = self.model_dump(by_alias=True, mode="json",
                                 include=set(OutpostClusterSpec.model_fields) - {"profile"})
        if profile is not None:
            fields["profile"] = profile.model_dump(by_alias=True, mode="json")
        return ClusterSpec.model_validate(
            {**fields, "clusterName": name, "namespace": namespace, "revision": revision})


class ClusterRequest(OutpostClusterSpec):
    """What the REST façade accepts to create a cluster: an OutpostCluster's spec plus the
    name and namespace of the resource it becomes."""

    name: ClusterName = Field(description="DNS label of at most 40 characters; the cluster's "
                              "key in NATS and the stem of its Cluster API object names")
    namespace: Namespace = Field(
        default="default", description="namespace of the OutpostCluster and of its Cluster API "
                                       "objects")

    def body(self) -> Obj:
        spec = self.model_dump(by_alias=True, exclude={"name", "namespace"}, mode="json",
                               exclude_defaults=True)
        return cluster_object(self.name, self.namespace, spec)


def cluster_object(name: str, namespace: str, spec: Mapping[str, Any]) -> Obj:
    return {"apiVersion": API_VERSION, "kind": "OutpostCluster",
            "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}


def spec_hash(spec: ClusterSpec) -> str:
    """Digest of the desired content, revision excluded: equal specs get equal hashes."""
    body = spec.model_dump(by_alias=True, mode="json", exclude={"revision"})
    # Fields added later hash as before while unset, so an upgraded gateway does not see every
    # cluster as changed (and republish the fleet).
    for key in ("upgrade", "maintenance", "approvals"):
        if body.get(key) is None:
            body.pop(key, None)
    for pool in body.get("workers") or ():
        if pool.get("rollout") is None:
            pool.pop("rollout", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()[:16]


@dataclass(frozen=True)
class Invalid:
    """Why an OutpostCluster cannot be worked now (the reason is a condition reason)."""

    reason: str
    message: str


def desired(obj: Obj, profiles: Sequence[Obj],
            render: Callable[[Obj, RenderContext], Profile] | None = None,
            ) -> tuple[ClusterSpec, str] | Invalid:
    """The desired ClusterSpec of an OutpostCluster (at its current or next revision) and its
    hash, or why there is none. `profiles` are the ClusterProfiles of its namespace; `render`
    turns one into the spec's add-ons (the store caches it: profiles are immutable)."""
    meta = obj.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    status = obj.get("status") or {}
    try:
        body = OutpostClusterSpec.model_validate(obj.get("spec") or {})
    except ValidationError as e:
        return Invalid("InvalidSpec", f"spec is invalid: {explain(e)}. Fix the resource; the "
                                      "last published revision stays in force meanwhile")
    profile: ClusterProfile | None = None
    if body.profile is not None:
        ref = body.profile
        found = [p for p in profiles if (p.get("spec") or {}).get("name") == ref.name
                 and str((p.get("spec") or {}).get("version")) == ref.version]
        if not found:
            return Invalid("ProfileNotFound",
                           f"no ClusterProfile in namespace {namespace} has name {ref.name!r} "
                           f"and version {ref.version!r}: create it (kubectl get "
                           f"clusterprofiles -n {namespace} lists those there)")
        if len(found) > 1:
            names = ", ".join(sorted(p["metadata"]["name"] for p in found))
            return Invalid("ProfileAmbiguous", f"several ClusterProfiles are {ref.name} "
                                               f"{ref.version} ({names}): delete all but one")
        ctx = RenderContext(body.kubernetes_version, ref.values)
        try:
            profile = (render(found[0], ctx) if render is not None
                       else profile_of(found[0], ctx)).spec
        except ValidationError as e:
            return Invalid("InvalidProfile", f"ClusterProfile {found[0]['metadata']['name']} "
                                             f"is invalid: {explain(e)}")
        except RenderError as e:
            return Invalid("InvalidProfile", f"ClusterProfile {found[0]['metadata']['name']} "
                                             f"cannot be rendered: {e}")
        except NotRendered as e:
            return Invalid("Rendering", f"add-on {e} of ClusterProfile "
                                        f"{found[0]['metadata']['name']} is being fetched and "
                                        "rendered")
    refused = upgrade_refused(status.get("kubernetesVersion"), body.kubernetes_version,
                              body.upgrade)
    if refused is not None:
        return refused
    current = int(status.get("desiredRevision") or 0)
    try:
        trial = body.to_spec(name, namespace, max(current, 1), profile)
    except ValidationError as e:
        return Invalid("InvalidSpec", f"spec is invalid: {explain(e)}. Fix the resource; the "
                                      "last published revision stays in force meanwhile")
    digest = spec_hash(trial)
    if digest != status.get("specHash") or current == 0:
        trial = trial.model_copy(update={"revision": current + 1})
    return trial, digest


def upgrade_refused(previous: object, version: str, policy: UpgradePolicy | None
                    ) -> Invalid | None:
    """Why moving the desired Kubernetes version from `previous` (the last accepted one) to
    `version` cannot be done, if it cannot: a downgrade, or a path with a gap."""
    if not isinstance(previous, str) or version_problem(previous) or previous == version:
        return None
    if version_tuple(version) < version_tuple(previous):
        return Invalid("UpgradeRefused", f"kubernetesVersion {version} is older than "
                                         f"{previous}: a control plane cannot be downgraded "
                                         f"(etcd and stored API versions only move forward); "
                                         f"set {previous} or newer")
    gap = path_gap(previous, version, (policy or UpgradePolicy()).path)
    if gap is not None:
        return Invalid("UpgradePathGap", f"the upgrade from {previous} to {version} goes "
                                         f"through {gap} (kubeadm upgrades one minor at a time), "
                                         f"but spec.upgrade.path names no {gap} release: add "
                                         f"the tested {gap}.<patch> release to stop at")
    return None


# -- status ---------------------------------------------------------------------------------
def _time(t: datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339), or None when absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def record_of(obj: Obj, spec: ClusterSpec) -> ClusterRecord:
    """The gateway's working record of an OutpostCluster whose desired spec is `spec`."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    phase: Phase = status["phase"] if status.get("phase") in PHASES else "Requested"
    if meta.get("deletionTimestamp"):
        phase = "Deleting"  # deleted: whatever the controller has written so far
    steps = []
    for s in status.get("steps") or ():
        started = parse_time(s.get("startedAt"))
        if started is not None and s.get("phase") in PHASES:
            steps.append(StepRecord(phase=s["phase"], started_at=started,
                                    finished_at=parse_time(s.get("finishedAt")),
                                    detail=str(s.get("detail") or "")))
    created = parse_time(meta.get("creationTimestamp"))
    return ClusterRecord(
        name=str(meta.get("name")), phase=phase, spec=spec,
        published_revision=int(status.get("publishedRevision") or 0),
        published_kv_revision=int(status.get("publishedKvRevision") or 0),
        failed_reason=status.get("failedReason") or None,
        last_error=status.get("lastError") or None, steps=tuple(steps),
        created_at=created or datetime.now(UTC),
        resource_version=str(meta.get("resourceVersion", "")))


@dataclass(frozen=True)
class AgentView:
    """What the cluster's agent last reported, as the status shows it."""

    report: StatusReport
    last_seen: datetime
    connected: bool


def condition(type_: str, ok: bool, reason: str, message: str, generation: int,
              previous: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """A metav1.Condition that keeps its transition time while its status holds."""
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    since = (before.get("lastTransitionTime") if before and before.get("status") == status
             else _time(now))
    return {"type": type_, "status": status, "reason": reason, "message": message[:32768],
            "lastTransitionTime": since, "observedGeneration": generation}


_WHAT_NEXT: dict[str, str] = {
    "Requested": "creating the Cluster API objects",
    "CapiCreated": "waiting for Cluster API to initialize the first control-plane node",
    "FirstControlPlaneReady": "installing the agent and the Cluster API controllers",
    "AgentInstalled": "moving the Cluster API objects into the cluster (pivot)",
    "Pivoted": "publishing the signed spec to the agent",
    "Deleting": "retiring the cluster",
}


def status_of(rec: ClusterRecord | None, obj: Obj, *, spec_digest: str | None,
              invalid: Invalid | None, agent: AgentView | None, now: datetime,
              pivot_journal: str | None = None) -> dict[str, Any]:
    """The whole status the gateway writes for an OutpostCluster: the record's progress, the
    agent's last report, and conditions saying what holds and what to do."""
    meta = obj.get("metadata") or {}
    old = dict(obj.get("status") or {})
    generation = int(meta.get("generation") or 0)
    previous = old.get("conditions") or []
    out: dict[str, Any] = {k: v for k, v in old.items() if k in (
        "phase", "desiredRevision", "specHash", "kubernetesVersion", "publishedRevision",
        "publishedKvRevision", "steps", "pivot", "failedReason", "lastError")}
    if rec is not None:
        out.update({
            "phase": rec.phase, "desiredRevision": rec.spec.revision,
            "kubernetesVersion": rec.spec.kubernetes_version,
            "publishedRevision": rec.published_revision,
            "publishedKvRevision": rec.published_kv_revision,
            "steps": [{k: v for k, v in {
                "phase": s.phase, "startedAt": _time(s.started_at),
                "finishedAt": _time(s.finished_at),
                "durationSeconds": round((s.finished_at - s.started_at).total_seconds(), 3)
                if s.finished_at else None, "detail": s.detail or None}.items()
                if v is not None} for s in rec.steps]})
        for key, value in (("failedReason", rec.failed_reason), ("lastError", rec.last_error)):
            if value:
                out[key] = value
            else:
                out.pop(key, None)
    if spec_digest is not None:
        out["specHash"] = spec_digest
    if pivot_journal is not None:
        out.setdefault("pivot", {})
        out["pivot"] = {**out["pivot"], "journal": pivot_journal}
    out["observedGeneration"] = generation
    phase = out.get("phase", "Requested")
    conditions: list[dict[str, Any]] = []
    if invalid is not None:
        conditions.append(condition("SpecAccepted", False, invalid.reason, invalid.message,
                                    generation, previous, now))
    else:
        conditions.append(condition("SpecAccepted", True, "Accepted",
                                    f"revision {out.get('desiredRevision', 0)} is the desired "
                                    "spec", generation, previous, now))
    if phase == "Failed":
        conditions.append(condition(
            "Ready", False, "BootstrapFailed",
            f"{out.get('failedReason')}. Fix the cause, then delete and re-create the "
            "OutpostCluster (its Cluster API objects are in its namespace)",
            generation, previous, now))
    elif phase == "Managed":
        in_sync = agent is not None and agent.report.applied_revision == out.get(
            "desiredRevision")
        if in_sync:
            conditions.append(condition("Ready", True, "Converged", "the agent reports the "
                                        "desired revision applied", generation, previous, now))
        else:
            conditions.append(condition(
                "Ready", False, "WaitingForAgent",
                f"revision {out.get('desiredRevision')} is published; the agent reports "
                f"{agent.report.applied_revision if agent else 'nothing yet'} applied "
                "(it applies once connected)", generation, previous, now))
    else:
        why = out.get("lastError")
        message = _WHAT_NEXT.get(str(phase), str(phase))
        conditions.append(condition(
            "Ready", False, "StepFailing" if why else "Bootstrapping",
            f"{message}; the last attempt failed: {why} (retrying with backoff)" if why
            else message, generation, previous, now))
    if agent is not None:
        report = agent.report
        out.update({"appliedRevision": report.applied_revision,
                    "observedRevision": report.observed_revision,
                    "connected": agent.connected, "lastSeen": _time(agent.last_seen),
                    "agentVersion": report.agent_version, "agentPhase": report.phase})
        if report.addons:
            out["addons"] = [{k: v for k, v in {
                "name": a.name, "version": a.version, "digest": a.digest, "phase": a.phase,
                "objects": a.objects, "message": a.message or None,
                "lastError": a.last_error}.items() if v is not None} for a in report.addons]
        else:
            out.pop("addons", None)
        if report.certificates:
            out["certificates"] = {
                "expiresAt": _time(report.certificates[0].expires_at),
                "machines": [{"machine": m.machine, "expiresAt": _time(m.expires_at)}
                             for m in report.certificates]}
        for c in report.conditions:
            if c.type in ("Ready", "SpecAccepted"):
                continue
            conditions.append(_agent_condition(c, generation))
    else:
        for key in ("appliedRevision", "observedRevision", "lastSeen", "agentVersion",
                    "agentPhase", "addons", "certificates"):
            if key in old:
                out[key] = old[key]
        out["connected"] = False
    out["conditions"] = conditions
    return out


def _agent_condition(c: Condition, generation: int) -> dict[str, Any]:
    return {"type": c.type, "status": c.status, "reason": c.reason or "Reported",
            "message": c.message, "lastTransitionTime": _time(c.last_transition_time),
            "observedGeneration": generation}


def same_status(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether writing `b` over `a` would change anything (no write when it would not)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                     default=str)
