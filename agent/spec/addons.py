"""Add-ons in the contract: what the signed spec says about each add-on, and the bundle format.

The spec carries only references: an add-on's name, order, the sha256 digest and size of its
bundle, and its health and ignore rules. The bundle (the rendered, ordered objects of one add-on
version, with its Helm hooks) travels separately, content-addressed, so the signed spec stays
small whatever the profile weighs; the agent checks each bundle's digest against the spec before
it believes a byte of it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from .base import Model, Namespace

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
ADDON_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A field path: dotted names, `[*]` for every item of a list, `[n]` for one.
FIELD_PATH = re.compile(r"^[A-Za-z0-9_$-]+(\[(\*|\d+)\])*(\.[A-Za-z0-9_$-]+(\[(\*|\d+)\])*)*$")
BUNDLE_API_VERSION: Final = "outpost.io/v1alpha1"
HookPhase = Literal["pre-install", "post-install", "pre-upgrade", "post-upgrade", "pre-delete"]
HOOK_PHASES: tuple[HookPhase, ...] = ("pre-install", "post-install", "pre-upgrade",
                                      "post-upgrade", "pre-delete")
DeletePolicy = Literal["before-hook-creation", "hook-succeeded", "hook-failed"]


def _name(value: str) -> str:
    if len(value) > 53 or not ADDON_NAME.match(value):
        raise ValueError("must be a DNS-1123 label of at most 53 characters (it names "
                         "Kubernetes objects with a suffix): lower-case letters, digits, '-'")
    return value


def _digest(value: str) -> str:
    if not DIGEST.match(value):
        raise ValueError("must be 'sha256:' and 64 lower-case hex digits")
    return value


def _path(value: str) -> str:
    if not FIELD_PATH.match(value):
        raise ValueError(f"{value!r} is not a field path like 'spec.replicas' or "
                         "'webhooks[*].clientConfig.caBundle'")
    return value


AddonName = Annotated[str, AfterValidator(_name)]
Digest = Annotated[str, AfterValidator(_digest)]
FieldPath = Annotated[str, AfterValidator(_path)]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class KindSelector(Model):
    """Objects of one kind (any version of its group), optionally one name or namespace."""

    api_group: str = Field(default="", description="'' for the core group")
    kind: Annotated[str, Field(min_length=1, max_length=63)]
    name: str | None = None
    namespace: str | None = None

    def matches(self, obj: dict[str, Any]) -> bool:
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        meta = obj.get("metadata") or {}
        return (group == self.api_group and obj.get("kind") == self.kind
                and (self.name is None or meta.get("name") == self.name)
                and (self.namespace is None or meta.get("namespace") == self.namespace))


class ConditionRule(Model):
    type: Annotated[str, Field(min_length=1)]
    status: Literal["True", "False", "Unknown"] = "True"


class HealthRule(KindSelector):
    """The add-on's own readiness rule for a kind, checked on top of the built-in one: every
    condition listed holds, and the CEL expression (with `object` bound to the live object)
    is true."""

    conditions: tuple[ConditionRule, ...] = ()
    cel: Annotated[str, Field(min_length=1, max_length=4096)] | None = None

    @model_validator(mode="after")
    def _something(self) -> HealthRule:
        if not self.conditions and self.cel is None:
            raise ValueError("a health rule needs conditions or a cel expression")
        return self


class IgnoreRule(KindSelector):
    """Fields someone else owns (an HPA's spec.replicas, an injected webhook caBundle): the
    agent never applies them, so it never fights their owner over them."""

    paths: Annotated[tuple[FieldPath, ...], Field(min_length=1)]


class BundleRef(Model):
    digest: Digest
    size: Annotated[int, Field(ge=1, le=256 * 1024 * 1024)]
    objects: Annotated[int, Field(ge=0)]


class Addon(Model):
    name: AddonName
    version: Annotated[str, Field(min_length=1, max_length=128)]
    order: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=0, description="lower first; add-ons of one order are installed together")
    namespace: Namespace | None = Field(
        default=None, description="where namespaced objects without a namespace go")
    bundle: BundleRef
    health: tuple[HealthRule, ...] = ()
    ignore: tuple[IgnoreRule, ...] = ()
    timeout_seconds: Annotated[int, Field(ge=10, le=86_400)] = Field(
        default=600, description="how long a version may take to become healthy")
    on_failure: Literal["Rollback", "Hold"] = Field(
        default="Rollback",
        description="a version that does not become healthy: back to the last good bundle, "
                    "or left as it is for someone to look at")
    prune_volumes: bool = Field(
        default=False, description="delete the add-on's PersistentVolumeClaims with it")


class ClusterProfile(Model):
    """The profile as the agent gets it: its add-ons, each pointing at its bundle."""

    name: AddonName
    version: Annotated[str, Field(min_length=1, max_length=64)]
    addons: tuple[Addon, ...] = ()

    @model_validator(mode="after")
    def _unique_addons(self) -> ClusterProfile:
        names = [a.name for a in self.addons]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"add-on names must be unique; repeated: {', '.join(dupes)}")
        return self


# -- the bundle ----------------------------------------------------------------------------
class Hook(Model):
    """A Helm hook: applied at its phase in weight order, waited for, deleted per policy."""

    phase: HookPhase
    weight: int = 0
    delete_policies: tuple[DeletePolicy, ...] = ("before-hook-creation",)
    object: dict[str, Any]


class Bundle(Model):
    """One add-on version, rendered: its objects in apply order and its hooks. Encoded as
    canonical JSON (sorted keys, no spaces), so the same content always has the same digest."""

    api_version: Literal["outpost.io/v1alpha1"] = "outpost.io/v1alpha1"
    kind: Literal["AddonBundle"] = "AddonBundle"
    name: AddonName
    version: Annotated[str, Field(min_length=1, max_length=128)]
    objects: tuple[dict[str, Any], ...] = ()
    hooks: tuple[Hook, ...] = ()

    @model_validator(mode="after")
    def _objects(self) -> Bundle:
        seen: set[tuple[str, str, str, str]] = set()
        for where, obj in [*((f"objects[{i}]", o) for i, o in enumerate(self.objects)),
                           *((f"hooks[{i}]", h.object) for i, h in enumerate(self.hooks))]:
            meta = obj.get("metadata")
            if not (isinstance(obj.get("apiVersion"), str) and isinstance(obj.get("kind"), str)
                    and isinstance(meta, dict) and meta.get("name")):
                raise ValueError(f"{where} must have apiVersion, kind and metadata.name")
            key = (str(obj["apiVersion"]).rpartition("/")[0], str(obj["kind"]),
                   str(meta.get("namespace") or ""), str(meta["name"]))
            if where.startswith("objects") and key in seen:
                raise ValueError(f"{where} ({key[1]} {key[3]}) appears twice")
            seen.add(key)
        return self

    def encode(self) -> bytes:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False).encode()


class BundleError(ValueError):
    """A bundle that does not match its reference or cannot be read."""


def decode_bundle(data: bytes, ref: BundleRef) -> Bundle:
    """The bundle in `data`, once its digest and size are those the signed spec names."""
    if len(data) != ref.size:
        raise BundleError(f"bundle {ref.digest} has {len(data)} bytes, the spec says {ref.size}")
    got = digest_of(data)
    if got != ref.digest:
        raise BundleError(f"bundle digest mismatch: the spec says {ref.digest}, the bytes are "
                          f"{got}")
    try:
        return Bundle.model_validate_json(data)
    except ValidationError as e:
        raise BundleError(f"bundle {ref.digest} is not a valid AddonBundle: "
                          f"{e.errors()[0]['msg']} at {e.errors()[0]['loc']}") from e
