"""Leader election on a coordination.k8s.io Lease, so two agent replicas never both write.

The protocol of client-go's leaderelection. Edge sites often have no reliable time sync, so no
decision ever compares a timestamp written by another replica with the local clock:

* A candidate remembers the last lease record it observed and the local *monotonic* instant at
  which it last saw that record change. The lease counts as expired only when it has not changed
  for `leaseDurationSeconds` (as written in the lease) of the candidate's own monotonic time.
  The wall-clock `renewTime`/`acquireTime` are written for people and tools, never read back.
* Every write is guarded by resourceVersion, so two candidates cannot both win, and a takeover
  based on a stale observation fails.
* The leader counts itself leader only until `renew_deadline` after the start of its last
  successful write. Any other replica saw that write no earlier than it started, and waits
  `lease_duration > renew_deadline` from then: a leader that cannot renew stops writing strictly
  before anyone else may take over (assuming only that monotonic clocks tick at the same rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agent.kube import resources as r
from agent.kube.errors import AlreadyExists, Conflict, KubeError, NotFound
from agent.kube.types import KubeClient, Obj

from .backoff import delay

log = logging.getLogger(__name__)

FIELD_MANAGER = "outpost-agent"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _fmt(t: datetime) -> str:
    """RFC 3339 with microseconds, the MicroTime format of a Lease."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class LeaseRecord:
    """The election fields of a Lease's spec. Timestamps stay opaque strings: they are only
    compared for equality, to notice that the lease changed."""

    holder: str
    lease_duration: int
    acquire_time: str
    renew_time: str
    transitions: int

    @classmethod
    def of(cls, lease: Obj) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""),
                   lease_duration=_int(spec.get("leaseDurationSeconds")),
                   acquire_time=str(spec.get("acquireTime") or ""),
                   renew_time=str(spec.get("renewTime") or ""),
                   transitions=_int(spec.get("leaseTransitions")))

    def spec(self) -> Obj:
        return {"holderIdentity": self.holder, "leaseDurationSeconds": self.lease_duration,
                "acquireTime": self.acquire_time, "renewTime": self.renew_time,
                "leaseTransitions": self.transitions}


class LeaderElector:
    """One replica's candidacy for the lease `namespace/name`.

    `run()` keeps trying to acquire, then renews every `retry_period`; `is_leader` is what a
    writer checks before each batch of writes; `release()` hands over on a clean shutdown.
    `monotonic` drives every decision; `wall_clock` only stamps the times written to the lease.
    Left unset, `renew_deadline` and `retry_period` scale with `lease_duration` as client-go's
    defaults do (15/10/2 s).
    """

    def __init__(self, kube: KubeClient, *, name: str, namespace: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float | None = None,
                 retry_period: float | None = None,
                 on_change: Callable[[bool], None] | None = None,
                 field_manager: str = FIELD_MANAGER,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = _utcnow) -> None:
        if renew_deadline is None:
            renew_deadline = lease_duration * 2 / 3
        if retry_period is None:
            retry_period = lease_duration * 2 / 15
        if not retry_period > 0:
            raise ValueError(f"leader election: retry_period must be positive, not "
                             f"{retry_period} s")
        if not renew_deadline > retry_period:
            raise ValueError(f"leader election: renew_deadline ({renew_deadline} s) must be "
                             f"longer than retry_period ({retry_period} s), or a leader could "
                             "not even retry once before it steps down")
        if not lease_duration > renew_deadline:
            raise ValueError(f"leader election: lease_duration ({lease_duration} s) must be "
                             f"longer than renew_deadline ({renew_deadline} s), or another "
                             "replica could take the lease while this one still leads")
        self.kube = kube
        self.field_manager = field_manager
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.monotonic = monotonic
        self.wall_clock = wall_clock
        self._leader = False
        self._stopped = False
        self._lock = asyncio.Lock()
        #: The last lease record seen, when it was last seen to change, and the whole object
        #: (its resourceVersion guards our next write; its other fields are kept as they are).
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._lease: Obj | None = None
        #: Start of our last successful write as holder: the base of our leadership.
        self._renewed_at: float | None = None

    # -- state -----------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True only while our last successful renewal started less than `renew_deadline`
        ago; the moment that fails we step down (and tell `on_change`)."""
        if self._leader and not self._valid(self.monotonic()):
            log.warning("leader election: no renewal for %.1f s, stepping down",
                        self.renew_deadline, extra={"identity": self.identity,
                                                    "lease": self.name})
            self._set(False)
        return self._leader

    def healthy(self, tolerance: float = 20.0) -> tuple[bool, str]:
        """A liveness verdict like client-go's healthz adaptor: unhealthy only when this replica
        holds the lease, as far as it knows, and has not renewed it for more than the lease
        duration plus `tolerance` (its election loop is stuck or cut off)."""
        if self.is_leader:
            return True, "leading"
        rec = self._observed
        if self._stopped or rec is None or rec.holder != self.identity or \
                self._renewed_at is None:
            return True, "not holding the lease"
        overdue = self.monotonic() - self._renewed_at - self.lease_duration
        if overdue > tolerance:
            return False, (f"lease {self.namespace}/{self.name} held but not renewed for "
                           f"{overdue + self.lease_duration:.1f} s")
        return True, "holding the lease, renewal overdue"

    def _valid(self, now: float) -> bool:
        return self._renewed_at is not None and now - self._renewed_at < self.renew_deadline

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info("leadership %s", "acquired" if leader else "lost",
                     extra={"identity": self.identity, "lease": self.name})
            if self.on_change is not None:
                self.on_change(leader)

    def _observe(self, lease: Obj, seen: float) -> LeaseRecord:
        rec = LeaseRecord.of(lease)
        if rec != self._observed:
            self._observed = rec
            self._observed_at = seen
        self._lease = lease
        return rec

    # -- protocol --------------------------------------------------------------------------
    def _body(self, rec: LeaseRecord, base: Obj | None) -> Obj:
        """The lease to write: `base` (as last read, resourceVersion included) with our record
        in its spec, so labels, annotations and unknown fields survive; or a new one."""
        if base is None:
            return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": rec.spec()}
        return {**base, "metadata": dict(base.get("metadata") or {}),
                "spec": {**(base.get("spec") or {}), **rec.spec()}}

    def _ours(self, previous: LeaseRecord | None) -> LeaseRecord:
        """Our record for a write: a renewal keeps acquireTime and the transition count."""
        now = _fmt(self.wall_clock())
        duration = math.ceil(self.lease_duration)  # rounding up only makes others wait longer
        if previous is not None and previous.holder == self.identity:
            return replace(previous, lease_duration=duration, renew_time=now,
                           acquire_time=previous.acquire_time or now)
        transitions = previous.transitions + 1 if previous is not None else 0
        return LeaseRecord(self.identity, duration, now, now, transitions)

    async def _write(self, rec: LeaseRecord, base: Obj | None) -> bool:
        """Create (no `base`) or replace the lease with our record; True when leading."""
        started = self.monotonic()
        if base is None:
            stored = await self.kube.create(r.LEASE, self._body(rec, None))
        else:
            stored = await self.kube.replace(r.LEASE, self._body(rec, base),
                                             field_manager=self.field_manager)
        # Leadership counts from before the request: no one can have seen it earlier.
        self._renewed_at = started
        self._observed = rec
        self._observed_at = started
        self._lease = stored
        self._set(self._valid(self.monotonic()) and not self._stopped)
        return self._leader

    async def try_acquire_or_renew(self) -> bool:
        """One round: renew our lease, or take it if free or expired. True when leading after
        it. KubeErrors other than losing a race propagate; leadership then lapses on its own
        at the renew deadline."""
        async with self._lock:
            if self._stopped:
                return False
            rec = self._observed
            if rec is not None and rec.holder == self.identity and self._lease is not None:
                # Still ours as far as we know: renew without a read; a Conflict means someone
                # touched the lease, so look at it.
                with contextlib.suppress(Conflict):
                    return await self._write(self._ours(rec), self._lease)
            try:
                lease = await self.kube.get(r.LEASE, self.name, self.namespace)
            except NotFound:
                try:
                    return await self._write(self._ours(None), None)
                except (AlreadyExists, Conflict):
                    return self.is_leader
            seen = self.monotonic()
            rec = self._observe(lease, seen)
            if rec.holder and rec.holder != self.identity:
                duration = rec.lease_duration if rec.lease_duration > 0 else self.lease_duration
                if seen - self._observed_at <= duration:
                    self._renewed_at = None
                    self._set(False)  # someone else holds it: we cannot be leading
                    return False
            try:
                return await self._write(self._ours(rec), lease)
            except Conflict:
                return self.is_leader  # someone moved first; our own deadline still applies

    async def run(self) -> None:
        """Campaign until `release()`: renew every `retry_period` while leading; poll with
        jittered backoff while following. A renewal still pending at the renew deadline is
        abandoned, so `on_change(False)` fires on time even if nobody reads `is_leader`."""
        failures = 0
        while not self._stopped:
            left = self._time_left()
            try:
                async with asyncio.timeout(left if left > 0 else self.lease_duration):
                    await self.try_acquire_or_renew()
                failures = 0
            except (KubeError, TimeoutError) as e:
                failures += 1
                log.warning("leader election: %s", str(e) or "attempt timed out",
                            extra={"identity": self.identity, "lease": self.name})
            if self.is_leader:
                wait = min(self.retry_period, self._time_left())
            else:
                wait = delay(failures, self.retry_period,
                             max(self.retry_period, self.lease_duration / 2))
            await asyncio.sleep(wait)

    def _time_left(self) -> float:
        """Seconds of leadership left (0 when not leading)."""
        if not self.is_leader or self._renewed_at is None:
            return 0.0
        return max(0.0, self._renewed_at + self.renew_deadline - self.monotonic())

    async def release(self) -> None:
        """Stop campaigning and, if we hold the lease, hand it over at once on a clean shutdown
        instead of making the others wait it out (an empty holder is free to take)."""
        self._stopped = True
        self._set(False)
        async with self._lock:  # let an attempt in flight finish: it cannot lead any more
            self._renewed_at = None
            with contextlib.suppress(KubeError):
                lease = await self.kube.get(r.LEASE, self.name, self.namespace)
                rec = LeaseRecord.of(lease)
                if rec.holder != self.identity:
                    return
                now = _fmt(self.wall_clock())
                free = replace(rec, holder="", lease_duration=1, acquire_time=now,
                               renew_time=now)
                self._lease = await self.kube.replace(r.LEASE, self._body(free, lease),
                                                      field_manager=self.field_manager)
                self._observed = free
