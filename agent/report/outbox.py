"""A bounded, crash-safe disk queue for what the agent must tell the management plane.

The management link comes and goes; the agent keeps working. Everything it reports goes here
first (write-ahead) and leaves only once delivered, so a disconnection or a restart loses nothing
short of the bounds below.

Storage: one JSON-lines file, ``outbox.jsonl``. Appending a record writes one line and fsyncs
it before returning. Acknowledging or dropping records appends a small marker line instead of
rewriting the file; once the dead lines outweigh the live ones (and at least
``compact_threshold`` bytes) the file is compacted atomically: temp file, fsync, rename, fsync of
the directory. Ack markers are not fsynced: losing one in a crash only means a record is sent
again, and JetStream drops the copy by its message id. A torn last line (a crash in mid-write)
is skipped and counted in :attr:`Outbox.torn`.

Bounds: at most ``max_entries`` pending records and ``max_bytes`` of pending lines. When an
append would exceed either, the OLDEST events are dropped and counted in :attr:`Outbox.dropped`
(persisted). The pending status is never dropped to make room; it is only ever replaced. Memory
holds just the pending records, and the file stays under about ``2 * max_bytes``.

Statuses coalesce: only the newest status matters to the management plane, so at most one is
pending and :meth:`Outbox.set_status` replaces it (replacement is not a drop).

Order: records share one sequence; :meth:`Outbox.pending` returns them in sequence order. Events
keep their order; the pending status sits after every event recorded before it, so the
management plane never sees a status that is newer than the events that explain it. In the
usual case (a status is computed after the events) it comes last. :meth:`Outbox.ack` takes the
sequence number of the newest delivered record and releases it and everything before it.

Blocking I/O (small writes and an fsync) is fine from a thread; event-loop code uses the
``*_async`` wrappers. A lock file keeps a second process from using the same directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from agent.spec.status import StatusReport

from .events import AgentEvent

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "Outbox",
    "OutboxError",
    "OutboxLockedError",
    "Record",
    "RecordKind",
    "RecordTooLargeError",
]

log = logging.getLogger(__name__)

RecordKind = Literal["status", "event"]

DEFAULT_MAX_ENTRIES: Final = 10_000
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024
DEFAULT_COMPACT_THRESHOLD: Final = 256 * 1024
FILE_NAME: Final = "outbox.jsonl"
LOCK_NAME: Final = "outbox.lock"
FORMAT_VERSION: Final = 1


class OutboxError(RuntimeError):
    """The outbox cannot be used (closed, or written by a newer format)."""


class OutboxLockedError(OutboxError):
    """Another process holds the outbox directory."""


class RecordTooLargeError(ValueError):
    """One record may use at most a quarter of the byte budget, so a status always fits."""


@dataclass(frozen=True, slots=True)
class Record:
    """One pending report: the exact bytes to publish, and its place in the sequence."""

    kind: RecordKind
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Entry:
    record: Record
    size: int  # bytes of its line in the file, newline included


def _dumps(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("ascii")


def _encode(record: Record) -> bytes:
    return _dumps({"t": record.kind, "seq": record.seq, "p": record.payload.decode("utf-8")})


def _positive_int(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """Pending status and events on disk, bounded, delivered in order (see the module doc).

    Thread-safe. ``close()`` (or ``with Outbox(...)``) releases the directory for another
    instance.
    """

    def __init__(self, directory: Path, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, *,
                 compact_threshold: int = DEFAULT_COMPACT_THRESHOLD) -> None:
        if max_entries < 2:
            raise ValueError("max_entries must be at least 2 (a status and an event)")
        if max_bytes < 4096:
            raise ValueError("max_bytes must be at least 4096")
        self.directory = Path(directory)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.compact_threshold = min(max(0, compact_threshold), max_bytes)
        self._path = self.directory / FILE_NAME
        self._lock = threading.RLock()
        self._events: OrderedDict[int, _Entry] = OrderedDict()
        self._status: _Entry | None = None
        self._live_bytes = 0
        self._dead_bytes = 0
        self._file_bytes = 0
        self._next = 1  # next unreserved sequence number
        self._last = 0  # highest sequence number written
        self._dropped = 0
        self._torn = 0
        self._fd = -1
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_directory()
        try:
            self._load()
            self._apply_drops(self._plan_drops(add_entries=0, add_bytes=0))  # bounds shrank
            self._compact_locked()
        except BaseException:
            self.close()
            raise

    # -- public API -----------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Pending records (events plus at most one status)."""
        return len(self._events) + (self._status is not None)

    @property
    def pending_bytes(self) -> int:
        """Bytes of pending lines, the quantity bounded by ``max_bytes``."""
        return self._live_bytes

    @property
    def dropped(self) -> int:
        """Events dropped to respect the bounds, ever (persisted across restarts)."""
        return self._dropped

    @property
    def torn(self) -> int:
        """Unreadable lines skipped when the file was opened (a crash in mid-write)."""
        return self._torn

    @property
    def last_seq(self) -> int:
        """No pending record has a higher sequence number: lets a sender bound one round to
        what was written before it started."""
        return self._last

    @property
    def status_seq(self) -> int | None:
        """Sequence number of the pending status, if any: lets a sender skip a stale one."""
        status = self._status
        return None if status is None else status.record.seq

    def next_seq(self) -> int:
        """Reserve and return a sequence number (persisted once a record is written).

        Optional: :meth:`append_event` stamps events with ``seq`` 0 itself, which is the safe
        way when several tasks emit events concurrently.
        """
        with self._lock:
            seq = self._next
            self._next += 1
            return seq

    def append_event(self, event: AgentEvent) -> AgentEvent:
        """Write an event durably and return it as stored; its ``seq`` there is authoritative.

        An event with ``seq`` 0, or with a number not above everything already written (a
        reservation overtaken by another record), is stamped with the next number.
        """
        with self._lock:
            self._check_open()
            seq = event.seq if event.seq > self._last else self._next
            if seq != event.seq:
                event = event.model_copy(update={"seq": seq})
            record = Record("event", seq, event.model_dump_json(by_alias=True).encode())
            line = _encode(record)
            self._check_size(len(line))
            drops = self._plan_drops(add_entries=1, add_bytes=len(line))
            self._write(self._drop_marker(drops) + line, sync=True)
            self._apply_drops(drops)
            self._events[seq] = _Entry(record, len(line))
            self._live_bytes += len(line)
            self._advance(seq)
            self._maybe_compact()
            return event

    def set_status(self, status: StatusReport) -> Record:
        """Write the newest status durably, replacing the pending one (coalescing)."""
        with self._lock:
            self._check_open()
            seq = self._next
            # Fields left unset are left out, so a gateway that predates them reads the report.
            record = Record("status", seq, status.model_dump_json(
                by_alias=True, exclude_none=True).encode())
            line = _encode(record)
            self._check_size(len(line))
            old = self._status
            drops = self._plan_drops(add_entries=0 if old else 1,
                                     add_bytes=len(line) - (old.size if old else 0))
            self._write(self._drop_marker(drops) + line, sync=True)
            self._apply_drops(drops)
            if old is not None:
                self._live_bytes -= old.size
                self._dead_bytes += old.size
            self._status = _Entry(record, len(line))
            self._live_bytes += len(line)
            self._advance(seq)
            self._maybe_compact()
            return record

    def pending(self, limit: int | None = None) -> list[Record]:
        """Pending records in sequence order (oldest first), at most ``limit`` of them."""
        with self._lock:
            out: list[Record] = []
            status = self._status
            for seq, entry in self._events.items():
                if status is not None and status.record.seq < seq:
                    out.append(status.record)
                    status = None
                out.append(entry.record)
                if limit is not None and len(out) >= limit:
                    return out[:limit]
            if status is not None:
                out.append(status.record)
            return out if limit is None else out[:limit]

    def ack(self, upto_seq: int) -> int:
        """Release every pending record with ``seq <= upto_seq``; returns how many."""
        with self._lock:
            self._check_open()
            done = list(self._take_front(upto_seq))
            status = self._status
            status_done = status is not None and status.record.seq <= upto_seq
            if not done and not status_done:
                return 0
            marker = _dumps({"t": "ack", "upto": upto_seq})
            self._write(marker, sync=False)
            freed = sum(e.size for e in done)
            for entry in done:
                del self._events[entry.record.seq]
            if status_done and status is not None:
                freed += status.size
                self._status = None
            self._live_bytes -= freed
            self._dead_bytes += freed + len(marker)
            self._maybe_compact()
            return len(done) + status_done

    def compact(self) -> None:
        """Rewrite the file with only the pending records (atomic; normally automatic)."""
        with self._lock:
            self._check_open()
            self._compact_locked()

    def close(self) -> None:
        """Close the file and release the directory lock. Idempotent."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = -1

    # -- async wrappers -------------------------------------------------------------------
    async def append_event_async(self, event: AgentEvent) -> AgentEvent:
        return await asyncio.to_thread(self.append_event, event)

    async def set_status_async(self, status: StatusReport) -> Record:
        return await asyncio.to_thread(self.set_status, status)

    async def pending_async(self, limit: int | None = None) -> list[Record]:
        return await asyncio.to_thread(self.pending, limit)

    async def ack_async(self, upto_seq: int) -> int:
        return await asyncio.to_thread(self.ack, upto_seq)

    async def compact_async(self) -> None:
        await asyncio.to_thread(self.compact)

    async def close_async(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _take_directory(self) -> int:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxLockedError(f"outbox directory {self.directory} is in use") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_open(self) -> None:
        if self._fd < 0:
            raise OutboxError("outbox is closed")

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes // 4:
            raise RecordTooLargeError(
                f"record of {size} bytes exceeds a quarter of the outbox budget "
                f"({self.max_bytes} bytes)")

    def _advance(self, seq: int) -> None:
        self._last = seq
        self._next = max(self._next, seq + 1)

    def _take_front(self, upto_seq: int) -> Iterator[_Entry]:
        for seq, entry in self._events.items():
            if seq > upto_seq:
                return
            yield entry

    def _plan_drops(self, *, add_entries: int, add_bytes: int) -> list[_Entry]:
        """Oldest events to drop so that the bounds hold after adding a record."""
        entries = self.depth + add_entries
        size = self._live_bytes + add_bytes
        drops: list[_Entry] = []
        for entry in self._events.values():
            if entries <= self.max_entries and size <= self.max_bytes:
                break
            drops.append(entry)
            entries -= 1
            size -= entry.size
        return drops

    @staticmethod
    def _drop_marker(drops: list[_Entry]) -> bytes:
        if not drops:
            return b""
        return _dumps({"t": "drop", "upto": drops[-1].record.seq, "n": len(drops)})

    def _apply_drops(self, drops: list[_Entry]) -> None:
        if not drops:
            return
        freed = 0
        for entry in drops:
            del self._events[entry.record.seq]
            freed += entry.size
        self._live_bytes -= freed
        self._dead_bytes += freed + len(self._drop_marker(drops))
        before, self._dropped = self._dropped, self._dropped + len(drops)
        # Once full, every append drops: say so on the first drop and every thousandth after.
        level = logging.WARNING if before == 0 or before // 1000 != self._dropped // 1000 \
            else logging.DEBUG
        log.log(level, "outbox full: dropped %d oldest event(s) up to seq %d (%d dropped so far)",
                len(drops), drops[-1].record.seq, self._dropped)

    def _write(self, data: bytes, *, sync: bool) -> None:
        """Append whole lines; on failure cut the file back so no partial line stays behind."""
        try:
            _write_all(self._fd, data)
            if sync:
                os.fsync(self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._file_bytes)
            raise
        self._file_bytes += len(data)

    def _maybe_compact(self) -> None:
        if self._dead_bytes >= max(self._live_bytes, self.compact_threshold, 1):
            try:
                self._compact_locked()
            except OSError as exc:  # the old file is still valid; try again later
                log.warning("outbox compaction failed: %s", exc)

    def _compact_locked(self) -> None:
        meta = _dumps({"t": "meta", "v": FORMAT_VERSION, "next": self._next,
                       "dropped": self._dropped})
        data = meta + b"".join(_encode(r) for r in self.pending())
        tmp = self._path.with_name(FILE_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self._path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self._file_bytes = len(data)
        self._dead_bytes = 0

    def _load(self) -> None:
        for leftover in self.directory.glob(FILE_NAME + ".tmp*"):
            leftover.unlink(missing_ok=True)  # an interrupted compaction; the old file stands
        if not self._path.exists():
            return
        with self._path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    self._torn += 1  # only the last line can lack its newline
                    break
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                    self._replay(obj, len(raw))
                except (ValueError, KeyError, TypeError, UnicodeError):
                    self._torn += 1
        if self._torn:
            log.warning("outbox %s: skipped %d unreadable line(s) left by a crash",
                        self._path, self._torn)

    def _replay(self, obj: dict[str, Any], size: int) -> None:
        kind = obj["t"]
        if kind == "meta":
            if obj.get("v") != FORMAT_VERSION:
                raise OutboxError(f"{self._path} has format {obj.get('v')!r}; this agent "
                                  f"understands {FORMAT_VERSION} and will not overwrite it")
            self._next = max(self._next, _positive_int(obj, "next"))
            self._dropped = max(self._dropped, _positive_int(obj, "dropped"))
        elif kind in ("event", "status"):
            seq = _positive_int(obj, "seq")
            payload = obj["p"]
            if seq <= self._last or not isinstance(payload, str):
                raise ValueError("out of order or malformed record")
            entry = _Entry(Record(kind, seq, payload.encode("utf-8")), size)
            if kind == "event":
                self._events[seq] = entry
            else:
                if self._status is not None:
                    self._live_bytes -= self._status.size
                self._status = entry
            self._live_bytes += size
            self._advance(seq)
        elif kind == "ack":
            upto = _positive_int(obj, "upto")
            for entry in list(self._take_front(upto)):
                del self._events[entry.record.seq]
                self._live_bytes -= entry.size
            if self._status is not None and self._status.record.seq <= upto:
                self._live_bytes -= self._status.size
                self._status = None
        elif kind == "drop":
            upto = _positive_int(obj, "upto")
            for entry in list(self._take_front(upto)):
                del self._events[entry.record.seq]
                self._live_bytes -= entry.size
                self._dropped += 1
        else:
            raise ValueError(f"unknown line type {kind!r}")
