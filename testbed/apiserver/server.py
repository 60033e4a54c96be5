"""The HTTP face of the emulated API: routing, content negotiation, watch streaming, faults.

Everything here speaks the wire protocol of kube-apiserver (paths, query parameters, media types,
Status bodies, chunked watch streams) so unmodified clients (kubernetes_asyncio, kubectl) work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from kubernetes_asyncio import client

from ..crds import load_documents
from ..kubeconfig import kubeconfig, write_kubeconfig
from . import discovery, errors, fieldmanager, openapi
from .errors import ApiError
from .faults import Faults, Outage, control
from .gc import ClusterControllers
from .patch import PatchError, apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from .registry import Registry, now_rfc3339
from .resources import ResourceType
from .selectors import (
    FieldSelector,
    SelectorError,
    label_selector_string,
    parse_field_selector,
    parse_label_selector,
)
from .store import Obj, TooOld, Watcher, WatchFilter
from .table import to_table
from .workloads import WorkloadControllers

log = logging.getLogger(__name__)

JSON = "application/json"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}


# The testbed's cluster administrator, as the real backend's admin certificate names it
# (testbed/controlplane/pki.py: CN outpost-admin, O system:masters).
ADMIN = {"username": "outpost-admin", "groups": ["system:masters", "system:authenticated"]}
REVIEW_STATUS: dict[str, Any] = {
    "SelfSubjectAccessReview": {"allowed": True},
    "SubjectAccessReview": {"allowed": True},
    "LocalSubjectAccessReview": {"allowed": True},
    "SelfSubjectRulesReview": {
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
        "incomplete": False},
    "SelfSubjectReview": {"userInfo": ADMIN},
}


@dataclass
class Route:
    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    sub: str | None
    watch: bool = False  # the deprecated /watch/ path form


def parse_path(path: str) -> Route | None:
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    watching = bool(rest) and rest[0] == "watch"
    if watching:
        rest = rest[1:]
    if not rest:
        return None
    if (rest[0] == "namespaces" and len(rest) >= 3
            and not (len(rest) == 3 and group == "" and rest[2] in ("status", "finalize"))):
        ns, rest = rest[1], rest[2:]
    else:
        ns = None
    if len(rest) > 3 or (watching and len(rest) > 2):
        return None
    return Route(group, version, ns, rest[0], rest[1] if len(rest) > 1 else None,
                 rest[2] if len(rest) > 2 else None, watching)


def _verb(request: web.Request, route: Route) -> str:
    """The request's verb as Kubernetes names it (audit logs, RBAC)."""
    method = request.method
    if method == "GET":
        if route.watch or request.query.get("watch") in ("1", "true"):
            return "watch"
        return "get" if route.name else "list"
    if method == "DELETE" and not route.name:
        return "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, method.lower())


def _status_ok(rt: ResourceType, name: str, uid: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rt.plural, "uid": uid}
    if rt.group:
        details["group"] = rt.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details}


def _uint(text: str) -> bool:
    """Whether Go's strconv.ParseUint takes `text` (ASCII digits only)."""
    return text.isascii() and text.isdigit()


def _dig(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = [p for p in path.split(".") if p]
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


class ApiServer(Outage):
    """One emulated cluster's API server, listening on loopback over plain HTTP."""

    def __init__(self, name: str = "cluster", *, host: str = "127.0.0.1", port: int = 0,
                 bookmark_interval: float = 5.0, history: int = 20_000,
                 gc_delay: float = 0.02) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.registry = Registry()
        self.registry.store._history_max = history
        self.store = self.registry.store
        self.faults = Faults()
        self.controllers = ClusterControllers(self.registry, delay=gc_delay)
        self.workloads = WorkloadControllers(self.registry)
        self.bookmark_interval = bookmark_interval
        self.fresh_wait = 3.0  # how long a read at a future resourceVersion waits before 504
        self.requests: Counter[str] = Counter()
        #: Resource requests by (client, verb, resource[/subresource]), as an audit log counts
        #: them: the client is the User-Agent's product ("outpost-gateway/1.0" -> its first part).
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.down = False
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._streams: set[web.StreamResponse] = set()
        self._openapi_cache: dict[str, object] = {}

    # -- life cycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()
        self.controllers.start()
        self.workloads.start()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if not self.port:
            server = self._site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await self.controllers.stop()
        await self.workloads.stop()
        self.store.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def cut_watches(self) -> int:
        return self.store.close_watches()

    # -- the face every testbed backend shows (testbed.backends.KubeApi) ----------------------
    backend = "emulated"

    @property
    def watcher_count(self) -> int:
        return self.store.watcher_count

    async def install_crds(self, paths: list[Path]) -> int:
        return self.load_crds(paths)

    def client_configuration(self) -> client.Configuration:
        """A kubernetes_asyncio configuration for this server (a bearer token, as a real one
        would want)."""
        cfg = client.Configuration()
        cfg.host = self.url
        cfg.api_key = {"BearerToken": "testbed"}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cfg

    def kubeconfig(self, context: str | None = None) -> dict[str, Any]:
        return kubeconfig(context or self.name, self.url)

    def write_kubeconfig(self, path: Path, context: str | None = None) -> Path:
        return write_kubeconfig(path, context or self.name, self.url)

    def load_crds(self, paths: list[Path]) -> int:
        """Register CRDs from YAML files (each may hold several documents)."""
        crd_rt = self.registry.type_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        n = 0
        for path in paths:
            for doc in load_documents(path):
                if doc.get("kind") == "CustomResourceDefinition":
                    self.registry.create(crd_rt, None, doc, manager="testbed")
                    n += 1
        return n

    # -- dispatch --------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests[request.method] += 1
        try:
            if path.startswith("/testbed/"):
                return await self._control(request)
            self.faults.check(request.method, path, request.headers.get("User-Agent", ""))
            delay = self.faults.delay_for(request.method, path)
            if delay:
                await self.faults.hold(delay)
            resp = self._discovery(request, path)
            if resp is not None:
                return resp
            route = parse_path(path)
            if route is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self.calls[(self._client(request), _verb(request, route),
                        route.plural + (f"/{route.sub}" if route.sub else ""))] += 1
            return await self._resource(request, route)
        except ApiError as e:
            headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
            return web.json_response(e.status(), status=e.code, headers=headers)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # answer as kube-apiserver does, and keep serving
            log.exception("internal error on %s %s", request.method, path)
            return web.json_response(ApiError(500, "InternalError",
                                              f"Internal error occurred: {e}").status(), status=500)

    def _discovery(self, request: web.Request, path: str) -> web.Response | None:
        p = path.rstrip("/") or "/"
        types = self.registry.types()
        if p == "/version":
            return web.json_response(discovery.KUBE_VERSION)
        if p in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if p == "/api":
            return web.json_response(discovery.api_versions(f"{self.host}:{self.port}"))
        if p == "/api/v1":
            return web.json_response(discovery.resource_list(types, "", "v1"))
        if p == "/apis":
            return web.json_response(discovery.api_group_list(types))
        segs = p.split("/")[1:]
        if segs[0] == "apis" and len(segs) == 2:
            group = discovery.api_group(types, segs[1])
            if group is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.json_response(group)
        if segs[0] == "apis" and len(segs) == 3:
            doc = discovery.resource_list(types, segs[1], segs[2])
            if not doc["resources"] and segs[2] not in discovery.group_versions(types).get(
                    segs[1], []):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.json_response(doc)
        if p.startswith("/openapi/v3"):
            return self._openapi(p)
        if p == "/openapi/v2":
            # kubectl falls back to it to validate kinds it finds no v3 document for (a custom
            # resource whose CRD is in the same apply). It holds no definitions, which makes
            # kubectl skip client-side validation, as it does for kinds a real document lacks.
            if "protobuf" in request.headers.get("Accept", ""):
                return web.Response(body=openapi.V2_PROTOBUF,
                                    content_type=openapi.V2_PROTOBUF_TYPE)
            return web.json_response(openapi.v2_document())
        return None

    def _openapi(self, p: str) -> web.Response:
        version = self.registry.types_version
        if self._openapi_cache.get("version") != version:
            self._openapi_cache = {"version": version}
        cache = self._openapi_cache
        key = p.removeprefix("/openapi/v3").strip("/")
        if key not in cache:
            doc = (openapi.root_document(self.registry.types()) if not key
                   else openapi.gv_document(self.registry.types(), key))
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            cache[key] = json.dumps(doc)
        return web.Response(text=str(cache[key]), content_type=JSON)

    async def compact(self) -> None:
        """Compact the emulated etcd at its current revision. A real kube-apiserver serves
        watches and exact lists from its watch cache, which an etcd compaction leaves alone
        (measured on v1.37.2), so this changes nothing a client sees here either: only a read
        older than the history the store holds (what the watch cache holds) answers 410. To
        expire that history, as a watch cache does in time, use `store.compact()`."""

    # -- fault control ---------------------------------------------------------------------
    async def _control(self, request: web.Request) -> web.Response:
        if request.path == "/testbed/stats":
            return web.json_response({"requests": dict(self.requests), "rv": self.store.rv,
                                      "watchers": self.store.watcher_count,
                                      "faultsInjected": self.faults.injected})
        if request.path != "/testbed/faults" or request.method != "POST":
            raise ApiError(404, "NotFound", "unknown testbed control endpoint")
        body = await request.json()
        action = body.get("action")
        if action == "cut-watches":
            return web.json_response({"cut": self.cut_watches()})
        if action == "compact":
            self.store.compact()
            return web.json_response({"ok": True})
        return web.json_response(control(self.faults, body, extra=("cut-watches", "compact")))

    # -- resources -------------------------------------------------------------------------
    async def _resource(self, request: web.Request, r: Route) -> web.StreamResponse:
        rt = self.registry.type_for(r.group, r.version, r.plural)
        if r.namespace is not None and not rt.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rt.namespaced and r.namespace is None and r.name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if r.sub is not None and r.sub not in self._subresources(rt):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        q = request.query
        m = request.method
        if rt.create_only:
            if m != "POST" or r.name is not None or r.watch:
                raise errors.method_not_allowed()
            return await self._review(request, rt, r)
        if r.watch:
            if m != "GET":
                raise errors.method_not_allowed()
            return await self._watch(request, rt, r)
        if r.name is None:
            if m == "GET":
                if q.get("watch", "").lower() in ("true", "1"):
                    return await self._watch(request, rt, r)
                return await self._list(request, rt, r)
            if m == "POST":
                return await self._create(request, rt, r)
            if m == "DELETE":
                return await self._delete_collection(request, rt, r)
            raise errors.method_not_allowed()
        if r.sub == "scale":
            return await self._scale(request, rt, r)
        if m == "GET":
            await self._wait_for_rv(self._parse_rv(q.get("resourceVersion", "")))
            obj = self.registry.get(rt, r.namespace, r.name, r.version)
            return self._respond(request, rt, r.version, obj)
        if m == "PUT":
            body = await self._object_body(request, rt)
            obj = self.registry.update(rt, r.namespace, r.name, body,
                                       subresource=self._sub(r), manager=self._manager(request),
                                       version=r.version, dry_run=self._dry(request))
            return self._respond(request, rt, r.version, obj)
        if m == "PATCH":
            return await self._patch(request, rt, r)
        if m == "DELETE":
            return await self._delete(request, rt, r)
        raise errors.method_not_allowed()

    @staticmethod
    def _subresources(rt: ResourceType) -> set[str]:
        subs = set()
        if rt.status:
            subs.add("status")
        if rt.scale:
            subs.add("scale")
        if rt.kind == "Namespace":
            subs.add("finalize")
        return subs

    @staticmethod
    def _sub(r: Route) -> str | None:
        return "status" if r.sub == "status" else None

    @staticmethod
    def _dry(request: web.Request) -> bool:
        return "All" in request.query.getall("dryRun", [])

    @staticmethod
    def _client(request: web.Request) -> str:
        ua = request.headers.get("User-Agent", "unknown")
        return ua.split("/")[0][:128] or "unknown"

    @classmethod
    def _manager(cls, request: web.Request) -> str:
        return request.query.get("fieldManager") or cls._client(request)

    async def _body(self, request: web.Request, yaml_ok: bool = False) -> Any:
        ctype = request.content_type
        raw = await request.read()
        if not raw:
            raise errors.bad_request("the body of the request was empty")
        if ctype == "application/vnd.kubernetes.protobuf":
            # kubectl's typed subcommands (create namespace/configmap/secret...) send protobuf.
            from .protobuf import ProtobufError, decode

            try:
                return decode(raw)
            except ProtobufError as e:
                raise ApiError(415, "UnsupportedMediaType", str(e)) from e
        try:
            if not yaml_ok:
                return json.loads(raw)
            if raw.lstrip()[:1] in (b"{", b"["):
                # JSON is YAML too, and most appliers send JSON: parse it the fast way.
                with contextlib.suppress(ValueError):
                    return json.loads(raw)
            return yaml.load(raw, Loader=_YAML_LOADER)
        except (ValueError, yaml.YAMLError) as e:
            raise errors.bad_request(f"the body of the request could not be decoded: {e}") from e

    async def _object_body(self, request: web.Request, rt: ResourceType) -> Any:
        """The body of a create or update: JSON (also when no Content-Type is sent), YAML, or
        protobuf for built-in kinds; anything else is 415 as the real decoder answers."""
        ctype = request.content_type if request.headers.get("Content-Type") else JSON
        accepted = [JSON, "application/yaml"]
        if not rt.custom:
            accepted.append("application/vnd.kubernetes.protobuf")
        if ctype not in accepted:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an "
                           "unknown format - accepted media types include: "
                           + ", ".join(accepted))
        return await self._body(request, yaml_ok=ctype == "application/yaml")

    def _respond(self, request: web.Request, rt: ResourceType, version: str, obj: Obj,
                 status: int = 200) -> web.Response:
        if "as=Table" in request.headers.get("Accept", ""):
            table = to_table(rt, version, [obj], request.query.get("includeObject", "Metadata"),
                             {"resourceVersion": obj["metadata"].get("resourceVersion", "")})
            return web.json_response(table, status=status)
        return web.json_response(obj, status=status)

    # -- list / watch ----------------------------------------------------------------------
    def _selectors(self, request: web.Request, rt: ResourceType, r: Route) -> WatchFilter:
        try:
            labels = parse_label_selector(request.query.get("labelSelector"))
            fields = parse_field_selector(request.query.get("fieldSelector"), rt.field_labels)
        except SelectorError as e:
            raise errors.bad_request(str(e)) from e
        if r.name is not None:  # a watch of one object: /watch/.../<plural>/<name>
            fields = FieldSelector((*fields.terms, ("metadata.name", True, r.name)))
        return WatchFilter(rt.key, r.namespace, labels, fields)

    async def _list(self, request: web.Request, rt: ResourceType, r: Route) -> web.Response:
        flt = self._selectors(request, rt, r)
        q = request.query
        limit = int(q.get("limit") or 0)
        rv = q.get("resourceVersion", "")
        match = q.get("resourceVersionMatch", "")
        self._validate_list_options(rv, match, q.get("continue", ""))
        if not _uint(rv or "0"):
            # A list parses it in the watch cache, which answers 400 (a get or a watch: 500).
            raise errors.bad_request(f'invalid resource version: resourceVersion: Invalid value: '
                                     f'"{rv}": strconv.ParseUint: parsing "{rv}": invalid syntax')
        start_after: tuple[str, str] | None = None
        at: int | None = None  # the revision to read at; None reads the latest state
        if q.get("continue"):
            if rv not in ("", "0"):
                raise errors.bad_request("specifying resource version is not allowed when "
                                         "using continue")
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"].encode()))
                start_after = (token["ns"], token["name"])
                at = int(token["rv"])
            except (ValueError, KeyError, TypeError) as e:
                raise errors.bad_request(f"continue key is not valid: {e}") from e
        elif rv not in ("", "0"):
            want = self._parse_rv(rv)
            await self._wait_for_rv(want)
            if match == "Exact":
                at = want
        try:
            source = (self.store.items_at(rt.key, at, r.namespace) if at is not None
                      else list(self.store.items(rt.key, r.namespace)))
        except TooOld as e:
            if start_after is not None:
                raise ApiError(410, "Expired", "The provided continue parameter is too old "
                               "to display a consistent list result. You can start a new "
                               "list without the continue parameter.") from e
            raise ApiError(410, "Expired", "The resourceVersion for the provided list is too "
                           "old.") from e
        list_rv = at if at is not None else self.store.rv
        items: list[Obj] = []
        more = 0
        last: tuple[str, str] | None = None
        for obj in source:
            meta = obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if start_after is not None and key <= start_after:
                continue
            if not flt.matches(obj):
                continue
            if limit and len(items) >= limit:
                more += 1
                continue
            items.append(obj)
            last = key
        list_meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if more and last is not None:
            # Every page of a paginated list is read at the first page's revision.
            list_meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"rv": list_rv, "ns": last[0], "name": last[1]}).encode()).decode()
            if not flt.labels.requirements and not flt.fields.terms:
                list_meta["remainingItemCount"] = more  # a selector makes the count unknown
        served = [self._serve(rt, o, r.version) for o in items]
        if "as=Table" in request.headers.get("Accept", ""):
            return web.json_response(to_table(rt, r.version, served,
                                              q.get("includeObject", "Metadata"), list_meta))
        return web.json_response({"kind": f"{rt.kind}List", "apiVersion": rt.api_version(
            r.version), "metadata": list_meta, "items": served})

    @staticmethod
    def _validate_list_options(rv: str, match: str, cont: str) -> None:
        causes = []
        if match:
            if not rv:
                causes.append(("FieldValueForbidden", "Forbidden: resourceVersionMatch is "
                               "forbidden unless resourceVersion is provided"))
            if cont:
                causes.append(("FieldValueForbidden", "Forbidden: resourceVersionMatch is "
                               "forbidden when continue is provided"))
            if match not in ("Exact", "NotOlderThan"):
                causes.append(("FieldValueNotSupported", f'Unsupported value: "{match}": '
                               'supported values: "Exact", "NotOlderThan", ""'))
            if match == "Exact" and rv == "0":
                causes.append(("FieldValueForbidden", 'Forbidden: resourceVersionMatch "exact" '
                               'is forbidden for resourceVersion "0"'))
        if causes:
            raise errors.invalid("ListOptions.meta.k8s.io", "meta.k8s.io", "ListOptions", "", [
                {"reason": reason, "message": msg, "field": "resourceVersionMatch"}
                for reason, msg in causes])

    @staticmethod
    def _parse_rv(rv: str) -> int:
        """A resourceVersion from a query; a malformed one fails as etcd's versioner fails it
        (500, with no reason, which is what real servers answer)."""
        if rv in ("", "0"):
            return 0
        if not _uint(rv):
            raise ApiError(500, "", f'resourceVersion: Invalid value: "{rv}": strconv.ParseUint: '
                           f'parsing "{rv}": invalid syntax')
        return int(rv)

    async def _wait_for_rv(self, want: int) -> None:
        """A read at least as fresh as `want` waits a while for the store to get there, then
        answers 504 as the watch cache does (clients retry after the advertised delay)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fresh_wait
        while self.store.rv < want:
            if loop.time() >= deadline:
                raise ApiError(504, "Timeout", f"Timeout: Too large resource version: {want}, "
                               f"current: {self.store.rv}",
                               {"causes": [{"reason": "ResourceVersionTooLarge",
                                            "message": "Too large resource version"}],
                                "retryAfterSeconds": 1}, retry_after=1)
            await asyncio.sleep(0.02)

    @staticmethod
    def _serve(rt: ResourceType, obj: Obj, version: str) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = rt.api_version(version)
        out["kind"] = rt.kind
        return out

    async def _watch(self, request: web.Request, rt: ResourceType,
                     r: Route) -> web.StreamResponse:
        flt = self._selectors(request, rt, r)
        q = request.query
        rv = q.get("resourceVersion", "")
        initial = q.get("sendInitialEvents", "").lower() == "true"
        since: int | None = None if initial else (self._parse_rv(rv) or None)
        table = "as=Table" in request.headers.get("Accept", "")
        resp = web.StreamResponse(headers={"Content-Type": JSON,
                                           "Cache-Control": "no-cache, private"})
        try:
            timeout = float(int(q.get("timeoutSeconds") or 0))
        except ValueError as e:
            raise errors.bad_request(f'strconv.ParseInt: parsing "{q["timeoutSeconds"]}": '
                                     "invalid syntax") from e
        # No timeout, or 0, means the server's own: a random span of its minimum request timeout.
        timeout = timeout or random.uniform(1800, 3600)
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        try:
            watcher, backlog = self.store.watch(flt, since)
        except TooOld as e:
            await resp.prepare(request)
            err = ApiError(410, "Expired", str(e)).status()
            await resp.write(json.dumps({"type": "ERROR", "object": err}).encode() + b"\n")
            await resp.write_eof()
            return resp
        # Snapshot before any await so no event can slip between the state and the stream.
        snapshot = ([self._serve(rt, o, r.version) for o in self.store.items(rt.key, r.namespace)
                     if flt.matches(o)] if since is None else [])
        start_rv = self.store.rv
        for ev in backlog:
            watcher.offer(ev)
        self._streams.add(resp)
        try:
            await resp.prepare(request)
            for obj in snapshot:
                await self._send(resp, rt, r.version, "ADDED", obj, table, request)
            if initial and bookmarks:
                mark = {"kind": rt.kind, "apiVersion": rt.api_version(r.version),
                        "metadata": {"resourceVersion": str(start_rv), "annotations": {
                            "k8s.io/initial-events-end": "true"}}}
                await resp.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode()
                                 + b"\n")
            await self._pump(resp, rt, r.version, watcher, timeout, bookmarks, table, request)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.unwatch(watcher)
            self._streams.discard(resp)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    async def _pump(self, resp: web.StreamResponse, rt: ResourceType, version: str,
                    watcher: Watcher, timeout: float, bookmarks: bool, table: bool,
                    request: web.Request) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def next_mark(now: float) -> float | None:
            # As the watch cache schedules them: every bookmark interval, but one falls 2 s
            # before the watch times out; none once that moment has passed (so a watch of
            # under 2 s gets none).
            at = min(now + self.bookmark_interval, deadline - 2.0)
            return at if at > now else None

        mark_at = next_mark(loop.time()) if bookmarks else None
        while True:
            now = loop.time()
            left = deadline - now
            if left <= 0:
                return
            wait = left if mark_at is None else max(min(left, mark_at - now), 0.001)
            try:
                item = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if mark_at is not None and loop.time() >= mark_at:
                    # A bookmark carries the latest resourceVersion, and only once that is past
                    # the one the watch started from.
                    if self.store.rv > watcher.after:
                        mark = {"kind": rt.kind, "apiVersion": rt.api_version(version),
                                "metadata": {"resourceVersion": str(self.store.rv)}}
                        await resp.write(json.dumps({"type": "BOOKMARK", "object": mark})
                                         .encode() + b"\n")
                    mark_at = next_mark(loop.time())
                continue
            if item is None:
                return
            etype, obj = item
            await self._send(resp, rt, version, etype, self._serve(rt, obj, version), table,
                             request)

    async def _send(self, resp: web.StreamResponse, rt: ResourceType, version: str, etype: str,
                    obj: Obj, table: bool, request: web.Request) -> None:
        payload: Obj = obj
        if table:
            payload = to_table(rt, version, [obj], request.query.get("includeObject", "Object"),
                               {"resourceVersion": obj["metadata"].get("resourceVersion", "")})
        await resp.write(json.dumps({"type": etype, "object": payload}).encode() + b"\n")

    # -- reviews ---------------------------------------------------------------------------
    async def _review(self, request: web.Request, rt: ResourceType, r: Route) -> web.Response:
        """Answer an access or identity review. Every client of the emulated cluster is its
        administrator (as the real backend's admin certificate is), so every access is allowed."""
        try:
            body = await self._object_body(request, rt)
        except ApiError as e:
            # kubectl sends reviews as protobuf, which the decoder here does not know for these
            # kinds; the answer needs nothing from the body, so it is given without its echo.
            if e.code != 415 or request.content_type != "application/vnd.kubernetes.protobuf":
                raise
            body = {}
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request was in an unknown format")
        out = {**body, "apiVersion": rt.api_version(r.version), "kind": rt.kind}
        meta = dict(out.get("metadata") or {})
        meta["creationTimestamp"] = None
        if r.namespace:
            meta["namespace"] = r.namespace
        out["metadata"] = meta
        out["status"] = REVIEW_STATUS[rt.kind]
        return web.json_response(out, status=201)

    # -- writes ----------------------------------------------------------------------------
    async def _create(self, request: web.Request, rt: ResourceType, r: Route) -> web.Response:
        body = await self._object_body(request, rt)
        if rt.custom and self.registry.crd_terminating(rt):
            name = str(((body if isinstance(body, dict) else {}).get("metadata") or {}).get(
                "name") or "")
            raise ApiError(403, "Forbidden", f'{rt.qualified_resource} "{name}" is forbidden: '
                           "create not allowed while custom resource definition is terminating",
                           {"name": name, "group": rt.group, "kind": rt.plural})
        if isinstance(body, dict):
            self._strict_fields(request, rt, r.version, body)
        obj = self.registry.create(rt, r.namespace, body, manager=self._manager(request),
                                   version=r.version, dry_run=self._dry(request))
        return self._respond(request, rt, r.version, obj, status=201)

    def _strict_fields(self, request: web.Request, rt: ResourceType, version: str,
                       body: Obj) -> None:
        """fieldValidation=Strict: unknown fields are an error instead of being pruned."""
        mode = request.query.get("fieldValidation", "")
        if mode not in ("Strict", "Warn") or not rt.custom or version not in rt.schemas:
            return
        from . import schema

        pruned = schema.prune(copy.deepcopy(body), rt.schemas[version])
        if pruned and mode == "Strict":
            unknown = ", ".join(f'unknown field "{p}"' for p in pruned)
            raise errors.bad_request(f"{rt.kind} in version \"{version}\" cannot be handled as "
                                     f"a {rt.kind}: strict decoding error: {unknown}")

    async def _patch(self, request: web.Request, rt: ResourceType, r: Route) -> web.Response:
        ctype = request.content_type
        kind = PATCH_TYPES.get(ctype)
        if kind is None or (kind == "strategic" and rt.custom):
            raise errors.unsupported_media_type(ctype)
        assert r.name is not None
        body = await self._body(request, yaml_ok=kind == "apply")
        manager = self._manager(request)
        dry = self._dry(request)
        if kind == "apply":
            return self._apply(request, rt, r, body, dry)
        live = self.registry.get(rt, r.namespace, r.name, r.version)
        try:
            if kind == "json":
                patched = apply_json_patch(live, body)
            elif kind == "merge":
                patched = apply_merge_patch(live, body)
            else:
                patched = apply_strategic_merge_patch(live, body,
                                                      self.registry.lists_for(rt, r.version))
        except PatchError as e:
            raise ApiError(e.code, e.reason, e.message) from e
        # A patch applies to the version it was read at unless it names one itself.
        precondition = live["metadata"]["resourceVersion"]
        if not isinstance(patched.get("metadata"), dict):
            raise errors.bad_request("metadata must be an object")
        if patched["metadata"].get("resourceVersion") == precondition:
            patched["metadata"].pop("resourceVersion")
        obj = self.registry.update(rt, r.namespace, r.name, patched, subresource=self._sub(r),
                                   manager=manager, version=r.version, dry_run=dry,
                                   precondition_rv=precondition, uid_precondition=False)
        return self._respond(request, rt, r.version, obj)

    def _apply(self, request: web.Request, rt: ResourceType, r: Route, body: Any,
               dry: bool) -> web.Response:
        assert r.name is not None
        manager = request.query.get("fieldManager")
        if not manager:
            raise errors.invalid("PatchOptions.meta.k8s.io", "meta.k8s.io", "PatchOptions", "", [{
                "reason": "FieldValueRequired", "message": "Required value: is required for "
                "apply patch", "field": "fieldManager"}])
        if not isinstance(body, dict):
            raise errors.bad_request("the body of an apply patch must be a YAML or JSON object")
        force = request.query.get("force", "").lower() in ("true", "1")
        existing = self.store.peek(rt.key, (r.namespace or "", r.name))
        live = self.registry.get(rt, r.namespace, r.name, r.version) if existing else None
        config = copy.deepcopy(body)
        meta = config.setdefault("metadata", {})
        if meta.get("name") not in (None, r.name):
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match "
                                     f"the name on the URL ({r.name})")
        meta["name"] = r.name
        if rt.namespaced:
            meta["namespace"] = r.namespace
        config.setdefault("apiVersion", rt.api_version(r.version))
        config.setdefault("kind", rt.kind)
        self._strict_fields(request, rt, r.version, config)
        managed = list((live or {}).get("metadata", {}).get("managedFields") or [])
        try:
            merged, new_managed = fieldmanager.server_side_apply(
                live, config, managed, manager=manager, force=force,
                api_version=rt.api_version(r.version), subresource=self._sub(r),
                lists=self.registry.lists_for(rt, r.version),
                status_subresource=rt.status, now=now_rfc3339())
        except fieldmanager.ApplyConflict as e:
            status = e.to_status()
            raise ApiError(409, "Conflict", status["message"], status.get("details")) from e
        except PatchError as e:
            raise ApiError(e.code, e.reason, e.message) from e
        if live is None:
            if r.sub is not None:
                raise errors.not_found(rt.group, rt.plural, r.name)
            obj = self.registry.create(rt, r.namespace, merged, manager=manager,
                                       version=r.version, dry_run=dry,
                                       managed_fields=new_managed)
            return self._respond(request, rt, r.version, obj, status=201)
        merged["metadata"].pop("resourceVersion", None)
        asked_uid = (body.get("metadata") or {}).get("uid")
        if asked_uid and r.sub is None:
            merged["metadata"]["uid"] = asked_uid  # a changed uid is invalid, as in any patch
        # A resourceVersion in the applied configuration is a precondition, as in any patch.
        asked = (body.get("metadata") or {}).get("resourceVersion")
        obj = self.registry.update(rt, r.namespace, r.name, merged, subresource=self._sub(r),
                                   manager=manager, version=r.version, dry_run=dry,
                                   precondition_rv=str(asked) if asked else
                                   live["metadata"]["resourceVersion"],
                                   managed_fields=new_managed, uid_precondition=False)
        return self._respond(request, rt, r.version, obj)

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    opts = json.loads(raw)
                except ValueError as e:
                    raise errors.bad_request(f"invalid DeleteOptions: {e}") from e
        if request.query.get("propagationPolicy"):
            opts["propagationPolicy"] = request.query["propagationPolicy"]
        if opts.get("orphanDependents") is True and "propagationPolicy" not in opts:
            opts["propagationPolicy"] = "Orphan"
        if "All" in request.query.getall("dryRun", []) or "All" in (opts.get("dryRun") or []):
            opts["dryRun"] = ["All"]
        return opts

    async def _delete(self, request: web.Request, rt: ResourceType, r: Route) -> web.Response:
        assert r.name is not None
        opts = await self._delete_options(request)
        obj, gone = self.registry.delete(rt, r.namespace, r.name,
                                         propagation=opts.get("propagationPolicy"),
                                         preconditions=opts.get("preconditions"),
                                         dry_run=bool(opts.get("dryRun")), version=r.version)
        if gone and not rt.custom and rt.kind not in ("Pod", "Namespace", "Deployment",
                                                      "DaemonSet", "StatefulSet", "ReplicaSet",
                                                      "Job", "Service"):
            return web.json_response(_status_ok(rt, r.name, obj["metadata"]["uid"]))
        return web.json_response(obj, status=200)

    async def _delete_collection(self, request: web.Request, rt: ResourceType,
                                 r: Route) -> web.Response:
        flt = self._selectors(request, rt, r)
        opts = await self._delete_options(request)
        deleted = []
        for obj in list(self.store.items(rt.key, r.namespace)):
            if flt.matches(obj):
                out, _ = self.registry.delete(rt, obj["metadata"].get("namespace"),
                                              obj["metadata"]["name"],
                                              propagation=opts.get("propagationPolicy"),
                                              dry_run=bool(opts.get("dryRun")),
                                              version=r.version)
                deleted.append(out)
        return web.json_response({"kind": f"{rt.kind}List", "apiVersion": rt.api_version(
            r.version), "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})

    # -- scale -----------------------------------------------------------------------------
    def _to_scale(self, rt: ResourceType, obj: Obj) -> Obj:
        assert rt.scale is not None
        meta = obj["metadata"]
        status: dict[str, Any] = {"replicas": _dig(obj, rt.scale["statusReplicasPath"]) or 0}
        sel_path = rt.scale.get("labelSelectorPath")
        if sel_path:
            sel = _dig(obj, sel_path)
            if sel is None and not rt.custom:
                sel = label_selector_string(_dig(obj, ".spec.selector"))
            if sel:
                status["selector"] = sel
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp") if k in meta},
                "spec": {"replicas": _dig(obj, rt.scale["specReplicasPath"]) or 0},
                "status": status}

    async def _scale(self, request: web.Request, rt: ResourceType, r: Route) -> web.Response:
        assert r.name is not None and rt.scale is not None
        live = self.registry.get(rt, r.namespace, r.name, r.version)
        scale = self._to_scale(rt, live)
        if request.method == "GET":
            return web.json_response(scale)
        if request.method == "PUT":
            new_scale = await self._object_body(request, rt)
        elif request.method == "PATCH":
            kind = PATCH_TYPES.get(request.content_type)
            body = await self._body(request, yaml_ok=kind == "apply")
            try:
                if kind == "json":
                    new_scale = apply_json_patch(scale, body)
                elif kind in ("merge", "strategic", "apply"):
                    new_scale = apply_merge_patch(scale, body)
                else:
                    raise errors.unsupported_media_type(request.content_type)
            except PatchError as e:
                raise ApiError(e.code, e.reason, e.message) from e
        else:
            raise errors.method_not_allowed()
        replicas = (new_scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid("Scale.autoscaling", "autoscaling", "Scale", r.name, [{
                "reason": "FieldValueInvalid", "field": "spec.replicas",
                "message": f"Invalid value: {json.dumps(replicas)}: must be greater than or "
                           "equal to 0"}])
        want_rv = (new_scale.get("metadata") or {}).get("resourceVersion")
        new = copy.deepcopy(live)
        _set(new, rt.scale["specReplicasPath"], replicas)
        obj = self.registry.update(rt, r.namespace, r.name, new, manager=self._manager(request),
                                   version=r.version, dry_run=self._dry(request),
                                   precondition_rv=want_rv or live["metadata"]["resourceVersion"])
        return web.json_response(self._to_scale(rt, obj))
