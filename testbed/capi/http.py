"""The simulated controllers' only way to the cluster: its HTTP API, as a real controller has.

One aiohttp session authenticated as the testbed's admin (a token on the emulator, a client
certificate on a real control plane), discovery of the served kinds, list and watch, and the
writes a controller makes (create, update, update of status, delete). A refused write raises the
server's `ApiError`, carrying its code and reason.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client

from testbed.apiserver.errors import ApiError

Obj = dict[str, Any]


@dataclass(frozen=True)
class ServedType:
    """A kind as discovery serves it (the preferred version of its group)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, ns: str | None = None, name: str | None = None, sub: str | None = None,
             ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and ns:
            base += f"/namespaces/{quote(ns)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if sub:
            base += f"/{sub}"
        return base


class KubeHttp:
    """Requests to one cluster's API under one field manager."""

    def __init__(self, configuration: client.Configuration, manager: str) -> None:
        self.host = (configuration.host or "").rstrip("/")
        self.manager = manager
        self._headers: dict[str, str] = {}
        token = (configuration.api_key or {}).get("BearerToken")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._tls: ssl.SSLContext | None = None
        if configuration.ssl_ca_cert:
            self._tls = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if configuration.cert_file:
                self._tls.load_cert_chain(configuration.cert_file, configuration.key_file)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(ssl=self._tls or False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Obj | None = None,
                      params: dict[str, str] | None = None, timeout: float = 30.0, *,
                      content_type: str = "application/json") -> Obj:
        data = None if body is None else json.dumps(body).encode()
        async with self._http().request(method, self.host + path, data=data, params=params,
                                        headers={"Content-Type": content_type},
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            data = await r.read()
            if r.status >= 300:
                raise _error(r.status, data)
            out: Obj = json.loads(data) if data else {}
            return out

    # -- discovery ---------------------------------------------------------------------------
    async def served_types(self, groups: tuple[str, ...]) -> list[ServedType]:
        """The kinds of these API groups ("" the core group), each at its group's preferred
        version; subresources left out."""
        out: list[ServedType] = []
        wanted: list[tuple[str, str]] = []
        if "" in groups:
            wanted.append(("", "/api/v1"))
        listing = await self.request("GET", "/apis")
        for g in listing.get("groups") or []:
            if any(g["name"] == want or g["name"].endswith("." + want) for want in groups
                   if want):
                preferred = g["preferredVersion"]["groupVersion"]
                wanted.append((g["name"], f"/apis/{preferred}"))
        for group, path in wanted:
            try:
                doc = await self.request("GET", path)
            except ApiError as e:
                if e.code == 404:  # a group going away between the two reads
                    continue
                raise
            version = doc["groupVersion"].rpartition("/")[2]
            for r in doc.get("resources") or []:
                if "/" not in r["name"]:
                    out.append(ServedType(group, version, r["kind"], r["name"],
                                          bool(r["namespaced"])))
        return out

    # -- reads ---------------------------------------------------------------------------
    async def list(self, t: ServedType) -> tuple[list[Obj], str]:
        """Every object of the kind (paged), stamped with apiVersion and kind, and the list's
        resourceVersion."""
        items: list[Obj] = []
        params = {"limit": "500"}
        while True:
            page = await self.request("GET", t.path(), params=params)
            for o in page.get("items") or []:
                o["apiVersion"], o["kind"] = t.api_version(), t.kind
                items.append(o)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items, str(page["metadata"]["resourceVersion"])
            params = {"limit": "500", "continue": token}

    def watch(self, t: ServedType, rv: str, timeout: int) -> AsyncIterator[Obj]:
        """The events of a watch from `rv` (bookmarks included), until the server ends it."""
        return self.stream(t.path(), {"watch": "true", "resourceVersion": rv,
                                      "allowWatchBookmarks": "true",
                                      "timeoutSeconds": str(timeout)})

    async def stream(self, path: str, params: dict[str, str]) -> AsyncIterator[Obj]:
        """The events of one watch request (`params` name it), until the server ends it."""
        limit = float(params.get("timeoutSeconds", 300)) + 30
        async with self._http().get(self.host + path, params=params,
                                    timeout=aiohttp.ClientTimeout(total=limit,
                                                                  sock_read=limit)) as r:
            if r.status >= 300:
                raise _error(r.status, await r.read())
            async for line in r.content:
                if line.strip():
                    yield json.loads(line)

    # -- writes ----------------------------------------------------------------------------
    def _params(self) -> dict[str, str]:
        return {"fieldManager": self.manager}

    async def create(self, t: ServedType, ns: str | None, body: Obj) -> Obj:
        body = {**body, "apiVersion": t.api_version(), "kind": t.kind}
        return _stamped(t, await self.request("POST", t.path(ns), body, self._params()))

    async def update(self, t: ServedType, obj: Obj, *, status: bool = False) -> Obj:
        m = obj["metadata"]
        body = {**obj, "apiVersion": t.api_version(), "kind": t.kind}
        return _stamped(t, await self.request(
            "PUT", t.path(m.get("namespace"), m["name"], "status" if status else None), body,
            self._params()))

    async def delete(self, t: ServedType, ns: str | None, name: str, uid: str | None) -> None:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        await self.request("DELETE", t.path(ns, name), body)


def _stamped(t: ServedType, obj: Obj) -> Obj:
    obj["apiVersion"], obj["kind"] = t.api_version(), t.kind
    return obj


def _error(code: int, data: bytes) -> ApiError:
    try:
        status = json.loads(data)
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    return ApiError(code, str(status.get("reason") or ""),
                    str(status.get("message") or data[:200].decode(errors="replace")),
                    status.get("details"))
