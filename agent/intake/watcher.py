"""Receive candidate specs for this cluster from the JetStream KV bucket, for as long as it takes.

The management plane may be unreachable for minutes or months; the agent keeps enforcing its
cached spec meanwhile, so this follower is a background task that nothing else waits on.

It holds no JetStream consumer. nats-server 2.15 refuses the 1,001st consumer on a stream, so
one KV watch per agent would stop a fleet at 1,000 clusters. Instead the follower subscribes
(plain core NATS) to its key's subject, `$KV.<bucket>.<cluster>`, and treats each message there
only as a doorbell: it then reads the key's latest value with a direct get, which also gives the
KV revision. It reads too on every (re)connect, since puts made while the link was down were
not delivered, and every `resync_interval`, in case a doorbell was lost. Only the latest value
matters for a spec, and repeats are no-ops for the intake, so nothing is missed and nothing is
applied twice. The per-cluster permissions stay tight: subscribe to one subject, direct-get one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

from agent.runtime.backoff import Backoff
from agent.runtime.natslink import LinkSettings, NatsLink, Quiet
from agent.spec.wire import SPECS_BUCKET, kv_subject

__all__ = ["BUCKET", "OnCandidate", "SpecWatcher", "WatcherSettings"]

log = logging.getLogger(__name__)

BUCKET = SPECS_BUCKET
_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")

OnCandidate = Callable[[bytes, int], Awaitable[None]]
_LAG_READS = 8  # re-reads after a doorbell that showed nothing new (about 2 s in all)


@dataclass(frozen=True, kw_only=True)
class WatcherSettings(LinkSettings):
    """The link's settings plus what to follow. Times are in seconds; tests shorten them."""

    cluster: str
    name: str = "outpost-agent"
    bucket: str = BUCKET
    # Read the key again after this long without a doorbell, in case one was lost.
    resync_interval: float = 600.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _KEY.match(self.cluster):
            raise ValueError(f"cluster {self.cluster!r} is not usable as a KV key")
        if self.inbox_prefix is None:
            # Replies under `_INBOX.<cluster>`, so a server's permissions can keep each cluster
            # to its own inbox.
            object.__setattr__(self, "inbox_prefix", f"_INBOX.{self.cluster}")


class SpecWatcher:
    """Delivers the latest value under `<cluster>` in the spec bucket to `on_candidate`.

    `on_candidate(raw, kv_revision)` is awaited in order, one value at a time; its exceptions are
    logged and do not stop the follower. Delete and purge markers are logged and skipped: an
    operator removing the key must not make the agent drop its spec. The latest value is
    delivered again after every reconnect and resync, so the callback must treat repeats as
    no-ops.

    It runs on `link` (the daemon's one NATS connection) or, without one, on a link of its own
    that `run()` also runs.
    """

    def __init__(self, settings: WatcherSettings, on_candidate: OnCandidate, *,
                 link: NatsLink | None = None) -> None:
        self.settings = settings
        self._on_candidate = on_candidate
        self._own_link = link is None
        self.link = link or NatsLink(settings)
        self._poke = asyncio.Event()
        self._quiet = Quiet(log)
        self._last_revision = 0  # KV revision of the last value read (0: none yet)
        self._rung = False  # a doorbell rang since the last read
        #: Called after every read the management plane answered (its NATS is reachable and
        #: serves the spec bucket): the agent's measure of contact.
        self.on_contact: list[Callable[[], None]] = []
        self.link.listen(self._on_link)

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def status_nc(self) -> Client | None:
        """The live NATS connection for other publishers to share (None before the first connect).

        It may be reconnecting: check `connected`, and give every request a timeout, since a
        request made while the server is down hangs until then.
        """
        return self.link.nc

    @property
    def state_changed(self) -> asyncio.Event:
        return self.link.state_changed

    @property
    def connected_event(self) -> asyncio.Event:
        return self.link.connected_event

    def _on_link(self, connected: bool) -> None:
        if connected:
            self._poke.set()  # whatever was put while we were away: read it now

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the key (and keep the link up, if it is our own); returns only by
        cancellation."""
        if not self._own_link:
            await self.follow()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.link.run(), name="nats-link")
            tg.create_task(self.follow(), name="spec-follower")

    async def stop(self) -> None:
        """Stop the link (if our own) and the tasks running on it."""
        if self._own_link:
            await self.link.stop()

    # -- following -------------------------------------------------------------------------------
    async def follow(self) -> None:
        """Subscribe to the key's subject on each new client and read the key whenever poked."""
        s = self.settings
        subject = kv_subject(s.bucket, s.cluster)
        backoff = Backoff(s.backoff_initial, s.backoff_max)
        lag = Backoff(0.02, 0.5)
        lag_reads = 0
        subscribed: Client | None = None
        sub = None
        try:
            while True:
                await self.link.connected_event.wait()
                nc = self.link.nc
                if nc is None:
                    await asyncio.sleep(s.reconnect_time_wait)
                    continue
                if nc is not subscribed:
                    # nats-py renews a subscription itself after a reconnect, but not on a new
                    # client (the link replaces a client that closed for good).
                    sub = await nc.subscribe(subject, cb=self._doorbell)
                    subscribed = nc
                    log.info("following %s/%s for specs", s.bucket, s.cluster)
                    self._poke.set()
                if not self._poke.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(s.resync_interval):  # not wait_for: 3.11
                            await self._poke.wait()
                    if not self._poke.is_set():
                        log.debug("no spec doorbell for %.0fs; reading the key anyway",
                                  s.resync_interval)
                self._poke.clear()
                rung, self._rung = self._rung, False
                if not self.link.connected:
                    continue
                try:
                    before = self._last_revision
                    await self._read(nc)
                    backoff.reset()
                    for contacted in self.on_contact:
                        contacted()
                    # A doorbell can arrive before the stream has stored the value (the server
                    # delivers to subscribers and to the stream at once), or for a put the
                    # stream refused (a lost compare-and-set): read again a few times before
                    # concluding there is nothing new. The doorbell's own bytes are never used,
                    # as they may never have been stored.
                    if rung and self._last_revision <= before and lag_reads < _LAG_READS:
                        lag_reads += 1
                        self._rung = True
                        self._poke.set()
                        await asyncio.sleep(lag.next())
                    else:
                        lag_reads = 0
                        lag.reset()
                except (nats.errors.Error, TimeoutError) as e:
                    delay = backoff.next()
                    self._quiet(f"cannot read {s.bucket}/{s.cluster}: {e!r}; retrying in "
                                f"{delay:.1f}s")
                    self._poke.set()
                    await asyncio.sleep(delay)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _doorbell(self, _msg: object) -> None:
        self._rung = True
        self._poke.set()

    async def _read(self, nc: Client) -> None:
        s = self.settings
        js = nc.jetstream(timeout=s.request_timeout)
        stream, subject = f"KV_{s.bucket}", kv_subject(s.bucket, s.cluster)
        try:
            try:
                # A direct get names the key in its subject, so permissions can allow exactly
                # this one; buckets created without allow_direct have no responder for it.
                msg = await js.get_msg(stream, subject=subject, direct=True)
            except nats.errors.NoRespondersError:
                msg = await js.get_msg(stream, subject=subject)
        except nats.js.errors.NotFoundError:
            log.debug("no spec for %s in %s yet", s.cluster, s.bucket)
            return
        revision = int(msg.seq or 0)
        op = (msg.headers or {}).get(KV_OP)
        if op in (KV_DEL, KV_PURGE):
            if revision != self._last_revision:
                log.warning("spec key %s/%s was %s at KV revision %s; ignoring it and keeping "
                            "the spec in force", s.bucket, s.cluster,
                            "deleted" if op == KV_DEL else "purged", revision)
            self._last_revision = revision
            return
        self._last_revision = revision
        try:
            await self._on_candidate(msg.data or b"", revision)
        except Exception:
            log.exception("handling spec candidate at KV revision %s failed", revision)
