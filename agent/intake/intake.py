"""Turn what arrives over NATS into the desired spec the reconciler enforces.

The cached spec is published before NATS is even tried, so the agent governs its cluster from
the first second whether or not the management plane is reachable. A candidate becomes desired
only after it passes every check and is durably saved: enforcing a spec that a restart would
forget could make the agent step back to an older spec later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.runtime.backoff import delay as backoff_delay
from agent.spec import ClusterSpec

from .cache import SpecCache
from .verify import DEFAULT_MAX_BYTES, Rejected, check_candidate
from .watcher import SpecWatcher, WatcherSettings

__all__ = ["Intake", "OnDesired", "OnReject"]

log = logging.getLogger(__name__)

OnDesired = Callable[[ClusterSpec], None]
OnReject = Callable[[str, str, int], None]  # reason, message, KV revision of the rejected value


class Intake:
    """Cache + watcher + checks. start() returns at once; the watcher runs as a task.

    `on_desired(spec)` is called (synchronously; it must not block) with the cached spec at
    start and with each newly accepted spec. `on_reject(reason, message, raw_revision)` is called
    for each rejected candidate; `raw_revision` is the KV revision of the value, since a rejected
    payload's own revision may not be trustworthy.
    """

    def __init__(self, settings: WatcherSettings, *, cache_dir: Path,
                 keys: Mapping[str, Ed25519PublicKey], on_desired: OnDesired | None = None,
                 on_reject: OnReject | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 save_retry: float = 30.0) -> None:
        self.cluster = settings.cluster
        self.cache = SpecCache(cache_dir, keys=keys, cluster=settings.cluster,
                               max_bytes=max_bytes)
        self.watcher = SpecWatcher(settings, self.on_candidate)
        self.desired: ClusterSpec | None = None
        #: Highest spec revision seen in a signed candidate for this cluster, else the cached one.
        self.observed_revision = 0
        self.rejections: Counter[str] = Counter()
        self.last_rejection: Rejected | None = None
        self._keys = keys
        self._max_bytes = max_bytes
        self._save_retry = save_retry
        self._on_desired = on_desired
        self._on_reject = on_reject
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None

    async def start(self, *, watch: bool = True) -> None:
        """Publish the cached spec (if any), then start watching NATS in the background (or
        not, with `watch=False`: the caller then supervises `watcher.run()` itself)."""
        cached = await asyncio.to_thread(self.cache.load)
        if cached is not None:
            log.info("enforcing cached spec revision %d (%s copy) until NATS says otherwise",
                     cached.spec.revision, cached.source)
            self._publish(cached.spec)
        elif self.cache.last_problem:
            log.error("no usable cached spec (%s); waiting for one from NATS",
                      self.cache.last_problem)
        if watch:
            self._task = asyncio.create_task(self.watcher.run(), name="spec-watcher")

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        await self.watcher.stop()

    async def on_candidate(self, raw: bytes, kv_revision: int) -> None:
        """Check one value from the bucket; accept it (save, then publish) or reject it."""
        if self._retry is not None:  # a newer value supersedes a pending save retry
            self._retry.cancel()
            self._retry = None
        async with self._lock:
            current = self.desired
            try:
                spec = check_candidate(raw, keys=self._keys, cluster=self.cluster,
                                       cached_revision=current.revision if current else 0,
                                       max_bytes=self._max_bytes, current=current)
            except Rejected as e:
                self._reject(e, kv_revision)
                return
            self.observed_revision = max(self.observed_revision, spec.revision)
            if spec == current:
                log.debug("KV revision %d repeats spec revision %d already in force",
                          kv_revision, spec.revision)
                return
            try:
                await self.cache.save_async(raw, spec)
            except (OSError, ValueError) as e:
                log.error("spec revision %d is valid but could not be saved (%s); it is not "
                          "enforced until it is, retrying in %.0fs", spec.revision, e,
                          self._save_retry)
                self._retry = asyncio.create_task(self._retry_later(raw, kv_revision))
                return
            log.info("accepted spec revision %d (KV revision %d)", spec.revision, kv_revision)
            self._publish(spec)

    async def _retry_later(self, raw: bytes, kv_revision: int) -> None:
        # Jittered like every retry: a fleet whose disks filled up at once must not retry in step.
        await asyncio.sleep(backoff_delay(0, self._save_retry, self._save_retry))
        self._retry = None  # from here on a new candidate waits for us instead of cancelling us
        await self.on_candidate(raw, kv_revision)

    def _reject(self, e: Rejected, kv_revision: int) -> None:
        if e.revision is not None:
            self.observed_revision = max(self.observed_revision, e.revision)
        self.rejections[e.reason] += 1
        self.last_rejection = e
        log.warning("rejected the spec at KV revision %d (%s): %s; keeping revision %s",
                    kv_revision, e.reason, e.message,
                    self.desired.revision if self.desired else "none")
        if self._on_reject is not None:
            try:
                self._on_reject(e.reason, e.message, kv_revision)
            except Exception:
                log.exception("on_reject callback failed")

    def _publish(self, spec: ClusterSpec) -> None:
        self.desired = spec
        self.observed_revision = max(self.observed_revision, spec.revision)
        if self._on_desired is not None:
            try:
                self._on_desired(spec)
            except Exception:
                log.exception("on_desired callback failed")
