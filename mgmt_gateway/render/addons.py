"""Add-on bundles from rendered objects. PURE.

Whatever the source (manifests, a Helm chart), rendering ends in a list of objects; this module
turns them into one immutable bundle: Helm hooks split off by phase (install and upgrade kept
apart, test hooks dropped), everything else in the order given, the default namespace filled in
for namespaced kinds it knows, and every object checked against the API server's request limit,
so an add-on too large to apply is refused at the gateway, with the object's name, instead of
failing at a site months later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from agent.spec.addons import Bundle, BundleRef, DeletePolicy, Hook, HookPhase, digest_of

Obj = dict[str, Any]

# kube-apiserver refuses a request body over 3 MiB and etcd a value over 1.5 MiB; an object is
# stored with its managedFields, so 1.5 MB of JSON is the honest limit for what we apply.
MAX_OBJECT_BYTES = 1_572_864
HOOK = "helm.sh/hook"
HOOK_WEIGHT = "helm.sh/hook-weight"
HOOK_DELETE = "helm.sh/hook-delete-policy"
_PHASES: frozenset[str] = frozenset(get_args(HookPhase))
_POLICIES: frozenset[str] = frozenset(get_args(DeletePolicy))
# Helm phases the agent does not run: tests are run by people, rollback hooks belong to Helm's
# own rollback, which the agent does differently (it re-applies the last good bundle).
_SKIPPED_PHASES = frozenset({"test", "test-success", "test-failure", "pre-rollback",
                             "post-rollback"})
# Kinds that are cluster-scoped (the rest get the add-on's namespace when they have none).
CLUSTER_SCOPED = frozenset({
    "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
    "PriorityClass", "StorageClass", "CSIDriver", "CSINode", "VolumeAttachment",
    "PersistentVolume", "Node", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding", "APIService", "RuntimeClass", "IngressClass",
    "CertificateSigningRequest", "FlowSchema", "PriorityLevelConfiguration",
    "ClusterTrustBundle", "DeviceClass", "SelfSubjectReview"})


class RenderError(ValueError):
    """Content that cannot become a bundle; the message names the object and what to do."""


@dataclass(frozen=True)
class Rendered:
    bundle: Bundle
    data: bytes
    ref: BundleRef


def _label(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def _weight(obj: Obj, value: Any) -> int:
    try:
        return int(str(value).strip() or 0)
    except ValueError:
        raise RenderError(f"{_label(obj)}: {HOOK_WEIGHT} {value!r} is not an integer") from None


def _split_hook(obj: Obj) -> list[Hook] | None:
    """The hooks `obj` is (one per phase it names), None when it is not a hook, [] when it is
    one the agent does not run."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if HOOK not in annotations:
        return None
    phases = [p.strip() for p in str(annotations[HOOK]).split(",") if p.strip()]
    unknown = [p for p in phases if p not in _PHASES and p not in _SKIPPED_PHASES]
    if unknown:
        raise RenderError(f"{_label(obj)}: unknown Helm hook {', '.join(unknown)}")
    raw = annotations.get(HOOK_DELETE)
    policies = tuple(p.strip() for p in str(raw).split(",") if p.strip()) if raw else (
        "before-hook-creation",)
    bad = [p for p in policies if p not in _POLICIES]
    if bad:
        raise RenderError(f"{_label(obj)}: unknown {HOOK_DELETE} {', '.join(bad)}")
    weight = _weight(obj, annotations.get(HOOK_WEIGHT, 0))
    return [Hook(phase=p, weight=weight, delete_policies=policies,  # type: ignore[arg-type]
                 object=obj) for p in phases if p in _PHASES]


def _check(obj: Obj, source: str) -> None:
    meta = obj.get("metadata")
    if not (isinstance(obj.get("apiVersion"), str) and isinstance(obj.get("kind"), str)
            and isinstance(meta, dict) and meta.get("name")):
        raise RenderError(f"{source}: an object without apiVersion, kind or metadata.name: "
                          f"{str(obj)[:200]}")
    if meta.get("generateName") and not meta.get("name"):
        raise RenderError(f"{source}: {_label(obj)} uses generateName, which cannot be kept "
                          "in step: give it a name")


def build_bundle(name: str, version: str, objects: Iterable[Obj], *, namespace: str | None,
                 source: str) -> Rendered:
    """The bundle of one add-on version from its rendered objects (in apply order)."""
    plain: list[Obj] = []
    hooks: list[Hook] = []
    for obj in objects:
        _check(obj, source)
        obj = _with_namespace(obj, namespace)
        size = len(_encode(obj))
        if size > MAX_OBJECT_BYTES:
            raise RenderError(f"{source}: {_label(obj)} is {size:,} bytes, over the "
                              f"{MAX_OBJECT_BYTES:,} bytes the API server accepts in one "
                              "object: split it, or drop what it does not need")
        split = _split_hook(obj)
        if split is None:
            plain.append(obj)
        else:
            hooks.extend(split)
    try:
        bundle = Bundle(name=name, version=version, objects=tuple(plain),
                        hooks=tuple(sorted(hooks, key=lambda h: (h.phase, h.weight))))
    except ValueError as e:
        raise RenderError(f"{source}: {e}") from e
    data = bundle.encode()
    return Rendered(bundle, data, BundleRef(digest=digest_of(data), size=len(data),
                                            objects=len(plain)))


def _encode(obj: Obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _with_namespace(obj: Obj, namespace: str | None) -> Obj:
    meta = obj["metadata"]
    if namespace is None or meta.get("namespace") or obj["kind"] in CLUSTER_SCOPED:
        return obj
    return {**obj, "metadata": {**meta, "namespace": namespace}}


def nondeterministic(first: Sequence[Obj], second: Sequence[Obj]) -> list[str]:
    """The objects that differ between two renders of the same inputs (random secrets,
    timestamps): such an add-on would be re-applied on every render, so it is refused."""
    a = {_label(o): _encode(o) for o in first}
    b = {_label(o): _encode(o) for o in second}
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
