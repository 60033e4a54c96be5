"""Leader election on a coordination.k8s.io Lease, so two agent replicas never both write.

The same protocol client-go's leaderelection uses: the holder renews `renewTime` well within
`leaseDurationSeconds`; anyone may take over a lease whose renewal is overdue, and every change
goes through optimistic concurrency (resourceVersion), so two candidates cannot both win. A leader
that cannot renew in time steps down on its own before anyone else may take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from agent.kube import resources as r
from agent.kube.errors import AlreadyExists, Conflict, KubeError, NotFound
from agent.kube.types import KubeClient, Obj

log = logging.getLogger(__name__)


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> datetime | None:
    if not s:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(s, fmt).replace(tzinfo=UTC)
    return None


class LeaderElector:
    def __init__(self, kube: KubeClient, *, name: str, namespace: str, identity: str,
                 lease_duration: float = 15.0, renew_every: float | None = None,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = lease_duration
        self.renew_every = renew_every or lease_duration / 3
        self.on_change = on_change
        self.clock = clock
        self._leader = False
        self._last_renew: datetime | None = None

    @property
    def is_leader(self) -> bool:
        # Step down on our own once a renewal is overdue: by then another replica may lead.
        if self._leader and self._last_renew is not None and (
                self.clock() - self._last_renew).total_seconds() > self.duration * 0.8:
            self._set(False)
        return self._leader

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info("leadership %s", "acquired" if leader else "lost",
                     extra={"identity": self.identity, "lease": self.name})
            if self.on_change is not None:
                self.on_change(leader)

    def _body(self, now: datetime, acquire: datetime, transitions: int) -> Obj:
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": int(self.duration),
                         "acquireTime": _fmt(acquire), "renewTime": _fmt(now),
                         "leaseTransitions": transitions}}

    async def try_acquire_or_renew(self) -> bool:
        now = self.clock()
        try:
            lease = await self.kube.get(r.LEASE, self.name, self.namespace)
        except NotFound:
            try:
                await self.kube.create(r.LEASE, self._body(now, now, 0))
            except (AlreadyExists, Conflict):
                return False
            self._last_renew = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        expired = renewed is None or now > renewed + timedelta(seconds=duration)
        if holder not in (None, "", self.identity) and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquire = _parse(spec.get("acquireTime")) or now
        if holder != self.identity:
            transitions += 1
            acquire = now
        body = self._body(now, acquire, transitions)
        body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        try:
            await self.kube.replace(r.LEASE, body, field_manager="outpost-agent")
        except Conflict:
            return False  # someone else moved first
        self._last_renew = now
        return True

    async def run(self) -> None:
        while True:
            try:
                self._set(await self.try_acquire_or_renew())
            except KubeError as e:
                log.warning("leader election: %s", e)
                _ = self.is_leader  # let an overdue renewal step us down
            await asyncio.sleep(self.renew_every)

    async def release(self) -> None:
        """Hand over at once on a clean shutdown instead of making the others wait it out."""
        if not self._leader:
            return
        self._set(False)
        with contextlib.suppress(KubeError):
            lease = await self.kube.get(r.LEASE, self.name, self.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.kube.replace(r.LEASE, lease, field_manager="outpost-agent")
