"""RELIABILITY 13: the backoff grows, is capped, is jittered ±10 %, and matches the defaults."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from connectors.base import Connector
from connectors.email import EmailConnector
from engine.outbox.backoff import CAP, JITTER, MINIMUM, delay, total


def test_delays_grow_monotonically_within_the_jitter() -> None:
    rng = random.Random(13)
    waits = [delay(n, 120.0, 2.8, rng) for n in range(1, 8)]
    assert waits == sorted(waits) and len(set(waits)) == len(waits)
    for n, wait in enumerate(waits, start=1):
        base = 120.0 * 2.8 ** (n - 1)
        assert base * (1 - JITTER) <= wait.total_seconds() <= base * (1 + JITTER)


def test_the_same_seed_gives_the_same_schedule_and_jitter_spreads() -> None:
    first = [delay(3, 30.0, 3.0, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    spread = {delay(3, 30.0, 3.0, random.Random(seed)).total_seconds() for seed in range(200)}
    assert min(spread) < 270 * 0.95 and max(spread) > 270 * 1.05  # both sides of the base
    assert min(spread) >= 270 * 0.9 and max(spread) <= 270 * 1.1


def test_delays_are_capped_and_still_jittered_below_the_cap() -> None:
    waits = [delay(40, 120.0, 2.8, random.Random(seed)) for seed in range(50)]
    assert max(waits) == CAP and min(waits) >= CAP * (1 - JITTER)
    assert len(set(waits)) > 10  # capped retries do not come back in one burst
    small = timedelta(minutes=10)
    assert all(delay(3, 100.0, 10.0, random.Random(s), cap=small) <= small for s in range(20))


def test_a_wait_is_never_zero() -> None:
    assert delay(1, 0.0, 2.0, random.Random(1)) == MINIMUM
    with pytest.raises(ValueError, match="attempt counts from 1"):
        delay(0, 1.0, 2.0)


def test_defaults_match_reliability() -> None:
    """Email: 8 attempts over about 24 h, the first retry within a couple of minutes."""
    attempts, first, growth = EmailConnector.retry
    assert (attempts, first) == (8, 120.0)
    assert timedelta(hours=22) <= total(attempts, first, growth) <= timedelta(hours=27)
    assert Connector.retry == EmailConnector.retry


def test_webhook_shape_is_about_an_hour() -> None:
    """Webhooks: 6 attempts over about 1 h (the webhook connector sets its own `retry`)."""
    assert timedelta(minutes=50) <= total(6, 30.0, 3.0) <= timedelta(minutes=70)
