"""The one vocabulary of action statuses: dry-run, run, the outbox commands and reports use it.

An action's life (DESIGN 3, docs/OUTBOX.md):

    planned ──(due: next_attempt_at <= as-of)──> claimed ──> sent
       │                                           │  └────> retrying ──> claimed ... ──> dead
       ├─ deferred (quiet hours: due at the next allowed minute) ──> claimed ...
       └─ cancelled (exit_when, or on_change: exit, ended the enrollment first)

and, decided when planned or at send time, never delivered: `capped` (a frequency cap),
`suppressed` (the address is unsubscribed or bounced), `skipped` (no address), `dead` (a template
that fails for this customer, or a permanent error). `due` is not stored: it is a `planned`,
`deferred` or `retrying` row whose `next_attempt_at` has come.
"""

from __future__ import annotations

PLANNED = "planned"
DEFERRED = "deferred"
CLAIMED = "claimed"
SENT = "sent"
RETRYING = "retrying"
DEAD = "dead"
CAPPED = "capped"
SUPPRESSED = "suppressed"
SKIPPED = "skipped"
CANCELLED = "cancelled"

STATUSES = (PLANNED, DEFERRED, CLAIMED, SENT, RETRYING, DEAD, CAPPED, SUPPRESSED, SKIPPED,
            CANCELLED)
WAITING = (PLANNED, DEFERRED, RETRYING)
"""Rows the dispatcher claims once their `next_attempt_at` has come."""
FINAL = (SENT, DEAD, CAPPED, SUPPRESSED, SKIPPED, CANCELLED)
"""Rows nothing will change again (but `retain outbox retry` on a dead one)."""
COUNTS_AGAINST_CAP = (PLANNED, DEFERRED, CLAIMED, SENT, RETRYING)
"""What fills a frequency cap: sent or still on its way; never capped, failed or cancelled ones
(Braze: capped and failed messages do not count)."""

# Enrollment statuses.
ACTIVE = "active"  # its current step's actions are in the outbox
WAITING_STEP = "waiting"  # parked on a `wait` until wake_at
COMPLETED = "completed"  # every step done (a holdout enrollment completes at once)
EXITED = "exited"  # exit_when, on_change: exit, or the playbook's version changed; end_reason says

# Task statuses (tasks.status): a follow-up task is open until a person marks it done.
TASK_OPEN = "open"
TASK_DONE = "done"
