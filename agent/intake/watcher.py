"""Receive candidate specs for this cluster from the JetStream KV bucket, for as long as it takes.

The management plane may be unreachable for minutes or months; the agent keeps enforcing its
cached spec meanwhile, so this watcher is a background task that nothing else waits on. It
connects (retrying forever with capped, jittered exponential backoff, since nats-py's own
initial connect retries at a fixed short interval), lets nats-py reconnect, and re-creates the
KV watch after every reconnect: the server may have lost the watch's ephemeral consumer, and a
fresh watch re-delivers the latest value, so nothing published during an outage is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from agent.spec.wire import SPECS_BUCKET

__all__ = ["BUCKET", "OnCandidate", "SpecWatcher", "WatcherSettings"]

log = logging.getLogger(__name__)

BUCKET = SPECS_BUCKET
_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")

OnCandidate = Callable[[bytes, int], Awaitable[None]]


@dataclass(frozen=True)
class WatcherSettings:
    """Where and how to watch. Times are in seconds; tests shorten the backoffs."""

    servers: Sequence[str]
    cluster: str
    name: str = "outpost-agent"
    user_credentials: str | None = None  # path of a NATS .creds file
    bucket: str = BUCKET
    connect_timeout: float = 2.0
    reconnect_time_wait: float = 0.5
    # A dead link (NAT timeout, cut fibre) shows no TCP error; pings find it within ~interval*3.
    ping_interval: float = 20.0
    max_outstanding_pings: int = 2
    request_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Re-create the watch after this long without a delivery, in case it died silently.
    resync_interval: float = 600.0

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("at least one NATS server URL is required")
        if not _KEY.match(self.cluster):
            raise ValueError(f"cluster {self.cluster!r} is not usable as a KV key")


def _redacted(servers: Sequence[str]) -> str:
    """Server URLs for a log line, without any user:password they carry."""
    out = []
    for server in servers:
        parts = urlsplit(server)
        if parts.username or parts.password:
            parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
        out.append(urlunsplit(parts))
    return ", ".join(out)


class _Backoff:
    """Capped exponential delays with jitter, so a fleet of agents does not retry in lockstep."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial, self._max, self._attempt = initial, maximum, 0

    def next(self) -> float:
        base = min(self._max, self._initial * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        return base / 2 + random.uniform(0, base / 2)

    def reset(self) -> None:
        self._attempt = 0


class _Quiet:
    """Log a repeated error once a minute, not on every retry of a months-long outage."""

    def __init__(self, every: float = 60.0) -> None:
        self._every, self._last, self._at = every, "", -1e9

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if text != self._last or now - self._at >= self._every:
            self._last, self._at = text, now
            log.warning("%s", text)
        else:
            log.debug("%s", text)


class SpecWatcher:
    """Delivers every value put under `<cluster>` in the spec bucket to `on_candidate`.

    `on_candidate(raw, kv_revision)` is awaited in order, one value at a time; its exceptions are
    logged and do not stop the watch. Delete and purge markers are logged and skipped: an
    operator removing the key must not make the agent drop its spec. The latest value is
    delivered again after every reconnect, so the callback must treat repeats as no-ops.
    """

    def __init__(self, settings: WatcherSettings, on_candidate: OnCandidate) -> None:
        self.settings = settings
        self._on_candidate = on_candidate
        self._nc: Client | None = None
        self._connected = False
        self._resubscribe = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._quiet = _Quiet()
        self._last_error = ""
        #: Set on every connected/disconnected transition; a waiter clears it, then reads
        #: `connected`.
        self.state_changed = asyncio.Event()
        #: Set while connected, clear while not.
        self.connected_event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def status_nc(self) -> Client | None:
        """The live NATS connection for other publishers to share (None before the first connect).

        It may be reconnecting: check `connected`, and give every request a timeout, since a
        request made while the server is down hangs until then.
        """
        return self._nc

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, watch, reconnect, forever; returns only by cancellation (see stop())."""
        self._task = asyncio.current_task()
        backoff = _Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        try:
            while True:
                nc = await self._connect(backoff)
                try:
                    await self._session(nc, backoff)
                finally:
                    self._nc = None  # first, so our own close is not logged as a lost link
                    self._set_connected(False)
                    await self._close(nc)
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
            await self._close(nc)
        self._set_connected(False)

    # -- connection ------------------------------------------------------------------------------
    async def _connect(self, backoff: _Backoff) -> Client:
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
            self._last_error = ""
            try:
                await asyncio.wait_for(nc.connect(**options), window)
            except asyncio.CancelledError:
                await self._close(nc)
                raise
            except Exception as e:  # any failure means: wait and try again, forever
                await self._close(nc)
                delay = backoff.next()
                self._quiet(f"cannot connect to NATS at {_redacted(s.servers)}: "
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
                log.warning("lost the NATS connection; reconnecting (the cached spec stays "
                            "in force)")
                self._set_connected(False)

        async def reconnected_cb() -> None:
            if nc is self._nc:
                log.info("reconnected to NATS; re-creating the spec watch")
                self._set_connected(True)
                self._resubscribe.set()

        async def closed_cb() -> None:
            if nc is self._nc:
                self._set_connected(False)
                self._resubscribe.set()

        return {"error_cb": error_cb, "disconnected_cb": disconnected_cb,
                "reconnected_cb": reconnected_cb, "closed_cb": closed_cb}

    def _set_connected(self, value: bool) -> None:
        if value != self._connected:
            self._connected = value
            self.state_changed.set()
        if value:
            self.connected_event.set()
        else:
            self.connected_event.clear()

    async def _close(self, nc: Client) -> None:
        """Drain if possible, else close; bounded, and never raises."""
        if nc.is_closed:
            return
        connected = nc.is_connected
        try:
            if connected:
                await asyncio.wait_for(nc.drain(), self.settings.request_timeout + 1)
        except Exception as e:
            log.debug("draining the NATS connection failed: %r", e)
        if not nc.is_closed:
            # A client stuck reconnecting has nothing to flush: do not wait on it at shutdown.
            limit = self.settings.request_timeout + 1 if connected else 0.5
            try:
                await asyncio.wait_for(nc.close(), limit)
            except Exception as e:
                log.debug("closing the NATS connection failed: %r", e)

    # -- the watch -------------------------------------------------------------------------------
    async def _session(self, nc: Client, backoff: _Backoff) -> None:
        """(Re)create the KV watch until the client closes for good."""
        s = self.settings
        js = nc.jetstream(timeout=s.request_timeout)
        backoff.reset()
        while not nc.is_closed:
            self._resubscribe.clear()
            if not nc.is_connected:  # requests now would only hang until their timeout
                await self._resubscribe.wait()
                continue
            try:
                kv = await js.key_value(s.bucket)
                watcher = await kv.watch(s.cluster)
            except Exception as e:  # bucket not created yet, JetStream not ready, timeout, ...
                delay = backoff.next()
                self._quiet(f"cannot watch {s.bucket}/{s.cluster}: {e!r}; retrying in "
                            f"{delay:.1f}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._resubscribe.wait(), delay)
                continue
            backoff.reset()
            log.info("watching %s/%s for specs", s.bucket, s.cluster)
            try:
                await self._pump(watcher)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watcher.stop(),  # type: ignore[no-untyped-call]
                                           s.request_timeout)

    async def _pump(self, watcher: KeyValue.KeyWatcher) -> None:
        """Deliver entries until a reconnect, close or quiet period calls for a new watch."""
        resubscribe = asyncio.ensure_future(self._resubscribe.wait())
        entry: asyncio.Future[KeyValue.Entry | None] | None = None
        try:
            while True:
                entry = asyncio.ensure_future(anext(watcher))
                done, _ = await asyncio.wait({entry, resubscribe},
                                             timeout=self.settings.resync_interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                if entry not in done:
                    if not done:
                        log.info("no spec update for %.0fs; re-creating the watch",
                                 self.settings.resync_interval)
                    return
                try:
                    value = entry.result()
                except StopAsyncIteration:
                    return
                await self._deliver(value)
        finally:
            resubscribe.cancel()
            if entry is not None:
                entry.cancel()  # before the watcher stops, so it cannot end with an error

    async def _deliver(self, entry: KeyValue.Entry | None) -> None:
        if entry is None:
            log.debug("the watch delivered the current value(s)")
            return
        if entry.key != self.settings.cluster:
            return
        if entry.operation in (KV_DEL, KV_PURGE):
            log.warning("spec key %s/%s was %s at KV revision %s; ignoring it and keeping the "
                        "spec in force", self.settings.bucket, entry.key,
                        "deleted" if entry.operation == KV_DEL else "purged", entry.revision)
            return
        try:
            await self._on_candidate(entry.value or b"", entry.revision or 0)
        except Exception:
            log.exception("handling spec candidate at KV revision %s failed", entry.revision)
