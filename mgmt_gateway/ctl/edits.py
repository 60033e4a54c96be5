"""The day-2 edits of `outpostctl` as pure functions of an OutpostCluster's spec.

Each returns the new spec and what changed in words, or raises `EditRefused` saying why and what
to do instead; the new spec is checked against the same contract the gateway applies
(`OutpostClusterSpec`), so a refused edit never reaches the API server.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from agent.spec import explain, path_gap
from agent.spec.maintenance import Operation, approval_subject

from ..clusters import OutpostClusterSpec

Spec = dict[str, Any]


class EditRefused(ValueError):
    """The edit cannot be made; the message says why and what to do."""


def _checked(spec: Spec) -> Spec:
    """`spec`, if the gateway would accept it (its cross-field rules included)."""
    try:
        # The name and namespace only matter to the contract's own fields, not to the spec's.
        OutpostClusterSpec.model_validate(spec).to_spec("check", "default", 1, None)
    except ValidationError as e:
        raise EditRefused(f"the result would be invalid: {explain(e)}") from None
    return spec


_VERSION = re.compile(r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


def is_version(v: str) -> bool:
    """A plain Kubernetes release as the spec takes it: v1.36.1."""
    return _VERSION.match(v) is not None


def _version(v: str) -> tuple[int, int, int]:
    found = _VERSION.match(v)
    if found is None:
        raise ValueError(v)
    return int(found[1]), int(found[2]), int(found[3])


def converged(obj: Mapping[str, Any]) -> str | None:
    """Why the cluster has not converged to its current spec yet, or None once it has."""
    st = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    if st.get("observedGeneration") != generation:
        return "the gateway has not taken in the last change yet"
    desired, applied = st.get("desiredRevision"), st.get("appliedRevision")
    if not desired or applied != desired:
        return f"the agent has applied revision {applied or 'none'} of {desired or '?'}"
    return None


def scale(spec: Mapping[str, Any], control_plane: int | None,
          workers: Mapping[str, int]) -> tuple[Spec, list[str]]:
    """Set the control-plane replicas and/or the replicas of named worker pools."""
    new = copy.deepcopy(dict(spec))
    changes: list[str] = []
    if control_plane is not None:
        cp = new.setdefault("controlPlane", {})
        if cp.get("replicas") != control_plane:
            changes.append(f"control plane {cp.get('replicas')} → {control_plane}")
            cp["replicas"] = control_plane
    pools = new.get("workers") or []
    known = [str(p.get("name")) for p in pools]
    missing = sorted(set(workers) - set(known))
    if missing:
        raise EditRefused(
            f"no worker pool named {', '.join(missing)} (pools: {', '.join(known) or 'none'}); "
            "a new pool is a change of spec.workers: add it with kubectl apply or kubectl edit")
    for pool in pools:
        want = workers.get(str(pool.get("name")))
        if want is not None and pool.get("replicas") != want:
            changes.append(f"workers {pool['name']} {pool.get('replicas')} → {want}")
            pool["replicas"] = want
    return _checked(new), changes


def upgrade(obj: Mapping[str, Any], version: str, *, pinned_workers: bool,
            via: Sequence[str] = ()) -> tuple[Spec, list[str]]:
    """Move the control plane (and the pools that follow it) of OutpostCluster `obj` to
    `version`, through the releases `via` names for the minors in between (the spec's
    upgrade.path: the agent steps through them, each to completion), and only once the cluster
    has converged to the last change. With `pinned_workers`, pools pinned to another version
    move too."""
    new = copy.deepcopy(dict(obj.get("spec") or {}))
    current = str(new.get("kubernetesVersion", ""))
    try:
        have, want = _version(current), _version(version)
        stops = sorted(via, key=_version)
        for v in stops:
            _version(v)
    except ValueError:
        bad = next((v for v in (version, *via) if not is_version(v)), version)
        raise EditRefused(f"{bad!r} is not a Kubernetes version like v1.35.2") from None
    if want < have:
        raise EditRefused(f"{version} is older than {current}: Kubernetes does not support "
                          "downgrading a control plane; restore from a backup instead")
    if not stops:  # keep what the spec already names for this upgrade, nothing older
        stops = sorted((v for v in (new.get("upgrade") or {}).get("path") or ()
                        if is_version(v)), key=_version)
    stops = [v for v in stops if have[:2] < _version(v)[:2] < want[:2]]
    gap = path_gap(current, version, tuple(stops))
    if gap is not None:
        raise EditRefused(f"{current} → {version} goes through {gap}: kubeadm upgrades one "
                          f"minor at a time, so name the tested {gap} release to stop at "
                          f"(--via {gap}.<patch>)")
    if stops or (new.get("upgrade") or {}).get("path"):
        new["upgrade"] = {**(new.get("upgrade") or {}), "path": stops}
    if want[:2] != have[:2]:
        pending = converged(obj)
        if pending is not None:
            raise EditRefused(f"{pending}: wait until it is Ready at {current} (outpostctl "
                              "describe cluster), then upgrade to the next minor")
    changes: list[str] = []
    if want != have:
        new["kubernetesVersion"] = version
        through = (new.get("upgrade") or {}).get("path") or []
        changes.append(f"Kubernetes {current} → {version}" + (
            f" (through {', '.join(through)})" if through and want[:2] > (have[0], have[1] + 1)
            else ""))
    for pool in new.get("workers") or []:
        pinned = pool.get("version")
        if pinned_workers and pinned and pinned != version:
            changes.append(f"workers {pool['name']} {pinned} → {version}")
            pool["version"] = version
    try:
        return _checked(new), changes
    except EditRefused as e:
        if pinned_workers:
            raise
        raise EditRefused(f"{e}; pass --pinned-workers to move the pinned worker pools "
                          "too") from None


def rotate_certs(spec: Mapping[str, Any], at: datetime) -> tuple[Spec, list[str]]:
    """Ask for the control-plane machines created before `at` to be rolled (new certificates)."""
    new = copy.deepcopy(dict(spec))
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    new.setdefault("certificates", {})["rotateAfter"] = stamp
    return _checked(new), [f"certificates rotated for machines created before {stamp}"]


def approve(obj: Mapping[str, Any], operation: Operation, by: str,
            at: datetime) -> tuple[Spec, list[str]]:
    """Approve the disruptive `operation` of OutpostCluster `obj`'s spec as it stands (it
    replaces an earlier approval of that operation). The approval names what it approves by
    digest, so a later change of the spec needs a new one."""
    new = copy.deepcopy(dict(obj.get("spec") or {}))
    normal = OutpostClusterSpec.model_validate(new).model_dump(by_alias=True, mode="json",
                                                               exclude_none=True)
    subject = approval_subject(operation, normal)
    kept = [a for a in new.get("approvals") or () if a.get("operation") != operation]
    revision = int((obj.get("status") or {}).get("desiredRevision") or 0)
    already = [a for a in new.get("approvals") or ()
               if a.get("operation") == operation and a.get("subject") == subject]
    if already:
        return new, []
    new["approvals"] = [*kept, {"operation": operation, "subject": subject, "approvedBy": by,
                                "approvedAt": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "revision": revision}]
    what = {"upgrade": f"the upgrade to {normal.get('kubernetesVersion')}",
            "repave": "the machine repave (current templates)",
            "rotation": "the certificate rotation"}[operation]
    return _checked(new), [f"approved {what} (by {by}, as of revision {revision})"]


def set_profile(spec: Mapping[str, Any], name: str, version: str,
                values: Mapping[str, Any] | None,
                available: Sequence[tuple[str, str]]) -> tuple[Spec, list[str]]:
    """Point the cluster at ClusterProfile `name` `version` (one of `available`), keeping its
    per-cluster values unless new ones are given."""
    if (name, version) not in available:
        have = ", ".join(f"{n} {v}" for n, v in sorted(available)) or "none"
        raise EditRefused(f"no ClusterProfile {name} {version} in the cluster's namespace "
                          f"(there: {have}); create it first")
    new = copy.deepcopy(dict(spec))
    old = new.get("profile") or {}
    profile: dict[str, Any] = {"name": name, "version": version}
    kept = old.get("values") if values is None else dict(values)
    if kept:
        profile["values"] = kept
    changes = []
    before = f"{old.get('name')} {old.get('version')}" if old else "none"
    if before != f"{name} {version}":
        changes.append(f"profile {before} → {name} {version}")
    elif profile != old:
        changes.append(f"profile {name} {version}: per-cluster values replaced")
    new["profile"] = profile
    return _checked(new), changes
