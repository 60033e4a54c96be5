"""compute_status: the StatusReport for one cluster, from what the agent wants and observes.

Pure (no I/O, no clock): the caller passes the objects as the Kubernetes API returned them and
``now``, so every phase and condition can be table-tested. The Cluster API objects are read
defensively (missing or mistyped fields count as zero / unknown) because a half-created object
is the normal state during provisioning.

Phases, first match wins:

* ``Degraded``: the agent has a last error, or the newest revision it received was rejected;
* ``Pending``: no spec yet;
* ``Applying``: the desired revision is not the applied one, or the control plane or a worker
  pool is not yet at the desired replicas, ready and up to date at the desired version (pools
  that left the spec but still have a MachineDeployment count as not there yet);
* ``Converged``: otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from agent.plan.types import dig
from agent.spec.models import ClusterSpec
from agent.spec.status import (
    AddonStatus,
    Condition,
    MachineCertificates,
    Phase,
    PoolStatus,
    ReplicaStatus,
    StatusReport,
)

__all__ = [
    "CONDITION_TYPES",
    "MAX_ERROR_CHARS",
    "MAX_MESSAGE_CHARS",
    "POOL_LABEL",
    "compute_status",
    "note_conditions",
]

POOL_LABEL: Final = "outpost.io/pool"
MAX_MESSAGE_CHARS: Final = 1024
MAX_ERROR_CHARS: Final = 4096
"""Status is one bounded outbox record and one KV value: long texts are cut, not refused."""

CONDITION_TYPES: Final = ("Ready", "SpecAccepted", "SpecApplied", "ControlPlaneReady",
                          "WorkersReady", "AddonsReady", "Reconciled", "Connected")

CondStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class _Verdict:
    status: CondStatus
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "True"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _opt_count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _rollout(kind: str, obj: Mapping[str, Any], *, desired: int, version: str | None,
             spec_replicas: int | None, spec_version: str | None, observed_version: str | None,
             ready: int, up_to_date: int) -> _Verdict:
    """Why a KCP or MachineDeployment is not yet where the spec wants it (or that it is)."""
    name = dig(obj, "metadata", "name") or kind
    if dig(obj, "metadata", "deletionTimestamp"):
        return _Verdict("False", "Deleting", f"{kind} {name} is being deleted")
    if spec_replicas != desired:
        return _Verdict("False", "SpecNotApplied",
                        f"{kind} {name} asks for {spec_replicas} replicas, the spec for {desired}")
    if version is not None and spec_version != version:
        return _Verdict("False", "SpecNotApplied",
                        f"{kind} {name} is set to {spec_version}, the spec to {version}")
    generation = _opt_count(dig(obj, "metadata", "generation"))
    observed = _opt_count(dig(obj, "status", "observedGeneration"))
    if generation is not None and observed is not None and observed < generation:
        return _Verdict("False", "Reconciling",
                        f"{kind} {name}: the controller has not yet seen the latest change")
    if version is not None and observed_version is not None and observed_version != version:
        return _Verdict("False", "Upgrading",
                        f"{kind} {name} runs {observed_version}, rolling to {version}")
    if up_to_date < desired:
        return _Verdict("False", "RollingOut",
                        f"{kind} {name}: {up_to_date} of {desired} replicas up to date")
    if ready < desired:
        return _Verdict("False", "WaitingForReplicas",
                        f"{kind} {name}: {ready} of {desired} replicas ready")
    total = _opt_count(dig(obj, "status", "replicas"))
    if total is not None and total > desired:
        return _Verdict("False", "ScalingDown",
                        f"{kind} {name}: {total} replicas, scaling down to {desired}")
    at = f" at {version}" if version else ""
    return _Verdict("True", "Ready", f"{ready} of {desired} replicas ready{at}")


def _control_plane(cluster: str, spec: ClusterSpec | None,
                   kcp: Mapping[str, Any] | None) -> tuple[ReplicaStatus | None, _Verdict]:
    if kcp is None:
        if spec is None:
            return None, _Verdict("Unknown", "NoSpec", "no spec and no KubeadmControlPlane")
        return (ReplicaStatus(desired=spec.control_plane.replicas),
                _Verdict("False", "NotFound", f"KubeadmControlPlane {cluster} not found"))
    spec_replicas = _opt_count(dig(kcp, "spec", "replicas"))
    spec_version = _opt_str(dig(kcp, "spec", "version"))
    desired = spec.control_plane.replicas if spec else (spec_replicas or 0)
    version = spec.kubernetes_version if spec else spec_version
    ready = _count(dig(kcp, "status", "readyReplicas"))
    up_to_date = _count(dig(kcp, "status", "upToDateReplicas"))
    observed_version = _opt_str(dig(kcp, "status", "version"))
    replicas = ReplicaStatus(desired=desired, ready=ready, up_to_date=up_to_date,
                             version=observed_version)
    verdict = _rollout("KubeadmControlPlane", kcp, desired=desired, version=version,
                       spec_replicas=spec_replicas, spec_version=spec_version,
                       observed_version=observed_version, ready=ready, up_to_date=up_to_date)
    return replicas, verdict


def _pool_of(cluster: str, md: Mapping[str, Any], wanted: set[str]) -> str | None:
    label = _opt_str(dig(md, "metadata", "labels", POOL_LABEL))
    if label:
        return label
    name = _opt_str(dig(md, "metadata", "name")) or ""
    prefix = f"{cluster}-"
    # Unlabelled MachineDeployments are ours only if named after a pool of the spec.
    if name.startswith(prefix) and name[len(prefix):] in wanted:
        return name[len(prefix):]
    return None


def _workers(cluster: str, spec: ClusterSpec | None,
             mds: Iterable[Mapping[str, Any]]) -> tuple[tuple[PoolStatus, ...], _Verdict]:
    wanted = {p.name: p for p in spec.workers} if spec else {}
    found: dict[str, Mapping[str, Any]] = {}
    for candidate in mds:
        pool = _pool_of(cluster, candidate, set(wanted))
        if pool is not None and (pool not in found
                                 or dig(candidate, "metadata", "labels", POOL_LABEL)):
            found[pool] = candidate
    pools: list[PoolStatus] = []
    problems: list[str] = []
    for name in [*wanted, *sorted(set(found) - set(wanted))]:
        md = found.get(name)
        pool_spec = wanted.get(name)
        desired = pool_spec.replicas if pool_spec else 0
        if md is None:
            pools.append(PoolStatus(name=name, desired=desired))
            problems.append(f"pool {name}: MachineDeployment {cluster}-{name} not found")
            continue
        spec_replicas = _opt_count(dig(md, "spec", "replicas"))
        spec_version = _opt_str(dig(md, "spec", "template", "spec", "version"))
        if spec is None:
            desired = spec_replicas or 0
        ready = _count(dig(md, "status", "readyReplicas"))
        up_to_date = _count(dig(md, "status", "upToDateReplicas"))
        pools.append(PoolStatus(name=name, desired=desired, ready=ready, up_to_date=up_to_date,
                                version=spec_version))
        if spec is not None and pool_spec is None:
            problems.append(f"pool {name}: removed from the spec, MachineDeployment remains")
            continue
        version = spec.pool_version(pool_spec) if spec and pool_spec else spec_version
        verdict = _rollout("MachineDeployment", md, desired=desired, version=version,
                           spec_replicas=spec_replicas, spec_version=spec_version,
                           observed_version=None, ready=ready, up_to_date=up_to_date)
        if not verdict.ok:
            problems.append(f"pool {name}: {verdict.message}")
    if spec is None and not pools:
        return (), _Verdict("Unknown", "NoSpec", "no spec and no worker pools")
    if problems:
        return tuple(pools), _Verdict("False", "PoolsNotReady", "; ".join(problems))
    if not pools:
        return (), _Verdict("True", "NoWorkers", "the spec has no worker pools")
    return tuple(pools), _Verdict("True", "Ready", f"{len(pools)} pool(s) ready")


def note_conditions(notes: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Plan notes grouped by reason (the condition type), messages joined, in first-seen
    order: two pools waiting for the same reason make one condition naming both."""
    grouped: dict[str, list[str]] = {}
    for reason, message in notes:
        messages = grouped.setdefault(reason, [])
        if message not in messages:
            messages.append(message)
    return {reason: "; ".join(messages) for reason, messages in grouped.items()}


def _certificates(spec: ClusterSpec, certs: tuple[tuple[str, datetime], ...],
                  now: datetime) -> _Verdict:
    """True (a warning) when a control-plane certificate expires within the policy's
    rotateBeforeDays: Cluster API rolls that machine (rollout.before); say when, and how to do
    it now."""
    machine, expires = certs[0]
    days = (expires - now).total_seconds() / 86400
    policy = spec.certificates.rotate_before_days
    when = f"{expires:%Y-%m-%d %H:%M} UTC ({'expired' if days < 0 else f'in {days:.0f}d'})"
    if days < policy:
        return _Verdict("True", "WithinRotationPolicy", (
            f"machine {machine}'s certificates expire {when}, within rotateBeforeDays "
            f"{policy}: Cluster API replaces the machine to renew them (outpostctl rotate-certs "
            "renews all now)"))
    return _Verdict("False", "NotExpiring", f"the earliest expiry is machine {machine}'s, {when}")


def _addons(spec: ClusterSpec | None, addons: tuple[AddonStatus, ...]) -> _Verdict:
    wanted = {a.name for a in spec.profile.addons} if spec and spec.profile else set()
    if not wanted and not addons:
        return _Verdict("True", "NoAddons", "the profile has no add-ons")
    by_name = {a.name: a for a in addons}
    bad = [a for a in addons if a.phase in ("Failed", "Degraded")]
    if bad:
        return _Verdict("False", "AddonsDegraded", "; ".join(
            f"{a.name} {a.phase}: {a.last_error or a.message}" for a in bad))
    pending = sorted(n for n in wanted if (by_name.get(n) is None
                                           or by_name[n].phase != "Ready"))
    pending += sorted(a.name for a in addons if a.name not in wanted)  # being removed
    if pending:
        return _Verdict("False", "AddonsProgressing", "; ".join(
            f"{n}: {by_name[n].message if n in by_name else 'pending'}" for n in pending))
    return _Verdict("True", "AddonsReady", f"{len(wanted)} add-on(s) ready")


def compute_status(
    cluster: str,
    spec: ClusterSpec | None,
    *,
    observed_revision: int,
    applied_revision: int,
    control_plane: Mapping[str, Any] | None = None,
    machine_deployments: Iterable[Mapping[str, Any]] = (),
    last_error: str | None = None,
    rejected_revision: int | None = None,
    rejection: str | None = None,
    connected: bool,
    agent_version: str,
    now: datetime,
    previous: StatusReport | None = None,
    notes: Iterable[tuple[str, str]] = (),
    addons: Iterable[AddonStatus] = (),
    certificates: Iterable[tuple[str, datetime]] = (),
) -> StatusReport:
    """The report for ``cluster`` (see the module doc for the phases).

    ``observed_revision`` is the newest revision received, accepted or not (raised to the
    spec's and the rejected revision if lower); ``applied_revision`` the newest one applied.
    ``rejected_revision``/``rejection`` describe the newest rejected spec; it is Degraded only
    while nothing newer has been received. ``control_plane`` is the KubeadmControlPlane and
    ``machine_deployments`` the cluster's MachineDeployments, as plain API dicts. A
    condition keeps ``previous``'s ``lastTransitionTime`` while its status is unchanged.
    ``notes`` are the last pass's plan notes (reason, message): each reason becomes a condition
    of that type, status True, for as long as the planner keeps noting it, and is gone after.
    """
    observed = max(observed_revision, spec.revision if spec else 0, rejected_revision or 0)
    rejected_newest = rejected_revision is not None and rejected_revision >= observed
    error = _cut(last_error, MAX_ERROR_CHARS) if last_error else None

    cp_status, cp = _control_plane(cluster, spec, control_plane)
    workers, wk = _workers(cluster, spec, machine_deployments)
    addon_list = tuple(addons)
    ad = _addons(spec, addon_list)

    if rejected_newest:
        why = f": {rejection}" if rejection else ""
        accepted = _Verdict("False", "SpecRejected", f"revision {rejected_revision} rejected{why}")
    elif spec is not None:
        accepted = _Verdict("True", "Accepted", f"revision {spec.revision} accepted")
    else:
        accepted = _Verdict("Unknown", "NoSpec", "no spec received yet")

    if spec is None:
        applied = _Verdict("Unknown", "NoSpec", "no spec received yet")
    else:
        # A rejected newer revision leaves the current spec as the target.
        target = spec.revision if rejected_newest else observed
        if applied_revision == target == spec.revision:
            applied = _Verdict("True", "Applied", f"revision {applied_revision} applied")
        else:
            applied = _Verdict("False", "Applying",
                               f"revision {target} desired, {applied_revision} applied")

    reconciled = (_Verdict("False", "Error", error) if error
                  else _Verdict("True", "NoError", "last reconciliation succeeded"))
    link = (_Verdict("True", "Connected", "management link up") if connected
            else _Verdict("False", "Disconnected", "management link down; reports are queued"))

    phase: Phase
    if error or rejected_newest:
        phase = "Degraded"
        ready = _Verdict("False", "Degraded", error or accepted.message)
    elif spec is None:
        phase = "Pending"
        ready = _Verdict("False", "Pending", "no spec received yet")
    elif ad.reason == "AddonsDegraded":
        phase = "Degraded"
        ready = _Verdict("False", "Degraded", ad.message)
    elif not (applied.ok and cp.ok and wk.ok and ad.ok):
        phase = "Applying"
        first = next(v for v in (applied, cp, wk, ad) if not v.ok)
        ready = _Verdict("False", "Applying", first.message)
    else:
        phase = "Converged"
        ready = _Verdict("True", "Converged", f"revision {spec.revision} converged")

    verdicts = dict(zip(CONDITION_TYPES, (ready, accepted, applied, cp, wk, ad, reconciled,
                                          link), strict=True))
    certs = tuple(certificates)
    if certs and spec is not None:
        verdicts["CertificatesExpiring"] = _certificates(spec, certs, now)
    for reason, messages in note_conditions(notes).items():
        verdicts.setdefault(reason, _Verdict("True", reason, messages))
    before = {c.type: c for c in previous.conditions} if previous else {}
    conditions = []
    for ctype, v in verdicts.items():
        old = before.get(ctype)
        since = old.last_transition_time if old and old.status == v.status else now
        conditions.append(Condition(type=ctype, status=v.status, reason=v.reason,
                                    message=_cut(v.message, MAX_MESSAGE_CHARS),
                                    last_transition_time=since))

    return StatusReport(
        cluster=cluster,
        observed_revision=observed,
        applied_revision=applied_revision,
        phase=phase,
        conditions=tuple(conditions),
        control_plane=cp_status,
        workers=workers,
        addons=addon_list,
        certificates=tuple(MachineCertificates(machine=m, expires_at=e) for m, e in certs)
        if certs else None,
        last_error=error,
        connected=connected,
        agent_version=agent_version,
        reported_at=now,
    )
