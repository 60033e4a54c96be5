"""Small pure helpers shared by the simulated controllers: labels, owner references, conditions.

They encode the Cluster API conventions (v1beta2) every controller must agree on, so that each
controller module only says what it decides, not how a label or a condition is spelled.
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


def deleting(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def created_key(obj: Obj) -> tuple[str, str]:
    """Sort key for "oldest first": creation time (second resolution), then name."""
    return (str(meta(obj).get("creationTimestamp") or ""), str(meta(obj).get("name") or ""))


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


def matches(selector: Any, obj_labels: dict[str, str]) -> bool:
    """Whether labels satisfy a metav1.LabelSelector (matchLabels and matchExpressions)."""
    if not isinstance(selector, dict):
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if obj_labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and obj_labels.get(key) not in values:
            return False
        if op == "NotIn" and key in obj_labels and obj_labels[key] in values:
            return False
        if op == "Exists" and key not in obj_labels:
            return False
        if op == "DoesNotExist" and key in obj_labels:
            return False
    return True


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


def with_owner(obj: Obj, owner: Obj, controller: bool = False) -> Obj | None:
    """A copy of obj with owner referenced, or None when it already is (exactly so)."""
    want = owner_ref(owner, controller)
    refs = owner_refs(obj)
    if any(r == want for r in refs):
        return None
    new = copy.deepcopy(obj)
    kept = [r for r in refs if r.get("uid") != want["uid"]]
    if controller:  # only one controller: an older controller reference steps back
        kept = [dict(r, controller=False) if r.get("controller") else r for r in kept]
    new["metadata"]["ownerReferences"] = [*kept, want]
    return new


# -- conditions -----------------------------------------------------------------------------
def condition(type_: str, status: bool | None, reason: str, message: str = "") -> Obj:
    """A v1beta2 condition without its times; merge_conditions fills those in."""
    s = "Unknown" if status is None else ("True" if status else "False")
    return {"type": type_, "status": s, "reason": reason, "message": message}


def get_condition(obj: Obj, type_: str) -> Obj | None:
    conds = dig(obj, "status", "conditions")
    if not isinstance(conds, list):
        return None
    return next((c for c in conds if isinstance(c, dict) and c.get("type") == type_), None)


def is_true(obj: Obj, type_: str) -> bool:
    c = get_condition(obj, type_)
    return bool(c and c.get("status") == "True")


def merge_conditions(old: Any, new: list[Obj], generation: int | None) -> list[Obj]:
    """Set conditions by type, keeping the others and keeping lastTransitionTime when the
    status did not change: a converged object then gets exactly the status it already has."""
    stamp = rfc3339(now())
    result = [dict(c) for c in old if isinstance(c, dict)] if isinstance(old, list) else []
    index = {c.get("type"): i for i, c in enumerate(result)}
    for c in new:
        cur = result[index[c["type"]]] if c["type"] in index else None
        merged = dict(c)
        if generation is not None:
            merged["observedGeneration"] = generation
        if cur is not None and cur.get("status") == c["status"] and cur.get("lastTransitionTime"):
            merged["lastTransitionTime"] = cur["lastTransitionTime"]
        else:
            merged["lastTransitionTime"] = stamp
        if cur is None:
            index[c["type"]] = len(result)
            result.append(merged)
        else:
            result[index[c["type"]]] = merged
    return result


def with_conditions(status: Obj, obj: Obj, conds: list[Obj]) -> Obj:
    """status (a fresh dict) with conds merged into the object's current conditions."""
    gen = meta(obj).get("generation")
    status["conditions"] = merge_conditions(dig(obj, "status", "conditions"), conds,
                                            gen if isinstance(gen, int) else None)
    return status


def fake_pem(kind: str, seed: str, lines: int = 8) -> str:
    """PEM-looking text, deterministic per seed, so that rewriting it is always a no-op."""
    raw = b""
    block = seed.encode()
    while len(raw) < lines * 48:
        block = hashlib.sha256(block).digest()
        raw += block
    body = base64.b64encode(raw[: lines * 48]).decode()
    rows = [body[i:i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(rows) + f"\n-----END {kind}-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def version_key(version: Any) -> tuple[int, ...]:
    """Order Kubernetes versions (v1.35.2 < v1.36.0); unparsable ones sort first."""
    if not isinstance(version, str):
        return ()
    core = version.lstrip("v").split("+")[0].split("-")[0]
    try:
        return tuple(int(p) for p in core.split("."))
    except ValueError:
        return ()
