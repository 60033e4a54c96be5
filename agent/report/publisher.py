"""Publisher: delivers the outbox to the management plane whenever the link allows.

Write-ahead: ``publish_status``/``publish_event``/``emit`` only append to the outbox and wake
the flush loop, so reconcilers never wait on the network. :meth:`Publisher.run` delivers the
pending records in order, one at a time, acknowledging each in the outbox as JetStream confirms
it:

* events: ``js.publish("outpost.events.<cluster>", ...)`` with ``Nats-Msg-Id: <cluster>-<seq>``,
  so a record re-sent after a lost ack (or a crash before the outbox ack) is dropped by the
  server within the stream's duplicate window;
* status: ``kv.put(<cluster>, ...)`` in the ``outpost-status`` bucket (history 1).

On any NATS error or timeout the round stops; the loop backs off (exponential, jittered) and
tries again, sooner if the client reports a reconnect (wire ``on_reconnected`` as the client's
``reconnected_cb``). Without a connected client it just waits for the next trigger, polling
every ``poll_interval`` while records are pending.

The stream and bucket are created if missing (``OUTPOST_EVENTS`` on ``outpost.events.>``;
``outpost-status`` with history 1). An agent whose credentials may not manage JetStream logs
that once and publishes anyway: the management plane is then expected to have created them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType
from nats.js.kv import KeyValue

from agent.spec.models import DNS_LABEL
from agent.spec.status import StatusReport
from agent.spec.wire import (
    EVENTS_DUPLICATE_WINDOW,
    EVENTS_MAX_AGE,
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    JS_STREAM_NAME_IN_USE,
    STATUS_BUCKET,
    event_subject,
    kv_subject,
    msg_id,
)

from .events import AgentEvent, EventType
from .outbox import Outbox, Record

__all__ = [
    "EVENTS_DUPLICATE_WINDOW",
    "EVENTS_MAX_AGE",
    "EVENTS_STREAM",
    "EVENTS_SUBJECTS",
    "STATUS_BUCKET",
    "Publisher",
    "PublisherStats",
    "event_subject",
    "msg_id",
]

log = logging.getLogger(__name__)

NcProvider = Callable[[], Client | None]



@dataclass(frozen=True, slots=True)
class PublisherStats:
    delivered: int  # records confirmed by JetStream since this process started
    depth: int  # records waiting in the outbox
    dropped: int  # events the outbox dropped to stay bounded (persisted)
    failures: int  # delivery rounds that ended in an error
    write_errors: int  # records that could not even be written to the outbox


class _Outcome(enum.Enum):
    IDLE = "idle"  # no connected client
    DONE = "done"  # everything pending was delivered
    FAILED = "failed"


class Publisher:
    """Write-ahead reporting for one cluster; see the module doc.

    ``nc_provider`` returns the current client (or None); it is called on every round, so the
    caller may swap clients. ``run()`` must run as a task for anything to be delivered.
    """

    def __init__(self, outbox: Outbox, cluster: str, nc_provider: NcProvider, *,
                 timeout: float = 5.0, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 poll_interval: float = 5.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not DNS_LABEL.match(cluster):
            raise ValueError(f"cluster name {cluster!r} is not a DNS label; it is used in "
                             "NATS subjects and keys")
        self.outbox = outbox
        self.cluster = cluster
        self.subject = event_subject(cluster)
        self._nc_provider = nc_provider
        self._timeout = timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._poll_interval = poll_interval
        self._clock = clock
        self._wake = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._round = asyncio.Lock()
        self._prepared_for: Client | None = None
        self._manage = True  # False once publishing is seen to work without managing JetStream
        self._kv: tuple[Client, KeyValue] | None = None  # bound to the client it came from
        self._warned: set[str] = set()
        self._failing = 0
        self._delivered = 0
        self._failures = 0
        self._write_errors = 0

    # -- producing ------------------------------------------------------------------------
    async def emit(self, reason: str, message: str = "", *, type: EventType = "Normal",
                   revision: int | None = None, obj: str | None = None) -> AgentEvent | None:
        """Record an event for this cluster, stamped now; see :meth:`publish_event`."""
        event = AgentEvent(cluster=self.cluster, time=self._clock(), type=type, reason=reason,
                           message=message, revision=revision, object=obj)
        return await self.publish_event(event)

    async def publish_event(self, event: AgentEvent) -> AgentEvent | None:
        """Append to the outbox and wake the flush loop; returns the event with its seq.

        Returns None if the outbox could not be written (disk error, logged and counted):
        reporting must never break the caller's reconciliation.
        """
        if event.cluster != self.cluster:
            raise ValueError(f"event for cluster {event.cluster!r} given to the publisher of "
                             f"{self.cluster!r}")
        try:
            stored = await self.outbox.append_event_async(event)
        except OSError as exc:
            self._write_errors += 1
            log.error("cannot write event %s to the outbox: %s", event.reason, exc)
            return None
        self.notify()
        return stored

    async def publish_status(self, status: StatusReport) -> bool:
        """Make ``status`` the one pending status and wake the flush loop.

        Returns False if the outbox could not be written (logged and counted).
        """
        if status.cluster != self.cluster:
            raise ValueError(f"status for cluster {status.cluster!r} given to the publisher "
                             f"of {self.cluster!r}")
        try:
            await self.outbox.set_status_async(status)
        except OSError as exc:
            self._write_errors += 1
            log.error("cannot write the status to the outbox: %s", exc)
            return False
        self.notify()
        return True

    def notify(self, *, reconnected: bool = False) -> None:
        """Wake the flush loop; ``reconnected=True`` also cuts short a backoff."""
        self._wake.set()
        if reconnected:
            self._reconnected.set()

    async def on_reconnected(self) -> None:
        """For ``nats.connect(reconnected_cb=...)``, which wants a coroutine function."""
        self.notify(reconnected=True)

    # -- stats ----------------------------------------------------------------------------
    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def depth(self) -> int:
        return self.outbox.depth

    @property
    def dropped(self) -> int:
        return self.outbox.dropped

    def stats(self) -> PublisherStats:
        return PublisherStats(delivered=self._delivered, depth=self.outbox.depth,
                              dropped=self.outbox.dropped, failures=self._failures,
                              write_errors=self._write_errors)

    # -- delivering -----------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver until cancelled."""
        backoff = 0.0
        while True:
            if backoff:
                await _wait(self._reconnected, backoff * random.uniform(0.8, 1.0))
            elif not self._wake.is_set():
                await _wait(self._wake, self._poll_interval if self.outbox.depth else None)
            self._wake.clear()
            self._reconnected.clear()
            if await self._attempt() is _Outcome.FAILED:
                backoff = min(self._backoff_max, max(self._backoff_initial, backoff * 2))
            else:
                backoff = 0.0

    async def flush(self) -> bool:
        """One delivery round now (e.g. before shutdown); True if the outbox is empty after."""
        outcome = await self._attempt()
        return outcome is not _Outcome.FAILED and self.outbox.depth == 0

    async def _attempt(self) -> _Outcome:
        async with self._round:  # flush() and run() must not deliver the same record twice
            nc = self._nc_provider()
            if nc is None or not nc.is_connected:
                return _Outcome.IDLE
            setup_failed = False
            try:
                records = await self.outbox.pending_async()
                if records:
                    js = nc.jetstream(timeout=self._timeout)
                    if self._manage and self._prepared_for is not nc:
                        setup_failed = not await self._prepare(nc, js)
                        self._prepared_for = nc
                    for record in records:
                        await self._deliver(nc, js, record)
            except Exception as exc:  # NATS errors, timeouts, disk errors: all mean "later"
                self._prepared_for = None  # the stream may be gone: check again next round
                if isinstance(exc, nats.errors.NoRespondersError):
                    self._manage = True  # nothing stores the subject: worth trying to create
                self._failures += 1
                self._failing += 1
                level = logging.WARNING if self._failing == 1 else logging.DEBUG
                log.log(level, "report delivery failed (%d pending), will retry: %s",
                        self.outbox.depth, _describe(exc))
                return _Outcome.FAILED
            if setup_failed:
                # Lacking the rights (each check costs a timeout): stop checking until a
                # publish finds nothing listening.
                self._manage = False
                log.info("publishing works without managing JetStream; skipping the checks")
            if self._failing:
                log.info("report delivery recovered after %d failed round(s)", self._failing)
                self._failing = 0
            return _Outcome.DONE

    async def _deliver(self, nc: Client, js: JetStreamContext, record: Record) -> None:
        if record.kind == "event":
            ack = await js.publish(self.subject, record.payload, timeout=self._timeout,
                                   headers={"Nats-Msg-Id": msg_id(self.cluster, record.seq)})
            if ack.duplicate:
                log.debug("event %d was already in the stream", record.seq)
        elif self.outbox.status_seq != record.seq:
            return  # superseded while this round ran; the newer one follows
        elif self._kv is not None and self._kv[0] is nc:
            await self._kv[1].put(self.cluster, record.payload)
        else:  # no handle on the bucket (no permission to look it up): same subject kv uses
            await js.publish(kv_subject(STATUS_BUCKET, self.cluster), record.payload,
                             timeout=self._timeout)
        await self.outbox.ack_async(record.seq)
        self._delivered += 1

    async def _prepare(self, nc: Client, js: JetStreamContext) -> bool:
        """Make sure the stream and the bucket exist; lacking rights is not fatal."""
        ok = True
        try:
            await self._ensure_stream(js)
        except (nats.errors.Error, TimeoutError) as exc:
            ok = False
            self._warn_once("stream", f"cannot check or create stream {EVENTS_STREAM} "
                            f"({_describe(exc)}); publishing anyway")
        try:
            self._kv = (nc, await self._ensure_bucket(js))
        except (nats.errors.Error, TimeoutError) as exc:
            ok = False
            self._kv = None
            self._warn_once("bucket", f"cannot check or create KV bucket {STATUS_BUCKET} "
                            f"({_describe(exc)}); publishing anyway")
        return ok

    @staticmethod
    async def _ensure_stream(js: JetStreamContext) -> None:
        try:
            await js.stream_info(EVENTS_STREAM)
            return
        except nats.js.errors.NotFoundError:
            pass
        try:
            await js.add_stream(name=EVENTS_STREAM, subjects=[EVENTS_SUBJECTS],
                                storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
                                discard=DiscardPolicy.OLD, max_age=EVENTS_MAX_AGE,
                                duplicate_window=EVENTS_DUPLICATE_WINDOW,
                                description="Outpost agent events")
            log.info("created stream %s", EVENTS_STREAM)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != JS_STREAM_NAME_IN_USE:  # another agent won the race: fine
                raise

    @staticmethod
    async def _ensure_bucket(js: JetStreamContext) -> KeyValue:
        try:
            return await js.key_value(STATUS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            pass
        kv = await js.create_key_value(KeyValueConfig(
            bucket=STATUS_BUCKET, history=1, storage=StorageType.FILE,
            description="Outpost agent status, one key per cluster"))
        log.info("created KV bucket %s", STATUS_BUCKET)
        return kv

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            log.debug("%s", message)
        else:
            self._warned.add(key)
            log.warning("%s", message)


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
