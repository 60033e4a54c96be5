"""Small pure helpers shared by the simulated controllers: names, labels, owner references.

They encode the Cluster API conventions (v1beta2) every controller must agree on, so that each
controller module only says what it decides, not how a label or an owner reference is spelled.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

Obj = dict[str, Any]

CORE_GROUP = "cluster.x-k8s.io"
BOOTSTRAP_GROUP = "bootstrap.cluster.x-k8s.io"
CONTROLPLANE_GROUP = "controlplane.cluster.x-k8s.io"
INFRA_GROUP = "infrastructure.cluster.x-k8s.io"
VERSION = "v1beta2"

CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
CONTROL_PLANE_NAME_LABEL = "cluster.x-k8s.io/control-plane-name"
DEPLOYMENT_NAME_LABEL = "cluster.x-k8s.io/deployment-name"
SET_NAME_LABEL = "cluster.x-k8s.io/set-name"
TEMPLATE_HASH_LABEL = "machine-template-hash"
PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"
DELETE_MACHINE_ANNOTATION = "cluster.x-k8s.io/delete-machine"
CLONED_FROM_NAME = "cluster.x-k8s.io/cloned-from-name"
CLONED_FROM_GROUPKIND = "cluster.x-k8s.io/cloned-from-groupkind"
MACHINE_FINALIZER = "machine.cluster.x-k8s.io"
CLUSTER_FINALIZER = "cluster.cluster.x-k8s.io"
CLUSTER_SECRET_TYPE = "cluster.x-k8s.io/secret"


# -- time -----------------------------------------------------------------------------------
def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp from an object, or None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def days_from_now(days: int) -> str:
    return rfc3339(now() + timedelta(days=days))


# -- metadata -------------------------------------------------------------------------------
def meta(obj: Obj) -> Obj:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def labels(obj: Obj) -> dict[str, str]:
    lb = meta(obj).get("labels")
    return lb if isinstance(lb, dict) else {}


def annots(obj: Obj) -> dict[str, str]:
    an = meta(obj).get("annotations")
    return an if isinstance(an, dict) else {}


def dig(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]..., or None as soon as a step is missing or not an object."""
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


def api_group(obj: Obj) -> str:
    """The group of an object's (or an owner reference's) apiVersion; "" for the core group."""
    return str(obj.get("apiVersion", "")).rpartition("/")[0]


def deleting(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def created_key(obj: Obj) -> tuple[str, str]:
    """Sort key for "oldest first": creation time (second resolution), then name."""
    return (str(meta(obj).get("creationTimestamp") or ""), str(meta(obj).get("name") or ""))


def generation(obj: Obj) -> int | None:
    gen = meta(obj).get("generation")
    return gen if isinstance(gen, int) else None


def observe(status: Obj, obj: Obj) -> Obj:
    """status, saying which generation of obj's spec it describes (when obj has one)."""
    gen = generation(obj)
    if gen is not None:
        status["observedGeneration"] = gen
    return status


def label_value(value: str) -> str:
    """A name as a label value: kept when it fits in 63 characters, else hashed, as CAPI does."""
    if len(value) <= 63:
        return value
    return "hash_" + base64.b32encode(hashlib.sha256(value.encode()).digest()).decode()[
        :20].lower() + "_z"


def spec_hash(spec: Any) -> str:
    """A short, stable hash of a template spec; names a MachineSet per template revision."""
    raw = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:10]


def selector_string(match_labels: dict[str, str], exists: tuple[str, ...] = ()) -> str:
    """The label selector in its string form, as status.selector (for the scale subresource)."""
    parts = [f"{k}={v}" for k, v in sorted(match_labels.items())]
    parts.extend(exists)
    return ",".join(parts)


def version_key(version: Any) -> tuple[int, ...]:
    """Order Kubernetes versions (v1.35.2 < v1.36.0); unparsable ones sort first."""
    if not isinstance(version, str):
        return ()
    core = version.lstrip("v").split("+")[0].split("-")[0]
    try:
        return tuple(int(p) for p in core.split("."))
    except ValueError:
        return ()


# -- owner references -----------------------------------------------------------------------
def owner_ref(owner: Obj, controller: bool = False) -> Obj:
    ref: Obj = {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "name": meta(owner)["name"], "uid": meta(owner)["uid"]}
    if controller:
        ref["controller"] = True
        ref["blockOwnerDeletion"] = True
    return ref


def owner_refs(obj: Obj) -> list[Obj]:
    refs = meta(obj).get("ownerReferences")
    return [r for r in refs if isinstance(r, dict)] if isinstance(refs, list) else []


def owned_by(obj: Obj, owner: Obj, controller: bool = False) -> bool:
    uid = meta(owner).get("uid")
    return any(r.get("uid") == uid and (r.get("controller") or not controller)
               for r in owner_refs(obj))


def owner_of_kind(obj: Obj, kind: str) -> Obj | None:
    """The first owner reference of a kind (Cluster, Machine, ...)."""
    return next((r for r in owner_refs(obj) if r.get("kind") == kind), None)


def children(objs: list[Obj], owner: Obj) -> list[Obj]:
    """The objects owner controls, oldest first (the order scale-down and rollouts go by)."""
    return sorted((o for o in objs if owned_by(o, owner, controller=True)), key=created_key)


def claimed(obj: Obj, owner: Obj | None = None, *, controller: bool = False,
            cluster: str | None = None, finalizer: str | None = None) -> Obj | None:
    """A copy of obj referencing owner, labelled with its cluster and holding finalizer (each
    only when given), or None when it already is so: a converged object costs no write."""
    new = copy.deepcopy(obj)
    m = new["metadata"]
    if owner is not None:
        want = owner_ref(owner, controller)
        refs = owner_refs(obj)
        if want not in refs:
            kept = [r for r in refs if r.get("uid") != want["uid"]]
            if controller:  # only one controller: an older controller reference steps back
                kept = [dict(r, controller=False) if r.get("controller") else r for r in kept]
            m["ownerReferences"] = [*kept, want]
    if cluster is not None:
        m.setdefault("labels", {})[CLUSTER_NAME_LABEL] = cluster
    if finalizer is not None and finalizer not in (m.get("finalizers") or []):
        m["finalizers"] = [*(m.get("finalizers") or []), finalizer]
    return None if new == obj else new


def released(obj: Obj, finalizer: str) -> Obj:
    """A copy of obj without finalizer: what lets a deletion finish."""
    new = copy.deepcopy(obj)
    new["metadata"]["finalizers"] = [f for f in meta(obj).get("finalizers") or []
                                     if f != finalizer]
    return new
