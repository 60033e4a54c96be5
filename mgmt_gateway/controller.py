"""The OutpostCluster controller: level-triggered reconciles, one cluster at a time per key.

Triggers only enqueue a key (an OutpostCluster or ClusterProfile changed, an agent reported,
a requeue with a reason: waiting for CAPI, a step that failed, an agent report going stale);
nothing lists on a timer. Each pass re-reads the resource from the informer cache, works out
the desired spec, runs the next bootstrap step or publishes, and writes the status only when it
changes, so a converged fleet costs the management API nothing.

Only the leader works: every replica keeps its informers warm and serves the API, a standby
takes over when the lease is lost and resumes each cluster from its status and pivot journal.
A pass that raises (of any type) is logged, counted, shown in the status and a Warning Event,
and retried with that key's own backoff; it never stops the other clusters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.kube import Conflict, KubeError, NotFound, Obj
from agent.runtime.informer import object_key
from agent.runtime.queue import WorkQueue

from .bootstrap import Bootstrapper, StepFailed
from .clusters import (
    FINALIZER,
    MANAGER,
    OUTPOST_CLUSTER,
    AgentView,
    Invalid,
    record_of,
    same_status,
    spec_hash,
    status_of,
)
from .events import EventRecorder
from .publish import StatusCollector
from .state import ClusterRecord, now
from .store import OutpostClusters

log = logging.getLogger("outpost.gateway.controller")


class NotLeader(Exception):
    """This replica must not write: it does not hold the lease (any more)."""


class ClusterController:
    def __init__(self, fleet: OutpostClusters, bootstrap: Bootstrapper,
                 statuses: StatusCollector, events: EventRecorder, *,
                 leading: Callable[[], bool] = lambda: True, workers: int = 4,
                 poll: float = 2.0, retry_max: float = 60.0, stale_after: float = 90.0,
                 last_seen_refresh: float = 600.0, registry: CollectorRegistry | None = None,
                 clock: Callable[[], datetime] = now) -> None:
        self.fleet = fleet
        self.bootstrap = bootstrap
        self.statuses = statuses
        self.events = events
        self.leading = leading
        self.workers = workers
        self.poll = poll
        self.stale_after = stale_after
        self.last_seen_refresh = last_seen_refresh
        self.clock = clock
        self.queue = WorkQueue(base_delay=min(0.5, poll), max_delay=max(retry_max, poll))
        self._lead = asyncio.Event()
        self._errors: dict[str, str] = {}  # key -> the last error reported (once each)
        fleet.clusters.on_object = self.queue.add
        fleet.profiles.on_object = self._profile_changed
        statuses.on_report = self._reported
        bootstrap.may_write = self.may_write
        fleet.agents = self._agent
        self.step_errors = Counter(
            "outpost_gateway_bootstrap_step_errors",
            "Reconcile passes that raised and will be retried, by phase and error type",
            ["phase", "error"], registry=registry)
        self.reconciles = Counter(
            "outpost_gateway_reconciles", "OutpostCluster reconcile passes, by result",
            ["result"], registry=registry)
        self.invalid = Gauge(
            "outpost_gateway_invalid_clusters",
            "OutpostClusters the gateway cannot work now (invalid spec, missing profile, "
            "duplicate name); their SpecAccepted condition says why", registry=registry)
        self.depth = Gauge("outpost_gateway_queue_depth",
                           "OutpostClusters waiting for a reconcile pass", registry=registry)
        self._invalid: set[str] = set()
        self.steps_done = 0  # steps this replica carried out (a standby does none)

    # -- triggers ------------------------------------------------------------------------------
    def _reported(self, name: str) -> None:
        obj = self.fleet.owner_of(name)
        if obj is not None:
            self.queue.add(object_key(obj))

    def _profile_changed(self, key: str) -> None:
        namespace = key.partition("/")[0]
        for obj in list(self.fleet.clusters.items.values()):
            if obj["metadata"].get("namespace") == namespace and (obj.get("spec") or {}).get(
                    "profile"):
                self.queue.add(object_key(obj))

    def leadership_changed(self, leader: bool) -> None:
        """For the leader elector: start working every cluster, or stop writing."""
        if leader:
            log.info("leading: working every OutpostCluster")
            self._lead.set()
            for key in list(self.fleet.clusters.items):
                self.queue.add(key)
        else:
            log.warning("lost the lease: another replica works the clusters now")
            self._lead.clear()

    def may_write(self) -> None:
        if not self.leading():
            raise NotLeader("this gateway replica does not hold the lease")

    # -- workers -------------------------------------------------------------------------------
    async def run_worker(self, heartbeat: Callable[[], None] = lambda: None,
                         beat_every: float = 5.0) -> None:
        """One worker; several run at once, never two on the same key."""
        if self.leading():
            self._lead.set()
        while True:
            heartbeat()
            if not self.leading():
                self._lead.clear()
                try:
                    await asyncio.wait_for(self._lead.wait(), beat_every)
                except TimeoutError:
                    continue
            try:
                key = await asyncio.wait_for(self.queue.get(), beat_every)
            except TimeoutError:
                continue
            self.depth.set(self.queue.depth)
            try:
                await self.reconcile(str(key))
            finally:
                self.queue.done(key)

    async def reconcile(self, key: str) -> None:
        """One pass over one OutpostCluster; never raises but for cancellation."""
        obj = self.fleet.object(key)
        if obj is None:
            self.queue.forget(key)
            self._errors.pop(key, None)
            self._invalid.discard(key)
            self.invalid.set(len(self._invalid))
            return
        try:
            again = await self._reconcile(key, obj)
        except NotLeader:
            self.reconciles.labels("not-leader").inc()
            return  # the new leader works it; we re-enqueue everything if we lead again
        except Conflict:
            # Someone wrote the resource since the cache saw it; the watch brings the new
            # version and enqueues it; retry soon in case the event was missed.
            self.reconciles.labels("conflict").inc()
            self.queue.add_after(key, min(self.poll, 1.0))
            return
        except Exception as e:
            self.reconciles.labels("error").inc()
            await self._failed(key, e)
            return
        self.reconciles.labels("ok").inc()
        self.queue.forget(key)
        self._errors.pop(key, None)
        if again is not None:
            self.queue.add_after(key, again)

    async def _failed(self, key: str, e: Exception) -> None:
        delay = self.queue.retry(key)
        obj = self.fleet.object(key)
        phase = str(((obj or {}).get("status") or {}).get("phase") or "Requested")
        self.step_errors.labels(phase=phase, error=type(e).__name__).inc()
        why = f"{phase}: {type(e).__name__}: {e}"[:1000]
        extra = {"cluster": key, "phase": phase, "retry_in": round(delay, 2)}
        if isinstance(e, KubeError):
            log.warning("cluster %s: %s step failed, retrying in %.1fs: %s", key, phase, delay,
                        e, extra=extra)
        else:
            log.error("cluster %s: %s step raised unexpectedly, retrying in %.1fs", key, phase,
                      delay, exc_info=e, extra=extra)
        if obj is None or self._errors.get(key) == why:
            return
        self._errors[key] = why
        await self.events.record(obj, "StepFailed", f"{why}; retrying in {delay:.0f}s",
                                 "Warning")
        try:  # best effort: the retry stands anyway
            self.may_write()
            status = dict(obj.get("status") or {})
            if status.get("lastError") != why:
                ready = self._conditions_with_error(status, why, obj)
                await self.fleet.write_status(obj, {**status, "lastError": why,
                                                    "conditions": ready})
        except Exception as save:
            log.debug("cluster %s: could not save its last error: %s", key, save)

    def _conditions_with_error(self, status: dict[str, Any], why: str,
                               obj: Obj) -> list[dict[str, Any]]:
        out = [c for c in status.get("conditions") or () if c.get("type") != "Ready"]
        before = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"),
                      None)
        since = (before or {}).get("lastTransitionTime") if (before or {}).get(
            "status") == "False" else self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append({"type": "Ready", "status": "False", "reason": "StepFailing",
                    "message": f"the last attempt failed: {why} (retrying with backoff)",
                    "lastTransitionTime": since,
                    "observedGeneration": int(obj["metadata"].get("generation") or 0)})
        return out

    # -- one pass ------------------------------------------------------------------------------
    def _agent(self, name: str) -> AgentView | None:
        obs = self.statuses.latest.get(name)
        seen = self.statuses.last_seen.get(name)
        if obs is None or seen is None:
            return None
        fresh = (self.clock() - seen).total_seconds() <= self.stale_after
        return AgentView(report=obs, last_seen=seen, connected=obs.connected and fresh)

    def _status(self, rec: ClusterRecord | None, obj: Obj, *, invalid: Invalid | None = None,
                ) -> dict[str, Any]:
        agent = self._agent(obj["metadata"]["name"])
        status = status_of(rec, obj, spec_digest=spec_hash(rec.spec) if rec else None,
                           invalid=invalid, agent=agent, now=self.clock())
        old = (obj.get("status") or {}).get("lastSeen")
        new = status.get("lastSeen")
        if old and new and old != new:
            # The last-seen time alone is refreshed seldom: at fleet scale, one status write
            # per agent report would be the management API's whole load. A write that happens
            # anyway (connected flipped, a new revision applied) carries the fresh time.
            delta = _parse(new) - _parse(old)
            held = {**status, "lastSeen": old}
            if (timedelta(0) <= delta < timedelta(seconds=self.last_seen_refresh)
                    and same_status(held, obj.get("status") or {})):
                return held
        return status

    def _requeue_for_agent(self, name: str) -> float | None:
        """When the agent's report goes stale (connected turns false), if it is fresh now."""
        agent = self._agent(name)
        if agent is None or not agent.connected:
            return None
        left = self.stale_after - (self.clock() - agent.last_seen).total_seconds()
        return max(left, 0.0) + 0.5

    async def _reconcile(self, key: str, obj: Obj) -> float | None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return await self._retire(key, obj)
        if FINALIZER not in (meta.get("finalizers") or ()):
            self.may_write()
            obj = await self.fleet.kube.patch(
                OUTPOST_CLUSTER, meta["name"],
                {"metadata": {"finalizers": [*(meta.get("finalizers") or ()), FINALIZER],
                              "resourceVersion": meta["resourceVersion"]}},
                meta["namespace"], field_manager=MANAGER)
            self.fleet.clusters.store(obj)
        await self.fleet.prepare(obj)  # charts, URLs, uploads: fetched and rendered once
        found = self.fleet.desired(obj)
        if isinstance(found, Invalid):
            self._invalid.add(key)
            self.invalid.set(len(self._invalid))
            status = self._status(None, obj, invalid=found)
            old = (obj.get("status") or {}).get("conditions") or ()
            before: dict[str, Any] = next(
                (c for c in old if c.get("type") == "SpecAccepted"), {})
            self.may_write()
            await self.fleet.write_status(obj, status)
            if before.get("message") != found.message:
                log.warning("cluster %s cannot be worked: %s: %s", key, found.reason,
                            found.message, extra={"cluster": key, "reason": found.reason})
                await self.events.record(obj, found.reason, found.message, "Warning")
            return None
        self._invalid.discard(key)
        self.invalid.set(len(self._invalid))
        spec, digest = found
        rec = record_of(obj, spec)
        status = obj.get("status") or {}
        if digest != status.get("specHash") or spec.revision != status.get("desiredRevision"):
            # Record the new revision before anything acts on it, so a crash can never
            # publish two different specs under one revision number.
            self.may_write()
            rec = await self.fleet.update(rec)
            if spec.revision > 1:
                await self.events.record(self._latest(key, obj), "RevisionCreated",
                                         f"spec revision {spec.revision} is the desired state")
        while True:
            obj = self._latest(key, obj)
            if rec.phase == "Failed":
                await self._sync(rec, obj)
                return None
            try:
                nxt = await self.bootstrap.advance(rec)
            except StepFailed as e:
                log.error("cluster %s failed in %s: %s", key, rec.phase, e,
                          extra={"cluster": key, "phase": rec.phase})
                failed = await self.fleet.update(rec.failed(f"{rec.phase}: {e}"))
                await self.events.record(self._latest(key, obj), "Failed",
                                         f"{rec.phase}: {e}", "Warning")
                await self._sync(failed, self._latest(key, obj))
                return None
            if nxt is None:
                await self._sync(rec, obj)
                if rec.phase == "Managed":
                    return self._requeue_for_agent(rec.name)
                return self.poll  # waiting on the cluster (CAPI, the agent's rollout)
            self.steps_done += 1
            if nxt.phase != rec.phase:
                step = nxt.steps[-1] if nxt.steps else None
                await self.events.record(self._latest(key, obj), nxt.phase,
                                         step.detail if step and step.detail else nxt.phase)
            elif nxt.published_revision != rec.published_revision:
                await self.events.record(self._latest(key, obj), "Published",
                                         f"spec revision {nxt.published_revision} published "
                                         "to the agent")
            if nxt.phase == "Pivoted":
                report = self.bootstrap.pivot_reports.pop(nxt.name, None)
                if report is not None:
                    latest = self._latest(key, obj)
                    st = dict(latest.get("status") or {})
                    st["pivot"] = {**(st.get("pivot") or {}),
                                   "journal": f"outpost-pivot-{nxt.name}",
                                   "moved": len(report.moved),
                                   "skipped": [str(s) for s in report.skipped][:100]}
                    self.may_write()
                    new = await self.fleet.write_status(latest, st)
                    nxt = record_of(new, nxt.spec)
            rec = nxt

    def _latest(self, key: str, fallback: Obj) -> Obj:
        return self.fleet.object(key) or fallback

    async def _sync(self, rec: ClusterRecord, obj: Obj) -> None:
        """Write what changed in the status besides the steps (agent report, conditions)."""
        status = self._status(rec, obj)
        self.may_write()
        await self.fleet.write_status(obj, status)

    async def _retire(self, key: str, obj: Obj) -> float | None:
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or ())
        if FINALIZER not in finalizers:
            return None
        status = dict(obj.get("status") or {})
        pivoted = any(s.get("phase") == "Pivoted" for s in status.get("steps") or ())
        if status.get("phase") != "Deleting":
            self.may_write()
            at = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
            steps = [s if s.get("finishedAt") else {**s, "finishedAt": at}
                     for s in status.get("steps") or ()]
            steps.append({"phase": "Deleting", "startedAt": at,
                          "detail": "the OutpostCluster was deleted"})
            obj = await self.fleet.write_status(obj, {**status, "phase": "Deleting",
                                                      "steps": steps})
            await self.events.record(obj, "Retiring", "tearing the cluster down" if not pivoted
                                     else "forgetting the self-managed cluster")
        done = await self.bootstrap.retire(meta["name"], meta["namespace"], pivoted=pivoted)
        if not done:
            return self.poll
        await self.events.record(obj, "Retired", "the cluster is retired")
        self.may_write()
        with contextlib.suppress(NotFound):
            released = await self.fleet.kube.patch(
                OUTPOST_CLUSTER, meta["name"],
                {"metadata": {"finalizers": [f for f in finalizers if f != FINALIZER],
                              "resourceVersion": obj["metadata"]["resourceVersion"]}},
                meta["namespace"], field_manager=MANAGER)
            self.fleet.clusters.store(released)  # a pass before the watch catches up: no-op
        log.info("cluster %s retired", key, extra={"cluster": key})
        return None


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
