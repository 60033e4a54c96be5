"""Fault injection: the failures a real control plane produces, on demand from tests."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import errors
from .errors import ApiError

_REASONS = {
    409: ("Conflict", "Operation cannot be fulfilled: the object has been modified; please apply "
                      "your changes to the latest version and try again"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    503: ("ServiceUnavailable", "The server is currently unable to handle the request"),
    504: ("Timeout", "The server was unable to return a response in the time allotted"),
}


@dataclass
class Rule:
    remaining: int
    code: int
    path: re.Pattern[str] | None = None
    method: str | None = None
    client: str | None = None  # the start of the User-Agent it applies to (None: any)

    def matches(self, method: str, path: str, user_agent: str = "") -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path.search(path) is not None) and (
            self.client is None or user_agent.startswith(self.client))


@dataclass
class Faults:
    rules: list[Rule] = field(default_factory=list)
    delays: list[tuple[Rule, float]] = field(default_factory=list)
    injected: int = 0
    delaying: int = 0  # requests being held right now
    _released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def delay_next(self, n: int, seconds: float, path: str | None = None,
                   method: str | None = None) -> None:
        """Hold the next `n` matching requests for `seconds` before serving them (a slow API)."""
        self.delays.append((Rule(n, 0, re.compile(path) if path else None,
                                 method.upper() if method else None), seconds))

    async def hold(self, seconds: float) -> None:
        """Hold one request for `seconds`, or until release() ends every current hold."""
        released = self._released
        self.delaying += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), seconds)
        finally:
            self.delaying -= 1

    def release(self) -> None:
        """Serve every request being held right now (later ones are held as configured)."""
        self._released.set()
        self._released = asyncio.Event()

    def delay_for(self, method: str, path: str) -> float:
        for rule, seconds in self.delays:
            if rule.remaining > 0 and rule.matches(method, path):
                rule.remaining -= 1
                self.injected += 1
                return seconds
        return 0.0

    def fail_next(self, n: int, code: int = 500, path: str | None = None,
                  method: str | None = None, client: str | None = None) -> None:
        """Fail the next `n` requests (matching `path` regex, `method` and a User-Agent
        starting with `client`, if given) with `code`; `client` keeps other controllers on
        the same server from taking faults meant for the client under test."""
        if code not in _REASONS:
            raise ValueError(f"unsupported fault code {code}; use one of {sorted(_REASONS)}")
        self.rules.append(Rule(n, code, re.compile(path) if path else None,
                               method.upper() if method else None, client))

    def clear(self) -> None:
        self.rules.clear()
        self.delays.clear()

    def check(self, method: str, path: str, user_agent: str = "") -> None:
        for rule in self.rules:
            if rule.remaining > 0 and rule.matches(method, path, user_agent):
                rule.remaining -= 1
                self.injected += 1
                reason, message = _REASONS[rule.code]
                raise ApiError(rule.code, reason, message,
                               retry_after=1 if rule.code in (429, 503) else None)
        self.rules = [r for r in self.rules if r.remaining > 0]


def control(faults: Faults, body: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The `POST /testbed/faults` actions every fault front shares (emulator and proxy);
    `extra` names the front's own actions, handled before, for the error message."""
    action = body.get("action")
    if action == "fail":
        faults.fail_next(int(body.get("count", 1)), int(body.get("code", 500)),
                         body.get("path"), body.get("method"), body.get("client"))
    elif action == "delay":
        faults.delay_next(int(body.get("count", 1)), float(body.get("seconds", 1)),
                          body.get("path"), body.get("method"))
    elif action == "clear":
        faults.clear()
    else:
        raise errors.bad_request("action must be one of: "
                                 + ", ".join(("fail", "delay", "clear", *extra)))
    return {"ok": True}


class Outage:
    """`go_down` and `come_up` for a testbed server (the emulated API, the real one's proxy):
    it stops listening and drops every open connection, then listens on the same port again.
    The server provides `_runner`, `_site`, `_listen()` and `cut_watches()`."""

    down = False
    _runner: web.AppRunner | None
    _site: web.BaseSite | None

    async def _listen(self) -> None:
        raise NotImplementedError

    def cut_watches(self) -> int:
        raise NotImplementedError

    async def go_down(self) -> None:
        """Become unreachable: stop listening and drop every open connection."""
        self.down = True
        self.cut_watches()
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for conn in list(self._runner.server.connections):
                if conn.transport is not None:
                    conn.transport.close()

    async def come_up(self) -> None:
        if self._site is None:
            await self._listen()
        self.down = False
