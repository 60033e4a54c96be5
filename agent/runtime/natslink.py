"""The one NATS connection of a daemon, kept up for as long as it takes.

The management plane may be unreachable for minutes or months. The link connects (retrying
forever with the runtime's backoff, since nats-py's own initial connect retries at a fixed short
interval), lets nats-py reconnect after that, and tells its listeners about every transition so
they can re-read what they may have missed. Everything that talks NATS (the spec follower, the
status publisher, the gateway's publisher and collector) shares this one client through `nc`.

A request made while the server is down hangs until its timeout: users check `connected` first
and give every request a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client

from .backoff import Backoff

log = logging.getLogger(__name__)

Listener = Callable[[bool], None]


@dataclass(frozen=True)
class LinkSettings:
    """Where and how to connect. Times are in seconds; tests shorten them."""

    servers: Sequence[str]
    name: str
    user_credentials: str | None = None  # path of a NATS .creds file
    inbox_prefix: str | None = None  # e.g. `_INBOX.<cluster>`, so permissions can scope replies
    connect_timeout: float = 2.0
    reconnect_time_wait: float = 0.5
    # A dead link (NAT timeout, cut fibre) shows no TCP error; pings find it within ~interval*3.
    ping_interval: float = 20.0
    max_outstanding_pings: int = 2
    request_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("at least one NATS server URL is required")


def redacted(servers: Sequence[str]) -> str:
    """Server URLs for a log line, without any user:password they carry."""
    out = []
    for server in servers:
        parts = urlsplit(server)
        if parts.username or parts.password:
            parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
        out.append(urlunsplit(parts))
    return ", ".join(out)


class Quiet:
    """Log a repeated warning once a minute, not on every retry of a months-long outage."""

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self._log, self._every, self._last, self._at = logger, every, "", -1e9

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if text != self._last or now - self._at >= self._every:
            self._last, self._at = text, now
            self._log.warning("%s", text)
        else:
            self._log.debug("%s", text)


class NatsLink:
    """One reconnecting client; `run()` keeps it up until cancelled (or `stop()`)."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._connected = False
        self._listeners: list[Listener] = []
        self._quiet = Quiet(log)
        self._last_error = ""
        self._closed = asyncio.Event()  # the current client closed for good
        self._task: asyncio.Task[Any] | None = None
        #: Set on every connected/disconnected transition; a waiter clears it, then reads
        #: `connected`.
        self.state_changed = asyncio.Event()
        #: Set while connected, clear while not.
        self.connected_event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def nc(self) -> Client | None:
        """The client (None before the first connect); it may be reconnecting."""
        return self._nc

    def listen(self, listener: Listener) -> None:
        """`listener(connected)` on every transition, synchronously: it must not block."""
        self._listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, then reconnect whenever the client closes for good; returns only by
        cancellation."""
        self._task = asyncio.current_task()
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        try:
            while True:
                nc = await self._connect(backoff)
                backoff.reset()
                try:
                    await self._closed.wait()
                finally:
                    self._nc = None  # first, so our own close is not logged as a lost link
                    self._set_connected(False)
                    await self.close_client(nc)
                log.warning("NATS connection closed; connecting again")
                await asyncio.sleep(backoff.next())
        finally:
            self._set_connected(False)

    async def stop(self) -> None:
        """Stop the task running run() and drain the connection."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})
        nc, self._nc = self._nc, None
        if nc is not None:
            await self.close_client(nc)
        self._set_connected(False)

    async def _connect(self, backoff: Backoff) -> Client:
        s = self.settings
        # nats-py's connect() never gives up with max_reconnect_attempts=-1, retrying every
        # reconnect_time_wait; bound each attempt to about one pass over the servers instead.
        window = s.connect_timeout * (len(s.servers) + 1) + s.reconnect_time_wait
        while True:
            nc = Client()
            options: dict[str, Any] = {
                "servers": list(s.servers), "name": s.name, "connect_timeout": s.connect_timeout,
                "allow_reconnect": True, "max_reconnect_attempts": -1,
                "reconnect_time_wait": s.reconnect_time_wait, "ping_interval": s.ping_interval,
                "max_outstanding_pings": s.max_outstanding_pings,
                "drain_timeout": s.request_timeout, **self._callbacks(nc)}
            if s.user_credentials:
                options["user_credentials"] = s.user_credentials
            if s.inbox_prefix:
                options["inbox_prefix"] = s.inbox_prefix
            self._last_error = ""
            self._closed.clear()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can turn a
                # cancellation racing its timeout into TimeoutError, and this retry loop would
                # then never stop.
                async with asyncio.timeout(window):
                    await nc.connect(**options)
            except asyncio.CancelledError:
                await self.close_client(nc)
                raise
            except Exception as e:  # any failure means: wait and try again, forever
                await self.close_client(nc)
                delay = backoff.next()
                self._quiet(f"cannot connect to NATS at {redacted(s.servers)}: "
                            f"{self._last_error or repr(e)}; next try in {delay:.1f}s")
                await asyncio.sleep(delay)
                continue
            self._nc = nc
            self._set_connected(True)
            url = nc.connected_url
            log.info("connected to NATS at %s", f"{url.hostname}:{url.port}" if url else "?")
            return nc

    def _callbacks(self, nc: Client) -> dict[str, Callable[..., Awaitable[None]]]:
        """Callbacks bound to one client, so a discarded client cannot change the state."""

        async def error_cb(e: Exception) -> None:
            self._last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if nc is self._nc:
                self._quiet(f"NATS: {self._last_error}")

        async def disconnected_cb() -> None:
            if nc is self._nc and self._connected:
                log.warning("lost the NATS connection; reconnecting")
                self._set_connected(False)

        async def reconnected_cb() -> None:
            if nc is self._nc:
                log.info("reconnected to NATS")
                self._set_connected(True)

        async def closed_cb() -> None:
            if nc is self._nc:
                self._set_connected(False)
                self._closed.set()

        return {"error_cb": error_cb, "disconnected_cb": disconnected_cb,
                "reconnected_cb": reconnected_cb, "closed_cb": closed_cb}

    def _set_connected(self, value: bool) -> None:
        if value != self._connected:
            self._connected = value
            self.state_changed.set()
            for listener in self._listeners:
                try:
                    listener(value)
                except Exception:
                    log.exception("a NATS link listener failed")
        if value:
            self.connected_event.set()
        else:
            self.connected_event.clear()

    async def close_client(self, nc: Client) -> None:
        """Drain if possible, else close; bounded, and never raises."""
        if nc.is_closed:
            return
        connected = nc.is_connected
        try:
            if connected:
                async with asyncio.timeout(self.settings.request_timeout + 1):
                    await nc.drain()
        except Exception as e:
            log.debug("draining the NATS connection failed: %r", e)
        if not nc.is_closed:
            # A client stuck reconnecting has nothing to flush: do not wait on it at shutdown.
            limit = self.settings.request_timeout + 1 if connected else 0.5
            with contextlib.suppress(Exception):
                async with asyncio.timeout(limit):
                    await nc.close()
