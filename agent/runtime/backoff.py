"""The one retry delay of the whole product: capped exponential growth with "equal jitter".

Every retry loop (informers, NATS connect and watch, the publisher, the work queue, the
supervisor, the gateway's steps) takes its delays from here, so a fleet of thousands of agents
that lost the same API or NATS server spreads its retries instead of returning in lockstep, and
a delay never shrinks to zero (half the cap is always waited).
"""

from __future__ import annotations

import random


def delay(attempt: int, initial: float, maximum: float,
          rng: random.Random | None = None) -> float:
    """The wait before retry number `attempt` (0-based): uniform in [cap/2, cap] where
    cap = min(maximum, initial * 2**attempt)."""
    if initial <= 0 or maximum <= 0:
        return 0.0
    cap = min(maximum, initial * 2.0 ** min(max(attempt, 0), 64))
    return (rng or random).uniform(cap / 2, cap)


class Backoff:
    """Successive delays for one retry loop; `reset()` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if initial > maximum:
            raise ValueError(f"backoff initial {initial} exceeds its maximum {maximum}")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng

    def next(self) -> float:
        d = delay(self.attempt, self.initial, self.maximum, self._rng)
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0
