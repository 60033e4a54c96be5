"""Add-on planning. PURE: stages, the body the agent applies, health, prune order.

Inside one add-on, objects go in stages, each waiting for the one before to be healthy:
Namespaces and CRDs (until Established) → RBAC and configuration → workloads and Services →
webhook configurations and APIServices (once what serves them is available: a webhook registered
before its backend runs blocks the whole cluster) → custom resources. Pruning walks the other
way, webhooks first, CRDs and Namespaces last.

Health follows kstatus: an object is Current when its controller has observed its generation
and reports it rolled out (Deployments available, DaemonSets and StatefulSets updated, Jobs
complete, CRDs Established, APIServices Available, PVCs Bound), InProgress while on its way,
Failed when it says it cannot get there. The add-on's own rules (conditions, a CEL expression)
are checked on top.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from agent.spec.addons import Addon, HealthRule, IgnoreRule

from .types import Obj

ADDON_LABEL = "outpost.io/addon"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "outpost-agent"

STAGES = ("namespaces and CRDs", "RBAC and configuration", "workloads and services",
          "webhooks and API services", "custom resources")
NAMESPACES_CRDS, CONFIG, WORKLOADS, WEBHOOKS, CUSTOM = range(5)
# Prune walks stages in this order: webhooks go first so nothing else is blocked by a webhook
# whose backend is gone; CRDs (and with them every custom resource) and Namespaces go last.
PRUNE_ORDER = (WEBHOOKS, CUSTOM, WORKLOADS, CONFIG, NAMESPACES_CRDS)

_CONFIG_KINDS = frozenset({
    "ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap",
    "Secret", "PriorityClass", "StorageClass", "ResourceQuota", "LimitRange", "RuntimeClass",
    "IngressClass", "PodDisruptionBudget", "NetworkPolicy", "PersistentVolume",
    "PersistentVolumeClaim", "CSIDriver"})
_WEBHOOK_KINDS = frozenset({"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
                            "APIService", "ValidatingAdmissionPolicy",
                            "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy",
                            "MutatingAdmissionPolicyBinding"})
# Groups served by kube-apiserver itself; anything else is a custom (or aggregated) resource.
_BUILTIN_GROUPS = frozenset({
    "", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "node.k8s.io", "coordination.k8s.io",
    "discovery.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io",
    "admissionregistration.k8s.io", "certificates.k8s.io", "events.k8s.io",
    "flowcontrol.apiserver.k8s.io", "resource.k8s.io", "authentication.k8s.io",
    "authorization.k8s.io", "internal.apiserver.k8s.io", "storagemigration.k8s.io"})


def group_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("apiVersion", "")).rpartition("/")[0]


def stage_of(obj: Mapping[str, Any]) -> int:
    kind, group = str(obj.get("kind")), group_of(obj)
    if kind in ("Namespace", "CustomResourceDefinition") and group in ("",
                                                                        "apiextensions.k8s.io"):
        return NAMESPACES_CRDS
    if group not in _BUILTIN_GROUPS:
        return CUSTOM
    if kind in _WEBHOOK_KINDS:
        return WEBHOOKS
    if kind in _CONFIG_KINDS:
        return CONFIG
    return WORKLOADS


@dataclass(frozen=True, order=True)
class ObjKey:
    """Which object: its group, kind, namespace ('' when cluster-scoped) and name."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}{'.' + self.group if self.group else ''} {where}{self.name}"


def key_of(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return ObjKey(group_of(obj), str(obj.get("kind")), str(meta.get("namespace") or ""),
                  str(meta.get("name")))


# -- the body the agent applies -----------------------------------------------------------
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields",
                  "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[(?:\*|\d+)\])*)")


def parse_path(path: str) -> list[str | int | None]:
    """'webhooks[*].clientConfig.caBundle' -> ['webhooks', None, 'clientConfig', 'caBundle']
    (None: every item of a list)."""
    out: list[str | int | None] = []
    for part in path.split("."):
        m = _SEGMENT.fullmatch(part)
        if m is None:
            raise ValueError(f"not a field path: {path!r}")
        out.append(m.group(1))
        for index in re.findall(r"\[(\*|\d+)\]", m.group(2)):
            out.append(None if index == "*" else int(index))
    return out


def _strip(node: Any, steps: Sequence[str | int | None]) -> None:
    if not steps:
        return
    step, rest = steps[0], steps[1:]
    if isinstance(node, dict) and isinstance(step, str):
        if not rest:
            node.pop(step, None)
        elif step in node:
            _strip(node[step], rest)
    elif isinstance(node, list) and not isinstance(step, str):
        items = node if step is None else node[step:step + 1] if step < len(node) else []
        if not rest:
            if step is None:
                node.clear()
            elif step < len(node):
                del node[step]
            return
        for item in items:
            _strip(item, rest)


def ignored_paths(obj: Mapping[str, Any], rules: Iterable[IgnoreRule]) -> list[str]:
    return [p for rule in rules if rule.matches(dict(obj)) for p in rule.paths]


def apply_body(obj: Mapping[str, Any], addon: Addon,
               extra_ignore: Iterable[str] = ()) -> Obj:
    """What the agent applies for `obj`: the object as rendered, labelled as the add-on's, with
    no status, no server-owned metadata, and none of the fields someone else owns."""
    body = copy.deepcopy(dict(obj))
    body.pop("status", None)
    meta = body.setdefault("metadata", {})
    for f in _SERVER_FIELDS:
        meta.pop(f, None)
    meta["labels"] = {**(meta.get("labels") or {}), ADDON_LABEL: addon.name,
                      MANAGED_LABEL: MANAGED_BY}
    for path in [*ignored_paths(obj, addon.ignore), *extra_ignore]:
        _strip(body, parse_path(path))
    return body


def autoscaled(objects: Iterable[Mapping[str, Any]]) -> set[ObjKey]:
    """Workloads an HPA in the same add-on scales: their spec.replicas belongs to the HPA, so
    applying it would fight the autoscaler forever."""
    out: set[ObjKey] = set()
    for obj in objects:
        if obj.get("kind") != "HorizontalPodAutoscaler":
            continue
        ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") and ref.get("name"):
            group = str(ref.get("apiVersion", "")).rpartition("/")[0]
            ns = str((obj.get("metadata") or {}).get("namespace") or "")
            out.add(ObjKey(group, str(ref["kind"]), ns, str(ref["name"])))
    return out


# -- health ---------------------------------------------------------------------------------
Status = Literal["Current", "InProgress", "Failed"]


@dataclass(frozen=True)
class Health:
    status: Status
    message: str = ""


CURRENT = Health("Current")


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in (obj.get("status") or {}).get("conditions") or ()
            if isinstance(c, Mapping)}


def _true(conds: Mapping[str, Mapping[str, Any]], type_: str) -> bool:
    return str((conds.get(type_) or {}).get("status")) == "True"


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def kstatus(obj: Mapping[str, Any]) -> Health:
    """The object's rollout status, by kstatus rules."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Health("InProgress", "being deleted")
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    kind, group = str(obj.get("kind")), group_of(obj)
    conds = _conditions(obj)
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return Health("InProgress", f"generation {generation} not observed yet (observed "
                                    f"{observed})")
    if group == "apps" and kind == "Deployment":
        want = _int(spec.get("replicas"), 1)
        prog = conds.get("Progressing") or {}
        if prog.get("reason") == "ProgressDeadlineExceeded":
            return Health("Failed", f"progress deadline exceeded: {prog.get('message', '')}")
        if observed is None:
            return Health("InProgress", "not observed by its controller yet")
        for field, label in (("updatedReplicas", "updated"), ("readyReplicas", "ready"),
                             ("availableReplicas", "available")):
            have = _int(status.get(field))
            if have < want:
                return Health("InProgress", f"{have} of {want} replicas {label}")
        if _int(status.get("replicas")) > want:
            return Health("InProgress", f"{status.get('replicas')} replicas, old ones still "
                                        "terminating")
        return CURRENT
    if group == "apps" and kind == "StatefulSet":
        want = _int(spec.get("replicas"), 1)
        if observed is None:
            return Health("InProgress", "not observed by its controller yet")
        if _int(status.get("readyReplicas")) < want:
            return Health("InProgress", f"{_int(status.get('readyReplicas'))} of {want} "
                                        "replicas ready")
        if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            if _int(status.get("updatedReplicas")) < want:
                return Health("InProgress", f"{_int(status.get('updatedReplicas'))} of {want}"
                                            " replicas updated")
            if status.get("currentRevision") != status.get("updateRevision"):
                return Health("InProgress", "rolling out revision "
                                            f"{status.get('updateRevision')}")
        return CURRENT
    if group == "apps" and kind == "DaemonSet":
        if observed is None:
            return Health("InProgress", "not observed by its controller yet")
        want = _int(status.get("desiredNumberScheduled"))
        for field, label in (("updatedNumberScheduled", "updated"),
                             ("numberAvailable", "available")):
            have = _int(status.get(field))
            if have < want:
                return Health("InProgress", f"{have} of {want} pods {label}")
        return CURRENT
    if group == "apps" and kind == "ReplicaSet":
        want = _int(spec.get("replicas"), 1)
        if _int(status.get("availableReplicas")) < want:
            return Health("InProgress", f"{_int(status.get('availableReplicas'))} of {want} "
                                        "replicas available")
        return CURRENT
    if group == "batch" and kind == "Job":
        if _true(conds, "Failed"):
            return Health("Failed", f"job failed: {conds['Failed'].get('message', '')}")
        if _true(conds, "Complete"):
            return CURRENT
        return Health("InProgress", "job not complete yet")
    if group == "" and kind == "Pod":
        phase = status.get("phase")
        if phase == "Succeeded" or (phase == "Running" and _true(conds, "Ready")):
            return CURRENT
        if phase == "Failed":
            return Health("Failed", f"pod failed: {status.get('message', '')}")
        return Health("InProgress", f"pod {phase or 'Pending'}")
    if group == "" and kind == "PersistentVolumeClaim":
        return CURRENT if status.get("phase") == "Bound" else Health(
            "InProgress", f"claim {status.get('phase') or 'Pending'}")
    if group == "" and kind == "Namespace":
        return CURRENT if status.get("phase", "Active") == "Active" else Health(
            "InProgress", f"namespace {status.get('phase')}")
    if group == "" and kind == "Service":
        if spec.get("type") == "LoadBalancer" and not (
                (status.get("loadBalancer") or {}).get("ingress")):
            return Health("InProgress", "waiting for a load balancer address")
        return CURRENT
    if group == "apiextensions.k8s.io" and kind == "CustomResourceDefinition":
        if str((conds.get("NamesAccepted") or {}).get("status")) == "False":
            return Health("Failed", "names not accepted: "
                                    f"{conds['NamesAccepted'].get('message', '')}")
        return CURRENT if _true(conds, "Established") else Health("InProgress",
                                                                   "not Established yet")
    if group == "apiregistration.k8s.io" and kind == "APIService":
        return CURRENT if _true(conds, "Available") else Health(
            "InProgress", f"not Available: {(conds.get('Available') or {}).get('message', '')}")
    # Any other kind: the conventions kstatus reads from custom resources.
    if _true(conds, "Stalled"):
        return Health("Failed", f"stalled: {conds['Stalled'].get('message', '')}")
    if _true(conds, "Reconciling"):
        return Health("InProgress", f"reconciling: {conds['Reconciling'].get('message', '')}")
    ready = conds.get("Ready")
    if ready is not None and str(ready.get("status")) != "True":
        return Health("InProgress", f"not Ready: {ready.get('message', '')}")
    return CURRENT


def health(obj: Mapping[str, Any], rules: Iterable[HealthRule]) -> Health:
    """kstatus, then every one of the add-on's rules for this object."""
    found = kstatus(obj)
    if found.status != "Current":
        return found
    conds = _conditions(obj)
    for rule in rules:
        if not rule.matches(dict(obj)):
            continue
        for want in rule.conditions:
            have = str((conds.get(want.type) or {}).get("status", "Unknown"))
            if have != want.status:
                return Health("InProgress", f"condition {want.type} is {have}, the add-on "
                                            f"needs {want.status}")
        if rule.cel is not None:
            try:
                ok = evaluate_cel(rule.cel, obj)
            except Exception as e:
                return Health("Failed", f"health rule {rule.cel!r} cannot be evaluated: {e}")
            if not ok:
                return Health("InProgress", f"health rule {rule.cel!r} is false")
    return CURRENT


@lru_cache(maxsize=256)
def _program(expression: str) -> Any:
    import celpy  # loaded only for add-ons that use CEL: it is slow to import

    env = celpy.Environment()
    return env.program(env.compile(expression))


def evaluate_cel(expression: str, obj: Mapping[str, Any]) -> bool:
    """`expression` with `object` bound to `obj`; an expression that is not boolean, or fails
    (a missing field), raises."""
    from celpy.adapter import json_to_cel
    from celpy.celtypes import BoolType

    result = _program(expression).evaluate({"object": json_to_cel(dict(obj))})
    if isinstance(result, Exception):
        raise result
    if not isinstance(result, (bool, BoolType)):
        raise ValueError(f"the expression gives {type(result).__name__}, not a boolean")
    return bool(result)


def check_cel(expression: str) -> str | None:
    """Why `expression` does not compile (None when it does), for the gateway to refuse it."""
    try:
        _program(expression)
    except Exception as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


# -- prune ----------------------------------------------------------------------------------
def prune_sorted(keys: Iterable[tuple[ObjKey, int]]) -> list[ObjKey]:
    """Keys (with their stage) in the order to delete them."""
    rank = {stage: i for i, stage in enumerate(PRUNE_ORDER)}
    return [k for k, _ in sorted(keys, key=lambda ks: (rank[ks[1]], ks[0]))]
