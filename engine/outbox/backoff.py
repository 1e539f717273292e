"""How long a failed action waits before its next attempt: exponential, jittered, capped.

The shape follows River and stamina: the n-th retry waits `first * growth**(n-1)`, times a
random factor in [0.9, 1.1] (so a burst of failures does not come back as a burst), never more
than `cap`. A connector's `retry = (attempts, first, growth)` picks the curve: email
(8, 120 s, 2.8) retries first after about 2 minutes and gives up after about 24 hours; webhooks
(6, 30 s, 3.0) after about an hour (RELIABILITY "Decided defaults"). The delay is business
time: `next_attempt_at = as_of + delay`, so `--as-of` runs replay the same schedule.
"""

from __future__ import annotations

import random
from datetime import timedelta

JITTER = 0.1
CAP = timedelta(days=1)
"""No single wait is longer than a day, however far `retain outbox retry` pushes attempts."""
MINIMUM = timedelta(seconds=1)
"""Never due again within the same pass (as-of is fixed for a pass: a zero wait would loop)."""


def delay(attempt: int, first: float, growth: float, rng: random.Random | None = None, *,
          cap: timedelta = CAP) -> timedelta:
    """The wait after failed attempt number `attempt` (1 for the first try), jittered ±10 %."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    base = min(first * growth ** (attempt - 1), cap.total_seconds())
    factor = 1 + (rng or random).uniform(-JITTER, JITTER)
    return max(MINIMUM, min(timedelta(seconds=base * factor), cap))


def total(attempts: int, first: float, growth: float, *, cap: timedelta = CAP) -> timedelta:
    """The whole retry window without jitter: the waits between `attempts` tries (for docs and
    for the tests that pin the defaults to RELIABILITY's numbers)."""
    seconds = sum(min(first * growth ** n, cap.total_seconds()) for n in range(attempts - 1))
    return timedelta(seconds=seconds)
