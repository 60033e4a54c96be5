"""A work queue with controller-runtime's contract.

Triggers only add keys. A key is queued at most once however often it is added; a key being
worked on is never handed to a second worker, and if it is added meanwhile it runs once more
afterwards (it is "dirty"). Failures are retried with the runtime's one backoff (exponential,
jittered), so a fleet of agents hitting the same broken API do not retry in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Hashable

from .backoff import delay as backoff_delay


class ShutDown(Exception):
    """The queue was shut down: workers stop."""


class WorkQueue:
    def __init__(self, base_delay: float = 0.05, max_delay: float = 60.0,
                 rng: random.Random | None = None) -> None:
        self._queue: deque[Hashable] = deque()
        self._queued: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._ready = asyncio.Event()
        self._base = base_delay
        self._max = max_delay
        self._rng = rng or random.Random()
        self._shutdown = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def depth(self) -> int:
        return len(self._queue) + len(self._timers)

    def add(self, key: Hashable) -> None:
        if self._shutdown:
            return
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._queued.add(key)
        self._queue.append(key)
        self._wake()

    def add_after(self, key: Hashable, delay: float) -> None:
        if self._shutdown or key in self._queued or key in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: Hashable) -> float:
        """Re-add after a failure; returns the delay chosen (grows with the key's failures)."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        delay = backoff_delay(n, self._base, self._max, self._rng)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """A success: the next failure starts backing off from the beginning."""
        self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def _wake(self) -> None:
        self._ready.set()

    async def get(self) -> Hashable:
        """The next key to work on; raises ShutDown once the queue is shut down and empty."""
        while not self._queue:
            if self._shutdown:
                raise ShutDown
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Hashable) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    @property
    def active(self) -> int:
        return len(self._active)

    def shutdown(self) -> None:
        self._shutdown = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._ready.set()
