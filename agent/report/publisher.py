"""Publisher: delivers the outbox to the management plane whenever the link allows.

Write-ahead: ``publish_status``/``publish_event``/``emit`` only append to the outbox and wake
the flush loop, so reconcilers never wait on the network. :meth:`Publisher.run` delivers the
pending records in order:

* events: ``js.publish_async("outpost.events.<cluster>", ...)`` with
  ``Nats-Msg-Id: <cluster>-<seq>``, pipelined in windows of at most ``window`` records (and
  ``window_bytes`` of payload) so a backlog drains at the link's throughput instead of one
  round trip per record;
* status: ``kv.put(<cluster>, ...)`` in the ``outpost-status`` bucket (history 1), alone and
  only once every event before it is confirmed; a status replaced meanwhile is skipped.

Order and exactly-once. A window is sent only once every earlier record is confirmed, and it is
handed to the client in one go: the client does not yield while its outgoing buffer has room
(hence the byte bound, well under its 2 MiB default), so the whole window travels, in order,
on one connection, either written before a disconnect or buffered and re-sent after the
reconnect. What JetStream stores of it is therefore a prefix. Acks are awaited in order; the
first one missing (error, or none within ``timeout``) ends the round, the outbox is acked up to
the last confirmed record only, and the next round re-sends from the first unconfirmed one. A
copy the server already stored (its ack was lost, or the agent crashed before the outbox ack)
is dropped by its message id within the stream's duplicate window.

On a failed round the loop waits for the shared :class:`~agent.runtime.backoff.Backoff` (reset
whenever a round made progress) and tries again, sooner if the client reports a reconnect (wire
``on_reconnected`` as the client's ``reconnected_cb``). Without a connected client it just
waits for the next trigger, polling every ``poll_interval`` while records are pending.

The stream and bucket are created if missing (``OUTPOST_EVENTS`` on ``outpost.events.>``;
``outpost-status`` with history 1). An agent whose credentials may not manage JetStream logs
that once and publishes anyway: the management plane is then expected to have created them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
)
from nats.js.kv import KeyValue

from agent.runtime.backoff import Backoff
from agent.spec.base import DNS_LABEL
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

DEFAULT_WINDOW = 256
DEFAULT_WINDOW_BYTES = 512 * 1024  # well under nats-py's default outgoing buffer (2 MiB)


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
    ``window`` bounds the events awaiting their ack at once (1: one round trip per record);
    ``timeout`` is the longest wait for the next ack before the round gives up.
    """

    def __init__(self, outbox: Outbox, cluster: str, nc_provider: NcProvider, *,
                 timeout: float = 5.0, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 poll_interval: float = 5.0, window: int = DEFAULT_WINDOW,
                 window_bytes: int = DEFAULT_WINDOW_BYTES,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not DNS_LABEL.match(cluster):
            raise ValueError(f"cluster name {cluster!r} is not a DNS label; it is used in "
                             "NATS subjects and keys")
        if window < 1 or window_bytes < 1:
            raise ValueError(f"window ({window}) and window_bytes ({window_bytes}) must be >= 1")
        self.outbox = outbox
        self.cluster = cluster
        self.subject = event_subject(cluster)
        self._nc_provider = nc_provider
        self._timeout = timeout
        # A maximum below the default initial delay (a short retry_max) caps it, as before.
        self._backoff = Backoff(min(backoff_initial, backoff_max), backoff_max)
        self._window = window
        self._window_bytes = window_bytes
        self._poll_interval = poll_interval
        self._clock = clock
        self._wake = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._round = asyncio.Lock()
        self._prepared_for: Client | None = None
        self._manage = True  # False once publishing is seen to work without managing JetStream
        self._kv: tuple[Client, KeyValue] | None = None  # bound to the client it came from
        self._js: tuple[Client, JetStreamContext] | None = None  # keeps its async-ack inbox
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
        delay = 0.0
        while True:
            if delay:
                await _wait(self._reconnected, delay)
            elif not self._wake.is_set():
                await _wait(self._wake, self._poll_interval if self.outbox.depth else None)
            self._wake.clear()
            self._reconnected.clear()
            before = self._delivered
            if await self._attempt() is _Outcome.FAILED:
                if self._delivered != before:
                    self._backoff.reset()  # the link worked until just now: retry soon
                delay = self._backoff.next()
            else:
                self._backoff.reset()
                delay = 0.0

    async def flush(self) -> bool:
        """One delivery round now (e.g. before shutdown); True if the outbox is empty after."""
        outcome = await self._attempt()
        return outcome is not _Outcome.FAILED and self.outbox.depth == 0

    async def _attempt(self) -> _Outcome:
        """One round: everything written before it started, window after window."""
        async with self._round:  # flush() and run() must not deliver the same record twice
            nc = self._nc_provider()
            if nc is None or not nc.is_connected:
                return _Outcome.IDLE
            setup_failed = False
            horizon = self.outbox.last_seq  # later records wait for the next round (woken)
            try:
                js: JetStreamContext | None = None
                while records := [r for r in await self.outbox.pending_async(self._window)
                                  if r.seq <= horizon]:
                    if js is None:
                        js = self._jetstream(nc)
                        if self._manage and self._prepared_for is not nc:
                            setup_failed = not await self._prepare(nc, js)
                            self._prepared_for = nc
                    if records[0].kind == "status":
                        await self._deliver_status(nc, js, records[0])
                    else:
                        await self._deliver_events(nc, js, records)
            except Exception as exc:  # NATS errors, timeouts, disk errors: all mean "later"
                self._prepared_for = None  # the stream may be gone: check again next round
                if isinstance(exc, nats.errors.NoRespondersError
                              | nats.js.errors.NoStreamResponseError):
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

    def _jetstream(self, nc: Client) -> JetStreamContext:
        """One context per client: its first async publish subscribes an ack inbox for good.

        The window is the bound; the context's own limit is twice it so that it never makes a
        publish wait (and yield) while cancelled slots are still being released.
        """
        if self._js is None or self._js[0] is not nc:
            self._js = (nc, nc.jetstream(timeout=self._timeout,
                                         publish_async_max_pending=2 * self._window))
        return self._js[1]

    async def _deliver_events(self, nc: Client, js: JetStreamContext,
                              records: Sequence[Record]) -> None:
        """Send one window of the leading events, then confirm them in order (module doc)."""
        window: list[Record] = []
        size = 0
        for record in records:
            if record.kind != "event" or (window and size + len(record.payload)
                                          > self._window_bytes):
                break
            window.append(record)
            size += len(record.payload)
        acks: list[asyncio.Future[PubAck]] = []
        send_error: Exception | None = None
        try:
            for record in window:
                if not nc.is_connected:  # never leave part of a window in a reconnect buffer
                    raise nats.errors.ConnectionReconnectingError
                # No wait_stall: waiting with a timeout runs a task, so the client would yield
                # after every message and could flush half a window before a disconnect.
                acks.append(await js.publish_async(
                    self.subject, record.payload,
                    headers={"Nats-Msg-Id": msg_id(self.cluster, record.seq)}))
        except Exception as exc:  # confirm what went out; the rest goes in the next round
            send_error = exc
        confirmed = 0
        ack_error: Exception | None = None
        try:
            for record, fut in zip(window, acks, strict=False):
                async with asyncio.timeout(self._timeout):
                    ack = await fut
                if ack.duplicate:
                    log.debug("event %d was already in the stream", record.seq)
                confirmed += 1
        except Exception as exc:  # the first gap: nothing after it counts as delivered
            ack_error = exc
        finally:
            for fut in acks[confirmed:]:
                fut.cancel()  # frees the context's slot; a late ack is ignored
        if confirmed:  # never past an unconfirmed record
            await self.outbox.ack_async(window[confirmed - 1].seq)
            self._delivered += confirmed
        error = ack_error or send_error  # the earlier in sequence
        if error is not None:
            raise error

    async def _deliver_status(self, nc: Client, js: JetStreamContext, record: Record) -> None:
        if self.outbox.status_seq != record.seq:
            return  # superseded while this round ran; the newer one follows
        if self._kv is not None and self._kv[0] is nc:
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
    # asyncio.timeout: wait_for can swallow a cancellation on Python 3.11 (loops call this)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
