"""The gateway's REST API: a thin façade over the OutpostCluster resources, for automation
that does not speak Kubernetes.

It validates, writes the resource and answers: creating a cluster creates an OutpostCluster,
a spec change replaces its spec (compare-and-set), a deletion deletes it; the controller does
the slow work, so answers to changes are 202 with an operation to follow. Reads come from the
same informer cache as the controller's. Anything the controller would later fail on for
certain (a downgrade, a provider switch) is refused here, with a message that says what to fix.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar
from weakref import WeakKeyDictionary

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from pydantic import BaseModel, ValidationError

from agent.kube import AlreadyExists, Conflict, Invalid, KubeError, Transient
from agent.kube import resources as r
from agent.spec import ClusterSpec, path_gap, version_tuple
from agent.spec.base import DNS_LABEL, Namespace

from ..clusters import MANAGER, ClusterRequest, OutpostClusterSpec, spec_hash
from ..profiles import read_capped
from ..publish import ObservedStatus, PublishUnavailable
from ..state import ClusterRecord, StepRecord, Unreadable, UnreadableRecord, now
from ..store import NotSynced, OutpostClusters
from .models import (
    UNREADABLE,
    ClusterDetail,
    ClusterList,
    ClusterSummary,
    Health,
    Operation,
    Step,
)
from .openapi import build_openapi
from .problems import FieldError, Problem, field_errors, invalid

log = logging.getLogger("outpost.gateway.api")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StatusSource = Callable[[], Mapping[str, ObservedStatus]]

MIB: Final = 1024 * 1024
MAX_CLUSTER_NAME: Final = 40


@dataclass
class ApiDeps:
    """Everything the API needs, injected so tests can run it against an emulated cluster."""

    fleet: OutpostClusters
    statuses: StatusSource  # newest agent reports by cluster; a StatusCollector will do
    tokens: Collection[str]
    ready: Callable[[], bool] = lambda: True
    live: Callable[[], tuple[bool, str]] = lambda: (True, "ok")
    """(alive, why) for /healthz: the supervisor's view of the gateway's background tasks."""
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    max_body_bytes: int = MIB
    stale_after: float = 90.0
    """An agent silent for longer is shown disconnected (it reports every 30s by default)."""
    conflict_retries: int = 5
    clock: Callable[[], datetime] = now
    upload: Callable[[bytes], Awaitable[str]] | None = None
    """Stores uploaded add-on content, returns its digest (None: uploads are not served)."""
    max_upload_bytes: int = 64 * MIB


DEPS: Final = web.AppKey("deps", ApiDeps)


# -- metrics -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _HttpMetrics:
    requests: Counter
    duration: Histogram


_METRICS: WeakKeyDictionary[CollectorRegistry, _HttpMetrics] = WeakKeyDictionary()


def _metrics(registry: CollectorRegistry) -> _HttpMetrics:
    """One set per registry: several apps may share one (tests, a restarted listener)."""
    found = _METRICS.get(registry)
    if found is None:
        found = _HttpMetrics(
            requests=Counter("outpost_gateway_http_requests",
                             "HTTP requests answered, by method, route template and status",
                             ["method", "route", "code"], registry=registry),
            duration=Histogram("outpost_gateway_http_request_duration_seconds",
                               "Time to answer HTTP requests, by method and route template",
                               ["method", "route"], registry=registry))
        _METRICS[registry] = found
    return found


def _route(request: web.Request) -> str:
    """The route template, never the raw path: cluster names must not become label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _metrics_middleware(m: _HttpMetrics) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as e:
            code = e.status
            raise
        finally:
            route = _route(request)
            m.requests.labels(request.method, route, str(code)).inc()
            m.duration.labels(request.method, route).observe(time.perf_counter() - start)

    return middleware


# -- errors and auth ---------------------------------------------------------------------------
@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as p:
        return p.response(request.path)
    except UnreadableRecord as e:
        return _unreadable(e.problem).response(request.path)
    except NotSynced as e:
        return Problem(503, "not-synced", str(e), headers={"Retry-After": "2"}
                       ).response(request.path)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _from_http_error(request, e).response(request.path)
    except Transient as e:
        log.warning("%s %s: management cluster unavailable: %s", request.method,
                    request.path, e)
        return Problem(503, "management-unavailable", "the management cluster did not answer "
                       f"({e}); nothing was changed, retry shortly",
                       headers={"Retry-After": "5"}).response(request.path)
    except KubeError as e:
        log.error("%s %s: management cluster error: %s", request.method, request.path, e)
        return Problem(502, "management-error", f"the management cluster refused the "
                       f"gateway's request: {e}").response(request.path)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return Problem(500, "internal-error", "the gateway failed unexpectedly; the error is "
                       "in its log").response(request.path)


def _unreadable(u: Unreadable) -> Problem:
    """A record that exists but cannot be read is the gateway's stored state gone bad, not a
    fault of the request: 500, with a type of its own and the repair in the detail. An
    OutpostCluster that cannot be worked (invalid spec, missing profile) is the resource's
    state: 409, with what to fix."""
    if u.kind != "ConfigMap":
        return Problem(409, "cluster-not-workable", f"cluster {u.name!r}: {u.describe()}. To "
                       f"fix it, {u.remedy()}", title="The cluster cannot be worked now")
    return Problem(500, "record-unreadable", f"the record of cluster {u.name!r} cannot be "
                   f"read, so the gateway skips this cluster: {u.describe()}. To fix it, "
                   f"{u.remedy()}", title="The cluster's record cannot be read")


def _from_http_error(request: web.Request, e: web.HTTPException) -> Problem:
    if e.status == 404:
        return Problem(404, "no-such-route", f"there is no {request.path}; the routes are "
                       "listed in /openapi.json")
    if e.status == 405:
        allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
        return Problem(405, "method-not-allowed", f"{request.method} is not supported on "
                       f"{request.path}; use {allowed}", headers={"Allow": allowed})
    if e.status == 413:
        return _too_large(request)
    return Problem(e.status, "http-error", e.text or e.reason)


def _too_large(request: web.Request) -> Problem:
    limit = request.app[DEPS].max_body_bytes
    size = f" of {request.content_length} bytes" if request.content_length else ""
    return Problem(413, "body-too-large", f"the request body{size} exceeds the limit of "
                   f"{limit} bytes; a cluster spec is far smaller, so check what is being sent")


def _auth_middleware(tokens: Collection[str]) -> Any:
    accepted = [t.encode() for t in tokens if t]
    challenge = 'Bearer realm="outpost"'

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header:
            raise Problem(401, "unauthenticated", "this route needs an API token: send "
                          "'Authorization: Bearer <token>'",
                          headers={"WWW-Authenticate": challenge})
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise Problem(401, "unauthenticated", "the Authorization header must be "
                          "'Bearer <token>' (one token, no other scheme)",
                          headers={"WWW-Authenticate": challenge + ', error="invalid_request"'})
        given = token.encode()
        # Compare against every token, in constant time, so timing reveals nothing.
        matches = [hmac.compare_digest(given, t) for t in accepted]
        if not any(matches):
            raise Problem(403, "forbidden", "this API token is not accepted by the gateway"
                          + ("" if accepted else " (no tokens are configured)"))
        return await handler(request)

    return middleware


# -- request helpers ---------------------------------------------------------------------------
async def _json_body(request: web.Request) -> Any:
    deps = request.app[DEPS]
    ctype = request.headers.get("Content-Type")
    if ctype is not None:
        mime = request.content_type
        if mime != "application/json" and not mime.endswith("+json"):
            raise Problem(415, "unsupported-media-type", f"the body is {mime}; send JSON with "
                          "'Content-Type: application/json'")
    if request.content_length is not None and request.content_length > deps.max_body_bytes:
        raise _too_large(request)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    if not raw.strip():
        raise Problem(400, "malformed-json", "the request body is empty; send a JSON object")
    try:
        return json.loads(raw.decode("utf-8-sig"))  # JSON is UTF-8 (RFC 8259); allow a BOM
    except UnicodeDecodeError as e:
        raise Problem(400, "malformed-json", f"the body is not UTF-8 text: {e.reason} at byte "
                      f"{e.start}") from None
    except json.JSONDecodeError as e:
        raise Problem(400, "malformed-json", f"the body is not valid JSON: {e.msg} at line "
                      f"{e.lineno} column {e.colno}") from None


def _validate(model: type[M], body: Any, what: str) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise invalid(model, e, what=what) from None


def _spec_invalid(err: ValidationError, what: str) -> Problem:
    """Errors found only once the whole spec is assembled, in the client's field names."""
    errors = [FieldError(field="name" if e.field == "clusterName" else e.field,
                         message=e.message)
              for e in field_errors(ClusterSpec, err)]
    listing = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return Problem(422, "invalid-request", f"{what} is not consistent: {listing}",
                   title="The request body is not valid", errors=errors)


def _cluster_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if len(name) > MAX_CLUSTER_NAME or not DNS_LABEL.match(name):
        raise Problem(404, "not-found", f"there is no cluster named {name!r}: cluster names "
                      f"are DNS labels of at most {MAX_CLUSTER_NAME} characters")
    return name


def _href(name: str) -> str:
    return f"/v1/clusters/{name}"


def _json(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, headers=headers,
                        body=model.model_dump_json(by_alias=True, exclude_none=True),
                        content_type="application/json")


def _operation(name: str, phase: str, revision: int) -> web.Response:
    op = Operation(name=name, phase=phase, revision=revision,  # type: ignore[arg-type]
                   href=_href(name))
    return _json(op, 202, {"Location": op.href})


def _accepted(rec: ClusterRecord) -> web.Response:
    return _operation(rec.name, rec.phase, rec.spec.revision)


async def _record(deps: ApiDeps, name: str) -> ClusterRecord:
    rec = await deps.fleet.get(name)
    if rec is None:
        raise Problem(404, "not-found", f"there is no cluster named {name!r}; "
                      "GET /v1/clusters lists them")
    return rec


def _refused(e: Invalid, what: str) -> Problem:
    """The management API's own validation (the CRD schema and its rules) refused a write."""
    return Problem(422, "invalid-request", f"{what} was refused by the management cluster: {e}",
                   title="The request body is not valid")


# -- views --------------------------------------------------------------------------------------
def _summary_fields(deps: ApiDeps, rec: ClusterRecord, obs: ObservedStatus | None
                    ) -> dict[str, Any]:
    report = obs.report if obs else None
    fresh = obs is not None and (
        deps.clock() - obs.last_seen).total_seconds() <= deps.stale_after
    return {
        "name": rec.name, "namespace": rec.spec.namespace, "phase": rec.phase,
        "desired_revision": rec.spec.revision, "published_revision": rec.published_revision,
        "applied_revision": report.applied_revision if report else None,
        "observed_revision": report.observed_revision if report else None,
        "in_sync": bool(report and report.applied_revision == rec.spec.revision),
        "connected": bool(report and report.connected and fresh),
        "last_seen": obs.last_seen if obs else None,
        "agent_phase": report.phase if report else None,
        "last_error": report.last_error if report else None,
        "conditions": list(report.conditions) if report else [],
        "failed_reason": rec.failed_reason,
        "bootstrap_error": rec.last_error,
    }


def _unreadable_summary(deps: ApiDeps, u: Unreadable, obs: ObservedStatus | None
                        ) -> ClusterSummary:
    """The fleet view's row for a record it cannot read: what is wrong, and whatever the
    cluster's agent still reports under that name."""
    report = obs.report if obs else None
    fresh = obs is not None and (
        deps.clock() - obs.last_seen).total_seconds() <= deps.stale_after
    return ClusterSummary(
        name=u.name, phase=UNREADABLE, in_sync=False,
        connected=bool(report and report.connected and fresh),
        applied_revision=report.applied_revision if report else None,
        observed_revision=report.observed_revision if report else None,
        last_seen=obs.last_seen if obs else None,
        agent_phase=report.phase if report else None,
        last_error=report.last_error if report else None,
        conditions=list(report.conditions) if report else [],
        unreadable_reason=f"{u.describe()}. To fix it, {u.remedy()}")


def _step(s: StepRecord) -> Step:
    took = (s.finished_at - s.started_at).total_seconds() if s.finished_at else None
    return Step(phase=s.phase, started_at=s.started_at, finished_at=s.finished_at,
                duration_seconds=took, detail=s.detail)


# -- handlers -----------------------------------------------------------------------------------
async def create_cluster(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    req = _validate(ClusterRequest, await _json_body(request), "the cluster request")
    try:
        spec = req.to_spec(req.name, req.namespace, 1, None)
    except ValidationError as e:
        raise _spec_invalid(e, "the cluster request") from None
    await deps.fleet.synced()
    existing = deps.fleet.owner_of(req.name)
    if existing is not None:
        raise Problem(409, "already-exists", f"cluster {req.name!r} already exists (namespace "
                      f"{existing['metadata'].get('namespace')}, phase "
                      f"{(existing.get('status') or {}).get('phase', 'Requested')}); choose "
                      f"another name, or change it with PUT {_href(req.name)}/spec")
    await deps.fleet.kube.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": req.namespace}},
                                field_manager=MANAGER)
    try:
        await deps.fleet.create(req.body())
    except AlreadyExists:
        raise Problem(409, "already-exists", f"cluster {req.name!r} already exists; choose "
                      f"another name, or change it with PUT {_href(req.name)}/spec") from None
    except Invalid as e:
        raise _refused(e, "the cluster request") from None
    log.info("cluster %s requested (%s, Kubernetes %s)", req.name,
             spec.infrastructure.provider, spec.kubernetes_version)
    return _operation(req.name, "Requested", 1)


async def list_clusters(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    scan = await deps.fleet.scan()
    statuses = deps.statuses()
    items = [ClusterSummary(**_summary_fields(deps, rec, statuses.get(rec.name)))
             for rec in scan.records]
    items += [_unreadable_summary(deps, u, statuses.get(u.name)) for u in scan.unreadable]
    items.sort(key=lambda s: s.name)
    return _json(ClusterList(items=items))


async def get_cluster(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    rec = await _record(deps, _cluster_name(request))
    obs = deps.statuses().get(rec.name)
    detail = ClusterDetail(**_summary_fields(deps, rec, obs), spec=rec.spec,
                           steps=[_step(s) for s in rec.steps], created_at=rec.created_at,
                           updated_at=rec.updated_at, status=obs.report if obs else None)
    obj = deps.fleet.owner_of(rec.name) or {}
    return _json(detail, headers={"ETag": _etag(obj)})


def _etag(obj: Mapping[str, Any]) -> str:
    """The OutpostCluster's generation: it changes with every spec change, taken by the
    controller yet or not (two changes before it looks may share one revision)."""
    return f'"{int((obj.get("metadata") or {}).get("generation") or 0)}"'


def _if_match(request: web.Request) -> int | None:
    """The generation the client based its change on (from the ETag of GET), if it says."""
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise Problem(400, "bad-if-match", f"If-Match must be the ETag of GET "
                      f"/v1/clusters/<name> (a quoted number like \"3\"), not {value!r}")
    return int(text)


def _without_identity(name: str, body: Any) -> Any:
    """Accept the cluster's own name in a spec body (a GET round trip), refuse any other."""
    if not isinstance(body, dict):
        return body
    errors = [FieldError(field=k, message=f"is {body[k]!r}, but this is cluster {name!r}: a "
                         "cluster cannot be renamed; request a new one with POST /v1/clusters")
              for k in ("name", "clusterName") if k in body and body[k] != name]
    if "revision" in body:
        errors.append(FieldError(field="revision", message="is assigned by the gateway; leave "
                                 "it out (send If-Match with the ETag of GET to guard against "
                                 "concurrent changes)"))
    if errors:
        raise Problem(422, "immutable-field", "; ".join(f"{e.field} {e.message}"
                                                        for e in errors),
                      title="The request changes what cannot change", errors=errors)
    return {k: v for k, v in body.items() if k not in ("name", "clusterName")}


class SpecUpdate(OutpostClusterSpec):
    """The whole desired spec of an existing cluster (day 2): an OutpostCluster's spec; the
    name comes from the URL and the revision from the gateway. `namespace` may be repeated
    (a GET round trip) but not changed."""

    namespace: Namespace | None = None


def _check_change(current: ClusterSpec, update: SpecUpdate) -> ClusterSpec:
    try:
        spec = update.to_spec(current.cluster_name, current.namespace, current.revision + 1,
                              current.profile)
    except ValidationError as e:
        raise _spec_invalid(e, "the new spec") from None
    errors: list[FieldError] = []
    if update.namespace is not None and update.namespace != current.namespace:
        errors.append(FieldError(field="namespace", message=(
            f"cannot change from {current.namespace!r} to {update.namespace!r}: the cluster's "
            "Cluster API objects live there; to move a cluster, request a new one")))
    old_p, new_p = current.infrastructure.provider, spec.infrastructure.provider
    if new_p != old_p:
        errors.append(FieldError(field="infrastructure.provider", message=(
            f"cannot change from {old_p!r} to {new_p!r}: machines cannot move between "
            "providers; request a new cluster instead")))
    if version_tuple(spec.kubernetes_version) < version_tuple(current.kubernetes_version):
        errors.append(FieldError(field="kubernetesVersion", message=(
            f"{spec.kubernetes_version} is older than {current.kubernetes_version}: a "
            "Kubernetes control plane cannot be downgraded (etcd and stored API versions only "
            f"move forward); keep {current.kubernetes_version} or upgrade")))
    else:
        gap = path_gap(current.kubernetes_version, spec.kubernetes_version,
                       spec.upgrade_policy.path)
        if gap is not None:
            errors.append(FieldError(field="upgrade.path", message=(
                f"names no {gap} release, but the upgrade from {current.kubernetes_version} to "
                f"{spec.kubernetes_version} goes through {gap} (kubeadm upgrades one minor at "
                f"a time): add the tested {gap}.<patch> release to stop at")))
    if errors:
        raise Problem(422, "change-not-applicable", "this change cannot be applied: " + "; ".join(
            f"{e.field} {e.message}" for e in errors), title="The change cannot be applied",
            errors=errors)
    return spec


async def update_spec(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    name = _cluster_name(request)
    expected = _if_match(request)
    body = _without_identity(name, await _json_body(request))
    update = _validate(SpecUpdate, body, "the spec update")
    new_body = update.model_dump(by_alias=True, mode="json", exclude_defaults=True,
                                 exclude={"namespace"})
    for _ in range(deps.conflict_retries):
        rec = await _record(deps, name)
        obj = deps.fleet.owner_of(name)
        if obj is None:
            continue
        if rec.phase in ("Failed", "Deleting"):
            why = f": {rec.failed_reason}" if rec.failed_reason else ""
            raise Problem(409, "cluster-not-changeable", f"cluster {name!r} is {rec.phase}{why};"
                          " its spec can no longer change")
        generation = int(obj["metadata"].get("generation") or 0)
        if expected is not None and expected != generation:
            raise Problem(412, "revision-changed", f"the spec changed since the ETag "
                          f"\"{expected}\" was read (it is now \"{generation}\"); GET it again "
                          "and redo the change")
        spec = _check_change(rec.spec, update)
        if OutpostClusterSpec.model_validate(obj.get("spec") or {}) == OutpostClusterSpec(
                **{k: getattr(update, k) for k in OutpostClusterSpec.model_fields}):
            return _accepted(rec)  # nothing changes: no new revision to roll out
        status = obj.get("status") or {}
        taken = int(status.get("desiredRevision") or 0)
        # The revision the controller will give this content: the one it has if it is the
        # content it took, else the next (changes it has not seen yet share that number).
        revision = taken if taken and spec_hash(spec) == status.get("specHash") else taken + 1
        try:
            await deps.fleet.replace_spec(obj, new_body)
        except Conflict:
            continue  # the controller saved the status meanwhile: re-read, re-check, retry
        except Invalid as e:
            raise _refused(e, "the spec update") from None
        log.info("cluster %s: spec changed (revision %d follows)", name, revision)
        return _operation(name, rec.phase, revision)
    raise _busy(name)


def _busy(name: str) -> Problem:
    return Problem(409, "concurrent-change", f"the OutpostCluster {name!r} kept changing "
                   "while saving; retry the request", headers={"Retry-After": "1"})


async def delete_cluster(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    name = _cluster_name(request)
    await deps.fleet.synced()
    obj = deps.fleet.owner_of(name)
    if obj is None:
        raise Problem(404, "not-found", f"there is no cluster named {name!r}; "
                      "GET /v1/clusters lists them")
    await deps.fleet.delete(name)
    log.info("cluster %s: deletion requested", name)
    status = obj.get("status") or {}
    return _operation(name, "Deleting", int(status.get("desiredRevision") or 1))


async def upload_content(request: web.Request) -> web.Response:
    """PUT /v1/content: add-on content (multi-document YAML, a chart .tgz) stored under its
    sha256, which a ClusterProfile then names (`upload`, or `helm.archive`)."""
    deps = request.app[DEPS]
    if deps.upload is None:
        raise Problem(501, "not-implemented", "this gateway stores no uploads")
    if request.content_length is not None and request.content_length > deps.max_upload_bytes:
        raise Problem(413, "body-too-large", f"uploads are limited to {deps.max_upload_bytes} "
                      "bytes; serve larger content over https and name its url instead")
    data = await read_capped(request.content, deps.max_upload_bytes)
    if data is None:
        raise Problem(413, "body-too-large", f"uploads are limited to {deps.max_upload_bytes} "
                      "bytes; serve larger content over https and name its url instead")
    if not data:
        raise Problem(400, "empty-body", "send the content as the request body")
    try:
        digest = await deps.upload(data)
    except PublishUnavailable as e:
        raise Problem(503, "unavailable", f"cannot store the upload now: {e}",
                      headers={"Retry-After": "5"}) from e
    return web.json_response({"digest": digest, "size": len(data)}, status=201)


async def healthz(request: web.Request) -> web.Response:
    alive, why = request.app[DEPS].live()
    if not alive:
        raise Problem(503, "not-alive", f"a background task of the gateway is stuck or down: "
                      f"{why}; the process should be restarted")
    return _json(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    if not request.app[DEPS].ready():
        raise Problem(503, "not-ready", "the gateway is starting or stopping",
                      headers={"Retry-After": "1"})
    return _json(Health(status="ready"))


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[DEPS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_OPENAPI], content_type="application/json")


_OPENAPI: Final = web.AppKey("openapi", bytes)


def make_app(deps: ApiDeps) -> web.Application:
    """The API as an aiohttp application; the caller runs it (AppRunner, TestServer)."""
    app = web.Application(
        client_max_size=deps.max_body_bytes,
        middlewares=[_metrics_middleware(_metrics(deps.registry)), _problems,
                     _auth_middleware(deps.tokens)])
    app[DEPS] = deps
    app[_OPENAPI] = json.dumps(build_openapi(ClusterRequest, SpecUpdate),
                               separators=(",", ":")).encode()
    app.router.add_post("/v1/clusters", create_cluster)
    app.router.add_get("/v1/clusters", list_clusters, allow_head=False)
    app.router.add_get("/v1/clusters/{name}", get_cluster, allow_head=False)
    app.router.add_delete("/v1/clusters/{name}", delete_cluster)
    app.router.add_put("/v1/clusters/{name}/spec", update_spec)
    app.router.add_put("/v1/content", upload_content)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app
