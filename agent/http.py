"""/healthz, /readyz and /metrics: what the kubelet and Prometheus ask the agent."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.metrics import Metrics


def make_app(metrics: Metrics, ready: Callable[[], tuple[bool, str]],
             live: Callable[[], tuple[bool, str]]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, why = live()
        return web.Response(text=why or "ok", status=200 if ok else 500)

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(text=why or "ok", status=200 if ok else 503)

    async def prom(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prom)
    return app
