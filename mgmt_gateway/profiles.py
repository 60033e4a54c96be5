"""ClusterProfiles into the spec's add-ons: where each add-on's content comes from, and its
rendering into bundles for one cluster (its Kubernetes version, its values).

Sources: objects inline in the resource; a multi-document YAML at an http(s) URL (optionally
pinned by sha256); content uploaded to the gateway (`outpostctl profile push`, or the API),
named by its sha256; a Helm chart from a repository, an OCI registry or an uploaded archive.
Fetching and rendering are I/O, done once per distinct input (`Sources.prepare`, awaited by the
controller before a pass); building the spec from them is pure and synchronous.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import Field, model_validator

from agent.spec.addons import (
    Addon,
    AddonName,
    ClusterProfile,
    Digest,
    HealthRule,
    IgnoreRule,
    digest_of,
)
from agent.spec.base import Model, Namespace
from agent.spec.models import version_tuple

from .render.addons import RenderError, build_bundle
from .render.helm import Helm
from .render.yamldocs import Obj, parse_documents

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 64 * 1024 * 1024


class HelmSource(Model):
    """A chart: `chart` from `repo` (an http(s) chart repository), or an `oci://` reference in
    `chart`, or an uploaded `.tgz` named by `archive` (its sha256)."""

    repo: str | None = Field(default=None, pattern=r"^https?://")
    chart: str = Field(default="", max_length=512)
    version: str | None = Field(default=None, max_length=128)
    archive: Digest | None = None
    release: str | None = Field(default=None, max_length=53,
                                description="the release name (default: the add-on's name)")
    values: dict[str, Any] = Field(default_factory=dict)
    plain_http: bool = Field(default=False, description="pull an oci:// chart over plain HTTP "
                                                        "(a registry without TLS)")

    @model_validator(mode="after")
    def _one_origin(self) -> HelmSource:
        if self.archive is None and not self.chart:
            raise ValueError("a chart needs `chart` (with `repo`, or an oci:// reference) or "
                             "an uploaded `archive`")
        if self.repo and self.chart.startswith("oci://"):
            raise ValueError("an oci:// chart takes no `repo`")
        if self.archive is None and not self.repo and not self.chart.startswith("oci://"):
            raise ValueError(f"chart {self.chart!r}: give its `repo` URL, an oci:// reference "
                             "or an uploaded `archive`")
        if self.plain_http and not self.chart.startswith("oci://"):
            raise ValueError("plainHttp applies to oci:// charts only")
        if self.archive is None and not self.version:
            raise ValueError(f"chart {self.chart!r}: pin its `version` (a profile version "
                             "must always render the same)")
        return self


class ProfileAddon(Model):
    """One add-on of a ClusterProfile, as the resource holds it: where its content comes from
    and how the agent keeps it. The signed spec gets a reference to its rendered bundle."""

    name: AddonName
    version: str = Field(min_length=1, max_length=128)
    order: int = Field(default=0, ge=0, le=1000)
    namespace: Namespace | None = None
    manifests: tuple[dict[str, Any], ...] = Field(
        default=(), description="the add-on's objects, in the order to apply them")
    url: str | None = Field(default=None, pattern=r"^https?://",
                            description="multi-document YAML to fetch")
    sha256: Digest | None = Field(default=None, description="what `url` must hold")
    upload: Digest | None = Field(default=None, description="uploaded multi-document YAML")
    helm: HelmSource | None = None
    health: tuple[HealthRule, ...] = ()
    ignore: tuple[IgnoreRule, ...] = ()
    timeout_seconds: int = Field(default=600, ge=10, le=86_400)
    on_failure: Literal["Rollback", "Hold"] = "Rollback"
    prune_volumes: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ProfileAddon:
        given = [k for k, v in (("manifests", self.manifests), ("url", self.url),
                                ("upload", self.upload), ("helm", self.helm)) if v]
        if len(given) > 1:
            raise ValueError(f"add-on {self.name}: one source only, got {', '.join(given)}")
        if self.sha256 is not None and self.url is None:
            raise ValueError(f"add-on {self.name}: sha256 pins a `url`; there is none")
        return self

    @property
    def inline(self) -> bool:
        return not (self.url or self.upload or self.helm)


@dataclass(frozen=True)
class RenderContext:
    """What a cluster brings to rendering: its Kubernetes version and its values per add-on."""

    kube_version: str
    values: Mapping[str, Any]  # add-on name -> values merged over the profile's


@dataclass(frozen=True)
class Profile:
    """A ClusterProfile rendered for one cluster: the spec's add-ons and the bundles' bytes."""

    spec: ClusterProfile
    bundles: Mapping[str, bytes]  # digest -> the bundle's bytes


class NotRendered(Exception):
    """A source has not been fetched or rendered yet (`Sources.prepare` does it)."""


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's value merge: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(
            out.get(k), Mapping) else v
    return out


def addons_of(obj: Obj) -> list[ProfileAddon]:
    """The add-ons of a ClusterProfile object; raises ValidationError."""
    return [ProfileAddon.model_validate(a) for a in (obj.get("spec") or {}).get("addons") or ()]


class Capabilities:
    """The API versions the CRDs of an add-on's lower orders will serve, given to Helm as
    `--api-versions` (as `group/version` and `group/version/Kind`, the two forms charts test
    with `.Capabilities.APIVersions.Has`). The gateway never asks the cluster (rendering works
    for a site that is offline), so a chart that renders its ServiceMonitors only when the
    monitoring CRDs exist renders them when the profile installs those CRDs first."""

    def __init__(self) -> None:
        self._by_order: dict[int, set[str]] = {}

    def add(self, order: int, objects: list[Obj]) -> None:
        served = self._by_order.setdefault(order, set())
        for o in objects:
            if o.get("kind") != "CustomResourceDefinition" or not str(
                    o.get("apiVersion", "")).startswith("apiextensions.k8s.io/"):
                continue
            spec = o.get("spec") or {}
            group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
            for v in spec.get("versions") or ():
                if group and isinstance(v, Mapping) and v.get("served", True) and v.get("name"):
                    served.add(f"{group}/{v['name']}")
                    if kind:
                        served.add(f"{group}/{v['name']}/{kind}")

    def below(self, order: int) -> tuple[str, ...]:
        return tuple(sorted(set().union(*(v for o, v in self._by_order.items() if o < order))))


def by_order(addons: list[ProfileAddon]) -> list[ProfileAddon]:
    """The add-ons in the order they are rendered: lower orders first (stable)."""
    return sorted(addons, key=lambda a: a.order)


class Sources:
    """Fetches and renders add-on sources, each distinct input once (a bounded cache)."""

    def __init__(self, helm: Helm | None, content: Callable[[str], Awaitable[bytes | None]],
                 *, max_entries: int = 512) -> None:
        self.helm = helm
        #: Uploaded content by digest (the gateway's content store), None when absent.
        self.content = content
        self.max_entries = max_entries
        self._done: OrderedDict[str, list[Obj] | RenderError] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None

    def key(self, addon: ProfileAddon, ctx: RenderContext, apis: tuple[str, ...] = ()) -> str:
        values = merge(addon.helm.values if addon.helm else {},
                       ctx.values.get(addon.name) or {})
        major, minor, patch = version_tuple(ctx.kube_version)
        body = [addon.model_dump(mode="json", include={"url", "sha256", "upload", "helm",
                                                       "namespace", "name"}),
                values, [f"v{major}.{minor}.{patch}", apis] if addon.helm else None]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def objects(self, addon: ProfileAddon, ctx: RenderContext,
                apis: tuple[str, ...] = ()) -> list[Obj]:
        """The rendered objects of a non-inline add-on; raises NotRendered or RenderError."""
        found = self._done.get(self.key(addon, ctx, apis))
        if found is None:
            raise NotRendered(addon.name)
        if isinstance(found, RenderError):
            raise found
        return found

    async def prepare(self, addons: list[ProfileAddon], ctx: RenderContext) -> None:
        """Fetch and render what `addons` need for this cluster (cached; never raises for a
        source that fails: its error is kept and reported when the spec is built). Lower
        orders first: what their CRDs serve is a capability of the higher ones."""
        caps = Capabilities()
        for addon in by_order(addons):
            if addon.inline:
                caps.add(addon.order, list(addon.manifests))
                continue
            apis = caps.below(addon.order)
            key = self.key(addon, ctx, apis)
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                if key not in self._done:
                    try:
                        result: list[Obj] | RenderError = await self._render(addon, ctx, apis)
                    except RenderError as e:
                        result = RenderError(f"add-on {addon.name}: {e}")
                        log.warning("%s", result)
                    self._done[key] = result
                    while len(self._done) > self.max_entries:
                        self._done.popitem(last=False)
            self._locks.pop(key, None)
            done = self._done.get(key)
            if isinstance(done, list):
                caps.add(addon.order, done)

    async def _render(self, addon: ProfileAddon, ctx: RenderContext,
                      apis: tuple[str, ...]) -> list[Obj]:
        source = f"add-on {addon.name}"
        if addon.upload is not None:
            return parse_documents(await self._uploaded(addon.upload), source)
        if addon.url is not None:
            return parse_documents(await self._fetch(addon.url, addon.sha256), source)
        assert addon.helm is not None
        if self.helm is None:
            raise RenderError("this gateway has no helm to render charts with (set "
                              "OUTPOST_GATEWAY_HELM)")
        h = addon.helm
        archive = (await self._uploaded_bytes(h.archive)) if h.archive else None
        chart = await self.helm.pull(repo=h.repo, chart=h.chart, version=h.version,
                                     archive=archive, plain_http=h.plain_http)
        return await self.helm.template(
            chart, release=h.release or addon.name, namespace=addon.namespace or "default",
            kube_version=ctx.kube_version, api_versions=apis,
            values=merge(h.values, ctx.values.get(addon.name) or {}))

    async def _uploaded_bytes(self, digest: str) -> bytes:
        data = await self.content(digest)
        if data is None:
            raise RenderError(f"no uploaded content {digest}: upload it first (outpostctl "
                              "profile push)")
        if digest_of(data) != digest:
            raise RenderError(f"uploaded content {digest} does not match its digest")
        return data

    async def _uploaded(self, digest: str) -> str:
        return (await self._uploaded_bytes(digest)).decode()

    async def _fetch(self, url: str, pin: str | None) -> str:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    raise RenderError(f"GET {url}: HTTP {resp.status}")
                data = await read_capped(resp.content, MAX_SOURCE_BYTES)
        except aiohttp.ClientError as e:
            raise RenderError(f"GET {url}: {e}") from e
        if data is None:
            raise RenderError(f"{url} is over {MAX_SOURCE_BYTES} bytes")
        if pin is not None and digest_of(data) != pin:
            raise RenderError(f"{url} holds {digest_of(data)}, not the pinned {pin}: the "
                              "content changed; publish a new profile version")
        return data.decode()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes (StreamReader.read(n) returns
    what is buffered, not n bytes)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def profile_of(obj: Obj, ctx: RenderContext | None = None,
               objects: Callable[[ProfileAddon, tuple[str, ...]], list[Obj]] | None = None,
               ) -> Profile:
    """The add-ons of a ClusterProfile object, rendered into bundles for a cluster; raises
    ValidationError, RenderError (naming the add-on and the object at fault), or NotRendered
    for a source `objects` (given the add-on and its Capabilities) has not got yet."""
    spec = obj.get("spec") or {}
    listed = addons_of(obj)
    caps = Capabilities()
    objects_of: dict[str, list[Obj]] = {}
    for a in by_order(listed):
        if a.inline:
            objects_of[a.name] = list(a.manifests)
        elif objects is None:
            raise NotRendered(a.name)
        else:
            objects_of[a.name] = objects(a, caps.below(a.order))
        caps.add(a.order, objects_of[a.name])
    addons: list[Addon] = []
    bundles: dict[str, bytes] = {}
    for a in listed:
        objs = objects_of[a.name]
        rendered = build_bundle(a.name, a.version, objs, namespace=a.namespace,
                                source=f"add-on {a.name}")
        bundles[rendered.ref.digest] = rendered.data
        addons.append(Addon(
            name=a.name, version=a.version, order=a.order, namespace=a.namespace,
            bundle=rendered.ref, health=a.health, ignore=a.ignore,
            timeout_seconds=a.timeout_seconds, on_failure=a.on_failure,
            prune_volumes=a.prune_volumes))
    return Profile(ClusterProfile.model_validate({
        "name": spec.get("name"), "version": spec.get("version"), "addons": addons}), bundles)
