"""`ApiKubeClient`: the `KubeClient` protocol over HTTP with kubernetes_asyncio.

It works for any resource without discovery: the URL is built from a `Resource`, and every body
and PATCH content type is explicit. The library's typed API classes are deliberately not used:
they only know built-in types, and they choose a PATCH content type from the body's Python type
(a dict goes out as json-patch, which a real server answers with 400).

Each client owns its own `Configuration` and connection pool and never touches the library's
global default, because the gateway talks to many clusters from one process.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import tempfile
from collections import Counter
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import quote

import aiohttp
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from .errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    Transient,
)
from .types import KubeClient, Obj, ObjectList, Propagation, Resource, WatchEvent

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
APPLY_PATCH: Final = "application/apply-patch+yaml"

WATCH_EVENT_TYPES: Final = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})

# Failures below HTTP: the server was not reached, or the connection broke or stalled.
_NETWORK_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError)

Query = Iterable[tuple[str, str]]


class ApiKubeClient:
    """A `KubeClient` bound to one API server.

    `requests` counts calls by verb (get, list, watch, create, apply, patch, delete, replace;
    `patch_status` counts as patch, each list page as list) so tests and benchmarks can assert
    how much a reconcile costs the API server.
    """

    def __init__(self, configuration: client.Configuration, *, request_timeout: float = 30.0,
                 user_agent: str = "outpost-agent", page_size: int = 500) -> None:
        self.configuration = configuration
        self.request_timeout = request_timeout
        self.user_agent = user_agent
        self.page_size = page_size
        self.requests: Counter[str] = Counter()
        self._api: Any = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    async def from_kubeconfig(cls, path: str | Path, context: str | None = None, *,
                              request_timeout: float = 30.0,
                              user_agent: str = "outpost-agent") -> ApiKubeClient:
        """A client for `context` (default: the current one) of a kubeconfig file. The file is
        never written back (the library would otherwise persist refreshed credentials)."""
        cfg = client.Configuration()
        try:
            await config.load_kube_config(config_file=str(path), context=context,
                                          client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, ValueError, KeyError) as e:
            raise KubeError(f"cannot load kubeconfig {path} (context {context!r}): {e}") from e
        return cls(cfg, request_timeout=request_timeout, user_agent=user_agent)

    @classmethod
    async def from_kubeconfig_data(cls, data: bytes | str, *, request_timeout: float = 30.0,
                                   user_agent: str = "outpost-agent") -> ApiKubeClient:
        """A client for the current context of a kubeconfig held in memory (a CAPI kubeconfig
        Secret). Its keys never stay on disk: TLS needs them as files, so they are written to
        a private directory (in memory where /dev/shm exists), loaded, and removed before this
        returns. Supports a CA, client certificates and bearer tokens, not exec plugins."""
        cfg = _config_from_kubeconfig(data)
        made = cls(cfg, request_timeout=request_timeout, user_agent=user_agent)
        _load_tls(made)
        return made

    @classmethod
    def from_in_cluster(cls, *, secrets_dir: str | Path = SERVICE_ACCOUNT_DIR,
                        environ: Mapping[str, str] | None = None,
                        request_timeout: float = 30.0,
                        user_agent: str = "outpost-agent") -> ApiKubeClient:
        """A client for the cluster this pod runs in: the service account's token and CA, and
        the host from KUBERNETES_SERVICE_HOST/PORT. The token file is re-read as the kubelet
        rotates it (bound tokens expire)."""
        cfg = client.Configuration()
        folder = Path(secrets_dir)
        try:
            InClusterConfigLoader(
                token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt"),
                environ=dict(os.environ if environ is None else environ),
            ).load_and_set(cfg)
        except (ConfigException, OSError) as e:
            raise KubeError(f"cannot configure in-cluster access: {e}") from e
        return cls(cfg, request_timeout=request_timeout, user_agent=user_agent)

    def _client(self) -> Any:
        # Created on first use: aiohttp sessions must be made inside a running event loop.
        if self._api is None:
            api = client.ApiClient(self.configuration)
            api.user_agent = self.user_agent
            self._api = api
        return self._api

    async def close(self) -> None:
        """Release the connection pool (open watches are cut)."""
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- reads -----------------------------------------------------------------------------
    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return _typed(res, await self._request("get", "GET", _path(res, namespace, name)))

    async def list(self, res: Resource, namespace: str | None = None, *,
                   label_selector: str | None = None) -> ObjectList:
        """All matching objects, fetched in pages of `page_size`; the list's resourceVersion is
        the one to start a watch from. Items get apiVersion/kind, which servers omit there."""
        items: builtins.list[Obj] = []
        cont = ""
        rv: str | None = None
        while True:
            query = [("limit", str(self.page_size))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if cont:
                query.append(("continue", cont))
            page = await self._request("list", "GET", _path(res, namespace), query=query)
            items.extend(_typed(res, o) for o in page.get("items") or ())
            meta = page.get("metadata") or {}
            if rv is None:  # every page is served from the first page's snapshot
                rv = str(meta.get("resourceVersion", ""))
            cont = str(meta.get("continue") or "")
            if not cont:
                return ObjectList(items, rv)

    async def watch(self, res: Resource, namespace: str | None = None, *,
                    label_selector: str | None = None, resource_version: str | None = None,
                    timeout_seconds: int = 300) -> AsyncGenerator[WatchEvent, None]:
        """Events after `resource_version` (without one, the current objects come first as
        ADDED), BOOKMARKs included. Ends when the server ends the stream; raises `Gone` when
        `resource_version` is too old, `Transient` when the connection fails or breaks.

        The request is sent on the first iteration. Cancelling the consumer closes the
        connection at once; a consumer that stops early should iterate inside
        `contextlib.aclosing(...)` so the connection is not held until garbage collection.
        """
        query = [("watch", "true"), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout_seconds))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        path = _path(res, namespace)
        what = f"watch {path}"
        # No total deadline (the server ends the stream after timeoutSeconds); a stream silent
        # for longer than that plus a margin is a dead connection.
        timeout = aiohttp.ClientTimeout(sock_connect=self.request_timeout,
                                        sock_read=timeout_seconds + self.request_timeout)
        self.requests["watch"] += 1
        resp = await self._open("GET", path, query, None, None, timeout)
        try:
            while True:
                try:
                    line = await resp.content.readline()
                except _NETWORK_ERRORS as e:
                    raise Transient(f"{what}: stream broken: {_describe(e)}") from e
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    etype, obj = event["type"], event["object"]
                except (ValueError, KeyError, TypeError) as e:
                    raise KubeError(f"{what}: undecodable event {line[:200]!r}") from e
                if etype == "ERROR":
                    status = obj if isinstance(obj, dict) else {}
                    raise _error(int(status.get("code") or 500), status, what)
                if etype not in WATCH_EVENT_TYPES or not isinstance(obj, dict):
                    raise KubeError(f"{what}: unexpected event type {etype!r}")
                yield WatchEvent(etype, obj)
        finally:
            resp.close()  # close, not release: an unfinished stream must not go back to the pool

    # -- writes ----------------------------------------------------------------------------
    async def resources(self, api_version: str) -> builtins.list[Resource]:
        """The resource types one group-version serves (discovery), subresources left out;
        NotFound when the server does not serve that group-version (yet: a CRD just created
        is served once it is Established)."""
        group, _, version = api_version.rpartition("/")
        path = f"/apis/{api_version}" if group else f"/api/{version}"
        doc = await self._request("discovery", "GET", path)
        return [Resource(group, version, str(r["name"]), str(r["kind"]),
                         bool(r.get("namespaced")))
                for r in doc.get("resources") or () if "/" not in str(r.get("name", "/"))]

    async def create(self, res: Resource, obj: Obj, *, field_manager: str | None = None) -> Obj:
        """Create `obj` in its own metadata.namespace; returns the stored object."""
        query = [("fieldManager", field_manager)] if field_manager else []
        return await self._request("create", "POST", _path(res, _namespace_of(res, obj)),
                                   query=query, body=_typed(res, obj))

    async def apply(self, res: Resource, obj: Obj, *, field_manager: str,
                    force: bool = False) -> Obj:
        """Server-side apply: `obj` is the manager's whole intent for the fields it sets (send
        no resourceVersion or managedFields unless you mean them). Creates if missing."""
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        path = _path(res, _namespace_of(res, obj), _name_of(obj))
        return await self._request("apply", "PATCH", path, query=query, body=_typed(res, obj),
                                   content_type=APPLY_PATCH)

    async def patch(self, res: Resource, name: str, patch: Mapping[str, Any],
                    namespace: str | None = None, *, field_manager: str) -> Obj:
        """JSON merge patch (RFC 7386): a null value deletes a key, lists are replaced whole."""
        return await self._request("patch", "PATCH", _path(res, namespace, name),
                                   query=[("fieldManager", field_manager)], body=dict(patch),
                                   content_type=MERGE_PATCH)

    async def patch_status(self, res: Resource, name: str, patch: Mapping[str, Any],
                           namespace: str | None = None, *, field_manager: str) -> Obj:
        """JSON merge patch of the status subresource (the main resource ignores status)."""
        return await self._request("patch", "PATCH", _path(res, namespace, name) + "/status",
                                   query=[("fieldManager", field_manager)], body=dict(patch),
                                   content_type=MERGE_PATCH)

    async def replace(self, res: Resource, obj: Obj, *, field_manager: str) -> Obj:
        """PUT the whole object; with metadata.resourceVersion set, a stale copy is a
        `Conflict`."""
        path = _path(res, _namespace_of(res, obj), _name_of(obj))
        return await self._request("replace", "PUT", path,
                                   query=[("fieldManager", field_manager)], body=_typed(res, obj))

    async def replace_status(self, res: Resource, obj: Obj, *, field_manager: str) -> Obj:
        """PUT the status subresource: `obj`'s whole status replaces the stored one (spec and
        metadata are ignored), with metadata.resourceVersion as compare-and-set."""
        path = _path(res, _namespace_of(res, obj), _name_of(obj)) + "/status"
        return await self._request("replace", "PUT", path,
                                   query=[("fieldManager", field_manager)], body=_typed(res, obj))

    async def delete(self, res: Resource, name: str, namespace: str | None = None, *,
                     propagation: Propagation = "Background", uid: str | None = None) -> None:
        """Delete; a missing object is success. With `uid`, only that incarnation of the name
        is deleted (a different one is a `Conflict`), so a stale decision cannot remove a
        successor."""
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1",
                        "propagationPolicy": propagation}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self._request("delete", "DELETE", _path(res, namespace, name), body=options)
        except NotFound:
            return

    # -- transport -------------------------------------------------------------------------
    async def _request(self, verb: str, method: str, path: str, *, query: Query = (),
                       body: Obj | None = None, content_type: str | None = None) -> Obj:
        self.requests[verb] += 1
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        resp = await self._open(method, path, query, body, content_type, timeout)
        try:
            data = await resp.read()
        except _NETWORK_ERRORS as e:
            raise Transient(f"{method} {path}: {_describe(e)}") from e
        finally:
            resp.release()
        try:
            out = json.loads(data)
        except ValueError as e:
            raise KubeError(f"{method} {path}: response is not JSON: {data[:200]!r}") from e
        if not isinstance(out, dict):
            raise KubeError(f"{method} {path}: response is not an object: {data[:200]!r}")
        return out

    async def _open(self, method: str, path: str, query: Query, body: Obj | None,
                    content_type: str | None,
                    timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        """Send one request; the 2xx response is returned unread, anything else raised."""
        headers = {"Accept": JSON}
        if body is not None:
            # Always explicit: the library would otherwise pick one from the body's type.
            headers["Content-Type"] = content_type or JSON
        try:
            resp: aiohttp.ClientResponse = await self._client().call_api(
                path, method, query_params=builtins.list(query), header_params=headers,
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout)
        except _NETWORK_ERRORS as e:
            raise Transient(f"{method} {path}: {_describe(e)}") from e
        if 200 <= resp.status < 300:
            return resp
        try:
            data = await resp.read()
        except _NETWORK_ERRORS:
            data = b""
        finally:
            resp.release()
        raise _error(resp.status, _status_body(data), f"{method} {path}")



def _load_tls(made: ApiKubeClient) -> None:
    """Hand the in-memory TLS material of `made` to its TLS context through files that exist
    only while it is read (see from_kubeconfig_data)."""
    cfg = made.configuration
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="outpost-kc-",
                                     dir=shm if shm.is_dir() else None) as tmp:
        for attr in ("ssl_ca_cert", "cert_file", "key_file"):
            pem = getattr(cfg, attr)
            if pem is not None:
                path = Path(tmp) / attr
                path.touch(mode=0o600)
                path.write_bytes(pem)
                setattr(cfg, attr, str(path))
        made._client()  # the TLS context reads the files now, and only now
        for attr in ("ssl_ca_cert", "cert_file", "key_file"):
            setattr(cfg, attr, None)


def _config_from_kubeconfig(data: bytes | str) -> client.Configuration:
    """The current context of a kubeconfig as a Configuration whose TLS material is still in
    memory (bytes in `ssl_ca_cert`, `cert_file`, `key_file`), for from_kubeconfig_data."""
    try:
        doc = yaml.safe_load(data)
        contexts = {c["name"]: c["context"] for c in doc.get("contexts") or ()}
        ctx = contexts[doc.get("current-context") or next(iter(contexts))]
        cluster = {c["name"]: c["cluster"] for c in doc["clusters"]}[ctx["cluster"]]
        user = {u["name"]: u.get("user") or {} for u in doc.get("users") or ()}.get(
            ctx.get("user"), {})
        server = str(cluster["server"]).rstrip("/")
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, StopIteration) as e:
        raise KubeError(f"the kubeconfig is not usable: {type(e).__name__}: {e}") from None
    if "exec" in user or "auth-provider" in user:
        raise KubeError("the kubeconfig authenticates with a plugin; the gateway needs client "
                        "certificates or a token")
    cfg = client.Configuration()
    cfg.host = server
    cfg.verify_ssl = not cluster.get("insecure-skip-tls-verify", False)
    try:
        for attr, key in (("ssl_ca_cert", "certificate-authority-data"),
                          ("cert_file", "client-certificate-data"),
                          ("key_file", "client-key-data")):
            source = cluster if attr == "ssl_ca_cert" else user
            if source.get(key):
                setattr(cfg, attr, base64.b64decode(source[key]))
    except (ValueError, TypeError) as e:
        raise KubeError(f"the kubeconfig holds invalid base64 data: {e}") from None
    if user.get("token"):
        cfg.api_key = {"BearerToken": str(user["token"])}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return cfg

def _path(res: Resource, namespace: str | None, name: str | None = None) -> str:
    """The URL path of a collection or, with `name`, of one object."""
    path = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
    if res.namespaced and namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    elif res.namespaced and name is not None:
        raise Invalid(f"{res.kind} {name!r} is namespaced: a namespace is required")
    path += f"/{res.plural}"
    if name is not None:
        if not name:
            raise Invalid(f"{res.kind}: empty name")
        path += f"/{quote(name, safe='')}"
    return path


def _name_of(obj: Obj) -> str:
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise Invalid("the object has no metadata.name")
    return name


def _namespace_of(res: Resource, obj: Obj) -> str | None:
    ns = (obj.get("metadata") or {}).get("namespace")
    if res.namespaced and not ns:
        raise Invalid(f"{res.kind} {(obj.get('metadata') or {}).get('name')!r} is namespaced: "
                      "metadata.namespace is required")
    return str(ns) if res.namespaced else None


def _typed(res: Resource, obj: Obj) -> Obj:
    """A shallow copy that names its apiVersion and kind (required by apply, omitted by the
    server in list items)."""
    out = dict(obj)
    out.setdefault("apiVersion", res.api_version)
    out.setdefault("kind", res.kind)
    return out


def _status_body(data: bytes) -> Obj:
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"message": data.decode("utf-8", "replace").strip()[:500]}


def _error(code: int, status: Obj, what: str) -> KubeError:
    """Our error for an HTTP code and the server's Status body."""
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "") or "(no message)"
    text = f"{what}: {code} {reason}: {message}" if reason else f"{what}: {code}: {message}"
    cls: type[KubeError]
    if code == 404:
        cls = NotFound
    elif code == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif code == 410:
        cls = Gone
    elif code in (401, 403):
        cls = Forbidden
    elif code in (408, 429) or code >= 500:
        cls = Transient
    elif 400 <= code < 500:
        cls = Invalid
    else:
        cls = KubeError
    details = status.get("details") if isinstance(status.get("details"), dict) else {}
    causes = tuple((str(c.get("field") or ""), str(c.get("message") or ""))
                   for c in (details or {}).get("causes") or () if isinstance(c, dict))
    return cls(text, code, reason, causes)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


if TYPE_CHECKING:
    def _conforms(c: ApiKubeClient) -> KubeClient:  # mypy proves the protocol is implemented
        return c
