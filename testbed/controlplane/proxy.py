"""A fault-injecting HTTPS proxy in front of a real kube-apiserver.

It gives the real backend the controls the emulator has built in, through the same `Faults`
object: fail the next N matching requests with 409/429/500/503/504, hold them (a slow API), cut
every watch stream, become unreachable and come back. Everything else passes through untouched,
byte for byte (bodies stay compressed, watch chunks are forwarded as they arrive).

Identity: a client that shows a certificate of the cluster's CA is forwarded with the admin
certificate (every client certificate the testbed issues is the admin's); a client with a bearer
token is forwarded with that token and no certificate, so RBAC sees the token's own identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from testbed.apiserver.errors import ApiError
from testbed.apiserver.faults import Faults, Outage, control

from .pki import Pki

log = logging.getLogger(__name__)

__all__ = ["FaultProxy"]

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy's own framing decides.
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "host", "content-length"}


def _is_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in ("true", "1") or "/watch/" in request.path


class FaultProxy(Outage):
    """Listens on 127.0.0.1 (HTTPS, the cluster's serving certificate) and forwards to
    `upstream`; `url` is what clients use instead of the apiserver's own address."""

    def __init__(self, upstream: str, pki: Pki, *, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.pki = pki
        self.port = port
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self.down = False
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._admin: aiohttp.ClientSession | None = None
        self._anonymous: aiohttp.ClientSession | None = None
        self._watches: set[aiohttp.ClientResponse] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def watcher_count(self) -> int:
        """Watch streams the apiserver has answered and the proxy is forwarding now."""
        return len(self._watches)

    def _server_tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.pki.serving_cert), str(self.pki.serving_key))
        ctx.load_verify_locations(str(self.pki.ca_cert))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # tokens are welcome too
        return ctx

    def _client_tls(self, admin: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if admin:
            ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    async def start(self) -> None:
        def session(admin: bool) -> aiohttp.ClientSession:
            # No decompression, no timeout: watches are long and bodies pass through as sent.
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._client_tls(admin), limit=0),
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"))
        self._admin, self._anonymous = session(True), session(False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))  # the same port again after come_up()
        self.port = int(sock.getsockname()[1])
        self._site = web.SockSite(self._runner, sock, ssl_context=self._server_tls())
        await self._site.start()

    async def stop(self) -> None:
        self.cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for s in (self._admin, self._anonymous):
            if s is not None:
                await s.close()

    def cut_watches(self) -> int:
        """End every watch stream now, as an apiserver restart or a load balancer would."""
        cut = list(self._watches)
        for upstream in cut:
            upstream.close()
        self._watches.clear()
        return len(cut)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.method] += 1
        try:
            if request.path.startswith("/testbed/"):
                return await self._control(request)
            if self.down:
                raise ApiError(503, "ServiceUnavailable", "the API server is down")
            self.faults.check(request.method, request.path,
                              request.headers.get("User-Agent", ""))
            delay = self.faults.delay_for(request.method, request.path)
            if delay:
                await self.faults.hold(delay)
        except ApiError as e:
            headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
            return web.json_response(e.status(), status=e.code, headers=headers)
        return await self._forward(request)

    async def _control(self, request: web.Request) -> web.Response:
        if request.path == "/testbed/stats":
            return web.json_response({"requests": dict(self.requests),
                                      "watchers": self.watcher_count,
                                      "faultsInjected": self.faults.injected})
        if request.path != "/testbed/faults" or request.method != "POST":
            raise ApiError(404, "NotFound", "unknown testbed control endpoint")
        body: dict[str, Any] = await request.json()
        if body.get("action") == "cut-watches":
            return web.json_response({"cut": self.cut_watches()})
        return web.json_response(control(self.faults, body, extra=("cut-watches",)))

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        session = self._admin if peer else self._anonymous
        assert session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP)
        if peer:
            headers.popall("Authorization", None)
        body = await request.read() if request.can_read_body else None
        watch = _is_watch(request)
        try:
            # The path and query exactly as the client encoded them.
            url = URL(self.upstream + request.raw_path, encoded=True)
            upstream = await session.request(request.method, url, headers=headers, data=body,
                                             allow_redirects=False)
        except aiohttp.ClientError as e:
            status = ApiError(503, "ServiceUnavailable",
                              f"the proxy cannot reach the API server: {e}").status()
            return web.json_response(status, status=503)
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            if watch:
                self._watches.add(upstream)
            # Either side may go away mid-answer (a cut watch, a client that closed): the
            # exchange just ends there, as it would between the client and the server.
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError,
                                     ConnectionResetError):
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            return resp
        finally:
            self._watches.discard(upstream)
            upstream.release()
