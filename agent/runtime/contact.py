"""How long ago the agent last heard from the management plane, measured so that a wall clock
set backwards or forwards neither hides a stale spec nor invents one.

While the agent runs, the age grows on the monotonic clock. It is persisted with the machine's
boot identity and boot-time clock (CLOCK_BOOTTIME, which counts through process restarts and
suspend and never jumps), so a restarted agent on the same boot adds exactly the time it was down.
Only across a reboot is the downtime read from the wall clock, and then a clock that went
backwards adds nothing (never younger than what was known) - the one case a jump can still
shift the figure, and only towards staleness being noticed later, never earlier than it is.
A first start with no record counts from then: an agent that never heard from the management
plane is not fresh forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from agent.intake.durable import write_atomic

log = logging.getLogger(__name__)

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class LastContact:
    def __init__(self, path: Path, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 boot: Callable[[], tuple[str, float]] = lambda: (boot_id(), boottime()),
                 persist_every: float = 60.0) -> None:
        self.path = Path(path)
        self.monotonic = monotonic
        self.wall = wall
        self.boot = boot
        self.persist_every = persist_every
        self._base = 0.0  # the age at `_since`
        self._since = monotonic()
        self._persisted_at: float | None = None
        self._persisted_age = 0.0
        self.contacted = False  # heard from the management plane since this process started

    def load(self) -> None:
        """The age as persisted, plus the time the agent was down."""
        try:
            doc = json.loads(self.path.read_bytes())
            age, then_boot, then_boottime, then_wall = (
                float(doc["age"]), str(doc["boot"]), float(doc["boottime"]), float(doc["wall"]))
            if not all(math.isfinite(x) for x in (age, then_boottime, then_wall)):
                raise ValueError("a number in it is not finite")
        except FileNotFoundError:
            self._base, self._since = 0.0, self.monotonic()
            self.persist()
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("last-contact record %s is unreadable (%s); counting from now",
                        self.path, e)
            self._base, self._since = 0.0, self.monotonic()
            return
        now_boot, now_boottime = self.boot()
        if then_boot and then_boot == now_boot:
            down = max(0.0, now_boottime - then_boottime)
        else:
            down = max(0.0, self.wall() - then_wall)
        self._base, self._since = max(0.0, age) + down, self.monotonic()

    def touch(self) -> None:
        """The management plane answered: the age starts again from zero."""
        self._base, self._since = 0.0, self.monotonic()
        self.contacted = True
        # At once when the record says the site was cut off; else at most once a period.
        if (self._persisted_at is None or self._persisted_age > self.persist_every
                or self.monotonic() - self._persisted_at >= self.persist_every):
            self.persist()

    def age(self) -> float:
        """Seconds since the last contact."""
        return self._base + max(0.0, self.monotonic() - self._since)

    def persist(self) -> None:
        boot, bt = self.boot()
        age = self.age()
        doc = {"age": age, "boot": boot, "boottime": bt, "wall": self.wall()}
        try:
            write_atomic(self.path, json.dumps(doc).encode())
            self._persisted_at, self._persisted_age = self.monotonic(), age
        except OSError as e:
            log.warning("cannot persist the last-contact record %s: %s", self.path, e)

    async def run(self) -> None:
        """Persist now and then, so a restart or a power cut loses little of the age."""
        while True:
            await asyncio.sleep(self.persist_every)
            self.persist()
