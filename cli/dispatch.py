"""`retain dispatch`: deliver what is due in the outbox, once, and say what became of it.

SIGTERM (a deploy, `kubectl delete pod`): sends in flight finish and are recorded, rows claimed
but not started are put back, nothing new is claimed, exit 0 (RELIABILITY 4). A second SIGTERM
exits at once; the rows it held come back to any dispatcher when their lease runs out (60 s).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from cli import plain, render
from engine.clock import iso

if TYPE_CHECKING:
    from engine.outbox.dispatch import DispatchReport

AsOfOpt = Annotated[str | None, typer.Option(
    "--as-of", help="Business time of this dispatch (ISO date or time, naive means UTC): what is "
    "due by then is sent, and sends, retries and facts are recorded at it. Default: now.",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")]
OUTCOMES = ("sent", "deferred", "retrying", "dead", "suppressed", "skipped")
"""Every outcome a pass records (record.py), deferred included: quiet hours at send time."""


def dispatch_command(ctx: typer.Context, as_of: AsOfOpt = None, as_json: JsonOpt = False
                     ) -> None:
    """Deliver what is due in the outbox: claim, send, record; retry or dead-letter.

    One pass over the actions due at --as-of (default now); prints how many were sent,
    are retrying, dead or suppressed, per playbook. SIGTERM finishes the sends in flight,
    puts back what was not started and exits 0; a second SIGTERM exits at once."""
    from engine.config import load_settings
    from engine.outbox.dispatch import dispatch
    from engine.store.open import open_store

    moment = plain.as_of_time(as_of)
    engine = open_store(ctx.obj.db_url)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, _on_sigterm(stop))
    try:
        report = dispatch(engine, load_settings(), moment, stop=stop)
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.dispose()
    if as_json:
        render.print_json(report.to_json())
        return
    _print(report)




def _on_sigterm(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # the second one: now, leases come back on their own
        stop.set()
    return handle


def _print(report: DispatchReport) -> None:
    table = report.by_playbook()
    print(f"Dispatch as of {iso(report.as_of)}"
          + (" (stopped by SIGTERM)" if report.stopped else ""))
    if not table and not report.released:
        print("Nothing was due.")
        return
    shown = [o for o in OUTCOMES if report.total(o)] or ["sent"]
    rows = [[playbook, *(f"{counts.get(o, 0):,}" for o in shown)]
            for playbook, counts in table.items()]
    if len(table) > 1:
        rows.append(["total", *(f"{report.total(o):,}" for o in shown)])
    header = ["playbook", *shown]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join([row[0].ljust(widths[0]),
                         *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))]))
    if report.released:
        print(f"{report.released:,} put back unsent (a connector down, or stopping): still due.")
    if report.lost:
        print(f"{report.lost} action(s) were taken over by another worker (lease ran out).")
