"""While a dispatch pass runs, the interpreter hands the GIL over every 0.5 ms, not every 5 ms.

A pass claims, judges and records in threads while its event loop drives the sends. When a
database thread runs Python (reading a batch's rows and payloads, building its inserts), the
loop that has a server's reply to handle gets the GIL back only after the switch interval: at
the default 5 ms every SMTP session of the pass idles that long, each time. At 0.5 ms, email
through the dispatcher ran 10-15% faster on PostgreSQL with 8 connections, and the bare loop
(one thread) did not move (docs/BENCHMARKS.md "Dispatch"). The interval is the process's: the
first pass to start lowers it (never raises it), the last one to end puts it back.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SWITCH_INTERVAL = 0.0005


class _Handoff:
    """How many passes run, and the interval to put back when the last one ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.passes = 0
        self.saved = sys.getswitchinterval()


_STATE = _Handoff()


@contextmanager
def quick_handoff() -> Iterator[None]:
    """Lower the GIL switch interval while the block runs (nested and concurrent passes share)."""
    with _STATE.lock:
        if _STATE.passes == 0:
            _STATE.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_STATE.saved, SWITCH_INTERVAL))
        _STATE.passes += 1
    try:
        yield
    finally:
        with _STATE.lock:
            _STATE.passes -= 1
            if _STATE.passes == 0:
                sys.setswitchinterval(_STATE.saved)
