"""Benchmark evaluation: the dry-run of each sample playbook against two ways of doing it by hand.

The issue asks how the dry-run scales to 100,000 and 1,000,000 customers on SQLite, and sets four
targets: within 2x of the same predicate written by hand as one SQL query; at least 20x faster
than the way per-record rule engines work (fetch every customer into Python, test each one); peak
memory flat in N; and indexes that let the selective triggers (first purchase, negative feedback
in the last day) avoid a full scan. So, per size, in ONE process (the machine is shared and
noisy, so only ratios measured side by side mean much), for every sample playbook:

- **dry-run**: `make_plan(connection, [playbook], as_of, show=10, complete=False)`: count
  everyone entering and plan (render) the first ten (`retain dry-run` also plans every other
  enrollment for its errors: bench/bench_plan.py measures that); also with `show=0`, which
  renders nothing, to tell rendering from counting;
- **engine query**: just streaming the rows of the playbook's one statement (`candidates`), to
  tell the SQL from the planning around it;
- **(a) hand-written SQL**: the predicate (trigger, `when`, the anti-join against enrollments)
  written as a person would write it for this one playbook, run through the raw `sqlite3`
  connection with `fetchall`. Each must return exactly the engine's (customer, occurrence)
  rows, or the run stops: a faster query that answers a different question proves nothing;
- **(b) per-record**, two loops running the same plain Python predicate per customer over
  `SELECT * FROM customers` (and, when the rule needs them, the customers' events of the types
  it looks at), streamed:
  - **(b-min)**: the cheapest such loop: driver tuples zipped into dicts, times compared as the
    ISO text SQLite stores, JSON left as text. A floor no real per-record engine reaches;
  - **(b-dict)**: what the issue describes ("fetch the customers into Python and test each
    one"): every record a dict of all its columns with each value converted by its declared
    type, as a record loader or ORM does (times to aware datetimes, birthday to a date, `tags`,
    `attributes` and `properties` through json.loads); the predicate compares datetimes.
  Same-answer check as (a), for both. They take seconds per round at 1M, so above 100,000
  customers only the playbooks of `--per-record` (default winback-30d and vip-care) get them.
  Loading the customers alone (no predicate) is timed once per size, for both kinds of dict.

Repeats are interleaved (round 1 of every method, then round 2, ...) and the median is kept, so
a burst of load from another job hits all methods alike. One untimed warm-up per playbook (the
correctness check) fills the OS cache first. Memory: tracemalloc's peak during one extra
make_plan per playbook (Python allocations: what grows if something materialises all rows), and
`ru_maxrss` of a separate `retain dry-run` process over all samples (everything, SQLite
included). A historical dry-run (as_of 30 days before the latest event: facts derived from
events) is measured for two playbooks and reported apart. For the selective triggers, the
query plan, how many events their window holds, and their query with the index forbidden
(`NOT INDEXED`) show what the index saves; where an index makes a query slower, the same
query with that index forbidden is timed next to it (`plan_alternatives`).

The repository may change during the quarter of an hour a full run takes: each measuring
process records a fingerprint of the project code it imported (and of the samples), so the
results name the code they measured, and a run whose sizes measured different code says so.

    python bench/bench_eval.py --sizes 100000,1000000 [--repeat 3]

Databases are synced once per size with engine.sync.ingest from bench/gen_data.py's seeded files and
kept as bench/out/eval-<N>.db (gitignored); results go to bench/out/eval-results.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from bench_sync import OUT, ensure_data  # bench/ is sys.path[0] when this runs as a script
from gen_data import END

from engine.clock import iso
from engine.format.playbook import Every, Playbook
from engine.format.triggers import DateTrigger, SegmentTrigger, TriggerContext, valid_timezone
from engine.format.validation import load_valid_playbooks
from engine.plan.build import make_plan
from engine.query.evaluate import Moment, candidates, latest_event_time, playbook_query, prepare
from engine.store.open import open_store
from engine.sync.ingest import sync_customers, sync_events

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES_DIR = ROOT / "playbooks"  # not `from playbooks import`: bench/playbooks shadows it here
RESULTS = OUT / "eval-results.json"
HISTORICAL = ("winback-30d", "vip-care")  # facts derived from events: the expensive kind
HISTORICAL_DAYS = 30
SELECTIVE = ("welcome-series", "negative-feedback")  # first_purchase, negative_feedback
PER_RECORD_ALL_UP_TO = 100_000  # above this size, (b) only for --per-record (it takes minutes)
PER_RECORD_LARGE = ("winback-30d", "vip-care")
TARGET_VS_HAND = 2.0
TARGET_VS_PER_RECORD = 20.0
FLAT_MEMORY = 1.5  # "flat": the 10x larger size may peak at most this much higher


def fingerprint(loaded: Iterable[str] | None = None) -> str:
    """A short sha256 of the project code a process has loaded (`loaded` module files; None:
    this process's modules), bench/ excepted, and of the sample playbooks and templates.

    Taken once everything is imported (the connectors load with the playbooks), it names the
    code that ran even if files change later.
    """
    if loaded is None:
        loaded = module_files()
    files = {Path(name).resolve() for name in loaded if name}
    files = {f for f in files if f.is_relative_to(ROOT) and not f.is_relative_to(HERE)
             and not f.is_relative_to(ROOT / ".venv") and f.is_file()}
    files |= {f for f in SAMPLES_DIR.rglob("*") if f.suffix in (".yaml", ".j2")}
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def module_files() -> list[str]:
    """The files of the modules this process has imported."""
    return [m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)]


def head_commit() -> str | None:
    """The checked-out commit, read from .git's files: running git could disturb a concurrent
    commit on this shared checkout. Uncommitted changes show only in the fingerprint."""
    try:
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        loose = ROOT / ".git" / ref
        if loose.is_file():
            return loose.read_text().strip()
        for line in (ROOT / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


# --- the databases ---------------------------------------------------------------------------


def ensure_db(customers: int, seed: int) -> Path:
    """`bench/out/eval-<N>.db`, synced once from the generated files and then reused.

    Built under a temporary name and renamed at the end, so an interrupted build is never
    mistaken for a finished one. `now` is the generator's end, so `first_synced_at` (and the
    database) is the same on every build. No ANALYZE: the planner sees what sync leaves.
    """
    target = OUT / f"eval-{customers}.db"
    if target.is_file():
        return target
    data = ensure_data(customers, seed, "csv")
    building = OUT / f"eval-{customers}.building.db"
    for leftover in (building, *(Path(f"{building}{tail}") for tail in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    load_into(building, data)
    building.rename(target)
    print(f"built {target.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return target


# --- (a) the hand-written SQL ----------------------------------------------------------------


def stamp(moment: datetime) -> str:
    """An instant as SQLite stores Retain's times: text that sorts as time does."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def bounds(as_of: datetime) -> dict[str, str]:
    """The named parameters of the hand-written queries: as_of and the windows before it."""
    days = {"day": 1, "days_7": 7, "days_30": 30, "days_90": 90, "days_180": 180}
    return {"as_of": stamp(as_of), "now_key": iso(as_of),
            **{f"{name}_ago": stamp(as_of - timedelta(days=n)) for name, n in days.items()}}


ISO_KEY = "strftime('%Y-%m-%dT%H:%M:%SZ', {})"

HAND_SQL: dict[str, str] = {
    "winback-30d": f"""
        SELECT c.customer_id, {ISO_KEY.format('c.last_active_at')}
        FROM customers c
        WHERE c.last_active_at <= :days_30_ago
          AND c.email IS NOT NULL AND c.purchase_count >= 1
          AND (c.last_emailed_at IS NULL OR c.last_emailed_at <= :days_7_ago)
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'winback-30d' AND n.customer_id = c.customer_id
                            AND n.occurrence_key = {ISO_KEY.format('c.last_active_at')})""",
    "vip-care": """
        SELECT c.customer_id, :now_key
        FROM customers c
        WHERE (c.rfm_segment IN ('champion', 'cant_lose')
               OR (c.total_spent >= 5000 AND c.purchase_count >= 10))
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'vip-care' AND n.customer_id = c.customer_id
                            AND (n.occurrence_key = :now_key OR n.entered_at > :days_180_ago
                                 OR n.left_at IS NULL))""",
    "churn-warning": """
        SELECT c.customer_id, :now_key
        FROM customers c
        JOIN (SELECT customer_id FROM events
              WHERE type = 'purchase' AND occurred_at > :days_90_ago AND occurred_at <= :as_of
              GROUP BY customer_id
              HAVING count(*) >= 3 AND max(occurred_at) <= :days_30_ago) p
          ON p.customer_id = c.customer_id
        WHERE c.email IS NOT NULL
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'churn-warning' AND n.customer_id = c.customer_id
                            AND (n.occurrence_key = :now_key OR n.entered_at > :days_90_ago
                                 OR n.left_at IS NULL))""",
    "negative-feedback": """
        SELECT e.customer_id, e.event_id
        FROM events e JOIN customers c ON c.customer_id = e.customer_id
        WHERE e.type = 'feedback' AND e.occurred_at > :day_ago AND e.occurred_at <= :as_of
          AND e.score <= 6
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'negative-feedback'
                            AND n.customer_id = e.customer_id AND n.occurrence_key = e.event_id)""",
    "purchase-points": """
        SELECT e.customer_id, e.event_id
        FROM events e JOIN customers c ON c.customer_id = e.customer_id
        WHERE e.type = 'purchase' AND e.occurred_at > :day_ago AND e.occurred_at <= :as_of
          AND e.amount > 0
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'purchase-points'
                            AND n.customer_id = e.customer_id AND n.occurrence_key = e.event_id)""",
    "welcome-series": """
        SELECT e.customer_id, e.event_id
        FROM events e JOIN customers c ON c.customer_id = e.customer_id
        WHERE e.type = 'purchase' AND e.occurred_at > :day_ago AND e.occurred_at <= :as_of
          AND NOT EXISTS (SELECT 1 FROM events p
                          WHERE p.customer_id = e.customer_id AND p.type = 'purchase'
                            AND (p.occurred_at < e.occurred_at
                                 OR (p.occurred_at = e.occurred_at AND p.id < e.id)))
          AND c.email IS NOT NULL
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'welcome-series'
                            AND n.customer_id = c.customer_id AND n.occurrence_key = e.event_id)""",
    # Which month-days are at 09:00 local within the last day, per time zone, is computed in
    # Python (engine/format/triggers.py does the same, by design); {fires} tests them, {year} names
    # the year each fires in: `(c.timezone IN (...) AND substr(c.birthday, 6, 5) IN (...)) OR`.
    "birthday-greeting": """
        SELECT c.customer_id, {year}
        FROM customers c
        WHERE ({fires})
          AND c.email IS NOT NULL
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'birthday-greeting'
                            AND n.customer_id = c.customer_id AND n.occurrence_key = {year})""",
}

# Historical (as_of before the latest event): the facts come from the events up to as_of.
ACTIVITY = "type NOT IN ('email_sent', 'task_created', 'points_awarded', 'webhook_sent')"
HAND_SQL_HISTORICAL: dict[str, str] = {
    "winback-30d": f"""
        WITH facts AS (
          SELECT customer_id,
                 max(CASE WHEN {ACTIVITY} THEN occurred_at END) AS last_active,
                 count(CASE WHEN type = 'purchase' THEN 1 END) AS purchases,
                 max(CASE WHEN type = 'email_sent' THEN occurred_at END) AS last_emailed
          FROM events WHERE occurred_at <= :as_of GROUP BY customer_id)
        SELECT c.customer_id, {ISO_KEY.format('coalesce(f.last_active, c.created_at)')}
        FROM customers c JOIN facts f ON f.customer_id = c.customer_id
        WHERE coalesce(f.last_active, c.created_at) <= :days_30_ago
          AND c.email IS NOT NULL AND f.purchases >= 1
          AND (f.last_emailed IS NULL OR f.last_emailed <= :days_7_ago)
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'winback-30d' AND n.customer_id = c.customer_id
                            AND n.occurrence_key =
                                {ISO_KEY.format('coalesce(f.last_active, c.created_at)')})""",
    "vip-care": """
        SELECT c.customer_id, :now_key
        FROM customers c
        WHERE (c.rfm_segment IN ('champion', 'cant_lose')
               OR c.customer_id IN (SELECT customer_id FROM events
                                    WHERE type = 'purchase' AND occurred_at <= :as_of
                                    GROUP BY customer_id
                                    HAVING coalesce(sum(amount), 0) >= 5000 AND count(*) >= 10))
          AND (c.created_at IS NULL OR c.created_at <= :as_of)
          AND NOT EXISTS (SELECT 1 FROM enrollments n
                          WHERE n.playbook_id = 'vip-care' AND n.customer_id = c.customer_id
                            AND (n.occurrence_key = :now_key OR n.entered_at > :days_180_ago
                                 OR n.left_at IS NULL))""",
}


def hand_sql(playbook: Playbook, moment: Moment, historical: bool = False
             ) -> tuple[str, dict[str, str]]:
    """Playbook `playbook`'s hand-written query and its parameters at `moment.as_of`."""
    sql = (HAND_SQL_HISTORICAL if historical else HAND_SQL)[playbook.id]
    if isinstance(playbook.trigger, DateTrigger):
        sql = sql.format(**birthday_parts(playbook, moment, "substr(c.birthday, 6, 5)", "0"))
    return sql, bounds(moment.as_of)


def birthday_parts(playbook: Playbook, moment: Moment, month_day: str, never: str
                   ) -> dict[str, str]:
    """A date trigger's hand-written tests: which month-days are at 09:00 local within the
    last day, per time zone (computed in Python, as engine/format/triggers.py does by design),
    as `fires` (`never` when none) and `year`; `month_day`: the SQL of the birthday's MM-DD."""
    tc = moment.trigger_context(playbook.id)
    zones: dict[tuple[str, tuple[str, ...]], list[str | None]] = defaultdict(list)
    for zone in tc.zones:
        name = zone if zone and valid_timezone(zone) else "UTC"
        for year, days in playbook.trigger.anniversaries(tc, ZoneInfo(name)).items():
            zones[(year, tuple(sorted(days)))].append(zone)
    tests = []
    for (year, days), names in sorted(zones.items()):
        known = [_quote(z) for z in names if z is not None]
        zone_test = " OR ".join(([f"c.timezone IN ({', '.join(known)})"] if known else [])
                                + (["c.timezone IS NULL"] if None in names else []))
        tests.append((f"(({zone_test}) AND {month_day} IN ({', '.join(map(_quote, days))}))",
                      year))
    fires = " OR ".join(test for test, _ in tests) or never
    year = ("CASE " + " ".join(f"WHEN {t} THEN '{y}'" for t, y in tests) + " END"
            if tests else "NULL")
    return {"fires": fires, "year": year}


def load_into(path: Path, data: Path) -> None:
    """Sync a generated data folder into a new SQLite bench database at `path` (customers as
    of the generator's end, then events) and leave it whole in the file (WAL checkpointed)."""
    engine = open_store(f"sqlite:///{path}")
    sync_customers(engine, data / "customers.csv", now=END)
    sync_events(engine, data / "events.csv")
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def _quote(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


# --- (b) per record --------------------------------------------------------------------------
#
# Two loops run the same rule functions. (b-min) is the cheapest per-record loop there is:
# driver tuples zipped into dicts, times compared as the text SQLite stores, JSON left as text.
# (b-dict) loads records the way a per-record rule engine holds them (the issue: "fetch the
# customers into Python and test each one"): every column of every customer, each value
# converted by its declared type as an ORM would (DATETIME -> aware datetime, DATE -> date,
# JSON -> json.loads), and the events the rule reads loaded the same way; the rules then compare
# datetimes.


@dataclass(frozen=True)
class Window:
    """as_of and the window starts, as stored text (b-min) or as aware datetimes (b-dict), so a
    record's times compare with them either way."""

    as_of: datetime
    now: str | datetime
    day: str | datetime
    days_7: str | datetime
    days_30: str | datetime
    days_90: str | datetime
    now_key: str

    @classmethod
    def at(cls, as_of: datetime, typed: bool = False) -> Window:
        """The windows the sample playbooks use, ending at `as_of`."""
        if typed:
            utc = as_of.astimezone(UTC)
            ago = [utc - timedelta(days=n) for n in (1, 7, 30, 90)]
            return cls(as_of, utc, *ago, iso(as_of))
        b = bounds(as_of)
        return cls(as_of, b["as_of"], b["day_ago"], b["days_7_ago"], b["days_30_ago"],
                   b["days_90_ago"], b["now_key"])


Record = dict[str, Any]
Rule = Callable[[Record, list[Record], Window], list[str]]  # occurrences that enter


def _existed(c: Record, w: Window) -> bool:
    return c["created_at"] is None or c["created_at"] <= w.now


def _key(stored: str | datetime) -> str:
    """`2024-12-02 10:00:00.000000` (or that datetime) -> `2024-12-02T10:00:00Z`, the occurrence
    key's spelling."""
    if isinstance(stored, datetime):
        return stored.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stored[:10]}T{stored[11:19]}Z"


def rule_winback(c: Record, events: list[Record], w: Window) -> list[str]:
    """inactive 30 days; email; purchase_count >= 1; last emailed NULL or >= 7 days ago."""
    last = c["last_active_at"]
    if (last is not None and last <= w.days_30 and c["email"] is not None
            and c["purchase_count"] >= 1
            and (c["last_emailed_at"] is None or c["last_emailed_at"] <= w.days_7)
            and _existed(c, w)):
        return [_key(last)]
    return []


def rule_vip(c: Record, events: list[Record], w: Window) -> list[str]:
    """rfm_segment champion/cant_lose, or total_spent >= 5000 with >= 10 purchases."""
    if (c["rfm_segment"] in ("champion", "cant_lose")
            or (c["total_spent"] >= 5000 and c["purchase_count"] >= 10)) and _existed(c, w):
        return [w.now_key]
    return []


def rule_churn(c: Record, events: list[Record], w: Window) -> list[str]:
    """>= 3 purchases in the last 90 days, none in the last 30; email."""
    if c["email"] is None or not _existed(c, w):
        return []
    times = [e["occurred_at"] for e in events]
    in_90 = sum(1 for t in times if w.days_90 < t <= w.now)
    in_30 = sum(1 for t in times if w.days_30 < t <= w.now)
    return [w.now_key] if in_90 >= 3 and in_30 == 0 else []


def rule_negative_feedback(c: Record, events: list[Record], w: Window) -> list[str]:
    """Each feedback with score <= 6 in the last day."""
    if not _existed(c, w):
        return []
    return [e["event_id"] for e in events if e["score"] is not None and e["score"] <= 6
            and w.day < e["occurred_at"] <= w.now]


def rule_purchase_points(c: Record, events: list[Record], w: Window) -> list[str]:
    """Each purchase with amount > 0 in the last day."""
    if not _existed(c, w):
        return []
    return [e["event_id"] for e in events if e["amount"] is not None and e["amount"] > 0
            and w.day < e["occurred_at"] <= w.now]


def rule_welcome(c: Record, events: list[Record], w: Window) -> list[str]:
    """The customer's first purchase ever (ties: the first synced), if it was in the last day."""
    if not events or c["email"] is None or not _existed(c, w):
        return []
    first = min(events, key=lambda e: (e["occurred_at"], e["id"]))
    return [first["event_id"]] if w.day < first["occurred_at"] <= w.now else []


def rule_birthday(c: Record, events: list[Record], w: Window) -> list[str]:
    """09:00 local on the birthday's month and day (Feb 29: Feb 28 in other years) in the last
    day; email. Written independently of engine/format/triggers.py, so it also cross-checks it."""
    birthday = c["birthday"]
    if c["email"] is None or birthday is None or not _existed(c, w):
        return []
    zone = ZoneInfo(c["timezone"] if c["timezone"] and valid_timezone(c["timezone"]) else "UTC")
    if isinstance(birthday, date):
        month, day = birthday.month, birthday.day
    else:
        month, day = int(birthday[5:7]), int(birthday[8:10])
    for year in (w.as_of.year - 1, w.as_of.year, w.as_of.year + 1):
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        on = date(year, month, 28 if (month, day) == (2, 29) and not leap else day)
        fires = datetime.combine(on, clock(9), tzinfo=zone)
        if w.as_of - timedelta(days=1) < fires <= w.as_of:
            return [str(year)]
    return []


RULES: dict[str, tuple[Rule, tuple[str, ...]]] = {  # playbook -> rule, event types it reads
    "winback-30d": (rule_winback, ()),
    "vip-care": (rule_vip, ()),
    "churn-warning": (rule_churn, ("purchase",)),
    "negative-feedback": (rule_negative_feedback, ("feedback",)),
    "purchase-points": (rule_purchase_points, ("purchase",)),
    "welcome-series": (rule_welcome, ("purchase",)),
    "birthday-greeting": (rule_birthday, ()),
}


def _time(text: str) -> datetime:
    """A stored time (`2024-12-02 10:00:00.000000`, UTC) as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


CONVERT: dict[str, Callable[[Any], Any]] = {  # declared column type -> Python value
    "DATETIME": _time, "DATE": date.fromisoformat, "JSON": json.loads}


def _records(raw: sqlite3.Connection, sql: str, *params: Any, typed: bool = False
             ) -> Iterable[Record]:
    """The rows of `sql` as dicts of every column; `typed`: each value converted by its
    column's declared type (the table is the query's `FROM`), as a record loader would."""
    cursor = raw.execute(sql, params)
    names = [d[0] for d in cursor.description]
    if not typed:
        for row in cursor:
            yield dict(zip(names, row, strict=True))
        return
    table = re.search(r"FROM (\w+)", sql)
    assert table is not None
    declared = {name: kind for _, name, kind, *_ in raw.execute(f"PRAGMA table_info({table[1]})")}
    converters = [CONVERT.get(declared[name]) for name in names]
    for row in cursor:
        yield {name: value if convert is None or value is None else convert(value)
               for name, convert, value in zip(names, converters, row, strict=True)}


def per_record(raw: sqlite3.Connection, playbook: Playbook, as_of: datetime, typed: bool = False
               ) -> list[tuple[str, str]]:
    """(b): every customer fetched as a dict (with its events of the types the rule reads) and
    tested in Python, then the playbook's reentry checked against its enrollments. `typed`:
    (b-dict), values converted by column type; else (b-min), values as the driver gives them."""
    rule, types = RULES[playbook.id]
    w = Window.at(as_of, typed)
    events: dict[str, list[Record]] = defaultdict(list)
    if types:
        marks = ", ".join("?" for _ in types)
        for event in _records(raw, f"SELECT * FROM events WHERE type IN ({marks})", *types,
                              typed=typed):
            events[event["customer_id"]].append(event)
    enrolled: dict[str, list[Record]] = defaultdict(list)
    for row in _records(raw, "SELECT * FROM enrollments WHERE playbook_id = ?", playbook.id,
                        typed=typed):
        enrolled[row["customer_id"]].append(row)
    reentry = playbook.document.reentry
    since = as_of - reentry.every if isinstance(reentry, Every) else None
    window = None if since is None else since.astimezone(UTC) if typed else stamp(since)
    membership = isinstance(playbook.trigger, SegmentTrigger)
    found = []
    for customer in _records(raw, "SELECT * FROM customers", typed=typed):
        cid = customer["customer_id"]
        for occurrence in rule(customer, events.get(cid, []), w):
            if not any(e["occurrence_key"] == occurrence
                       or (window is not None and e["entered_at"] > window)
                       or (membership and e["left_at"] is None) for e in enrolled.get(cid, ())):
                found.append((cid, occurrence))
    return found


def load_customers(raw: sqlite3.Connection, typed: bool) -> int:
    """Only (b)'s loading: every customer as a dict, tested by nothing."""
    return sum(1 for _ in _records(raw, "SELECT * FROM customers", typed=typed))


# --- measuring -------------------------------------------------------------------------------


def _timed(function: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def _fetch_seconds(raw: sqlite3.Connection, sql: str, params: Any = ()) -> float:
    started = time.perf_counter()
    raw.execute(sql, params).fetchall()
    return time.perf_counter() - started


def _literal(query: sa.Select[Any], connection: sa.Connection) -> str:
    return str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))


def query_plan(raw: sqlite3.Connection, sql: str, params: Any = ()) -> list[str]:
    """EXPLAIN QUERY PLAN, one line per step, indented by depth."""
    rows = raw.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return lines


def _same(name: str, engine_rows: list[tuple[str, str]], other: list[tuple[str, str]],
          what: str) -> None:
    """Stop the run if `other` does not return the engine's rows (as a multiset)."""
    mine, theirs = sorted(engine_rows), sorted(tuple(r) for r in other)
    if mine != theirs:
        only_engine = sorted(set(mine) - set(theirs))[:5]
        only_other = sorted(set(theirs) - set(mine))[:5]
        raise SystemExit(f"{name}: {what} returned {len(theirs)} rows, the engine {len(mine)}; "
                         f"only engine {only_engine}, only {what} {only_other}")


def measure_playbook(connection: sa.Connection, playbook: Playbook, moment: Moment,
                     repeat: int, with_per_record: bool, historical: bool = False
                     ) -> dict[str, Any]:
    """Every method for one playbook at `moment`: medians of `repeat` interleaved rounds."""
    raw: sqlite3.Connection = connection.connection.driver_connection  # type: ignore[assignment]
    tc: TriggerContext = moment.trigger_context(playbook.id)
    query = playbook_query(playbook, tc)
    sql, params = hand_sql(playbook, moment, historical)
    # Warm-up and correctness: the engine's rows, and (a) must return exactly them.
    engine_rows = [(c.customer_id, c.occurrence) for c in candidates(connection, query)]
    _same(playbook.id, engine_rows, raw.execute(sql, params).fetchall(), "hand-written SQL")
    samples: dict[str, list[float]] = defaultdict(list)
    as_of = moment.as_of
    for round_ in range(repeat):
        seconds, plan = _timed(lambda: make_plan(connection, [playbook], as_of, show=10,
                                                          complete=False))
        assert plan.playbooks[0].entering == len(engine_rows), "dry-run count differs"
        samples["dry_run"].append(seconds)
        samples["dry_run_show_0"].append(
            _timed(lambda: make_plan(connection, [playbook], as_of, show=0, complete=False))[0])
        samples["engine_query"].append(
            _timed(lambda: sum(1 for _ in candidates(connection, query)))[0])
        samples["hand_sql"].append(_timed(lambda: raw.execute(sql, params).fetchall())[0])
        if with_per_record:
            for name, typed in (("per_record_min", False), ("per_record_dict", True)):
                seconds, found = _timed(per_record, raw, playbook, as_of, typed)
                if round_ == 0:
                    _same(playbook.id, engine_rows, found, name.replace("_", "-"))
                samples[name].append(seconds)
                del found
    tracemalloc.start()
    make_plan(connection, [playbook], as_of, show=10, complete=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result: dict[str, Any] = {
        "playbook": playbook.id, "trigger": type(playbook.trigger).__name__,
        "as_of": iso(as_of), "historical": moment.historical, "entering": len(engine_rows),
        "samples": dict(samples), "make_plan_peak_mb": peak / 2**20,
        "engine_plan": query_plan(raw, _literal(query, connection)),
        "hand_plan": query_plan(raw, sql, params)}
    for name, values in samples.items():
        result[name] = statistics.median(values)
    result["dry_run_vs_hand"] = result["dry_run"] / result["hand_sql"]
    result["query_vs_hand"] = result["engine_query"] / result["hand_sql"]
    for name in ("per_record_min", "per_record_dict"):
        if name in result:
            result[f"{name}_vs_dry_run"] = result[name] / result["dry_run"]
            result[f"{name}_vs_hand"] = result[name] / result["hand_sql"]
    return result


def selective(connection: sa.Connection, playbook: Playbook, moment: Moment, repeat: int
              ) -> dict[str, Any]:
    """How much of `events` a selective trigger reads: its plan, the events in its window
    against all events, and its query's time as planned and with the index forbidden."""
    raw: sqlite3.Connection = connection.connection.driver_connection  # type: ignore[assignment]
    sql = _literal(playbook_query(playbook, moment.trigger_context(playbook.id)), connection)
    alias = "FROM events AS trigger_event"
    assert alias in sql, f"{playbook.id}: expected a trigger_event alias"
    forced = sql.replace(alias, f"{alias} NOT INDEXED", 1)
    b = bounds(moment.as_of)
    kind = "feedback" if "'feedback'" in sql else "purchase"
    in_window = raw.execute("SELECT count(*) FROM events WHERE type = ? AND occurred_at > ? "
                            "AND occurred_at <= ?", (kind, b["day_ago"], b["as_of"])).fetchone()[0]
    total = raw.execute("SELECT count(*) FROM events").fetchone()[0]
    planned = statistics.median(_timed(lambda: raw.execute(sql).fetchall())[0]
                                for _ in range(repeat))
    scan = statistics.median(_timed(lambda: raw.execute(forced).fetchall())[0]
                             for _ in range(max(1, repeat)))
    plan = query_plan(raw, sql)
    uses_index = any("SEARCH trigger_event USING INDEX ix_events_type_time" in line
                     for line in plan) and not any("SCAN trigger_event" in line for line in plan)
    return {"playbook": playbook.id, "event_type": kind, "events_in_window": in_window,
            "events_total": total, "query_s": planned, "full_scan_query_s": scan,
            "uses_type_time_index": uses_index, "plan": plan}


def plan_alternatives(connection: sa.Connection, playbooks: list[Playbook], moment: Moment,
                      repeat: int) -> list[dict[str, Any]]:
    """Where SQLite's plan is the cost, the same query with one index forbidden, timed side by
    side. Without statistics SQLite takes any index that matches a range or an IN list, and
    reading a large share of a table through an index is slower than scanning it:

    - winback-30d, hand-written: `+c.last_active_at` (its index range matches a third of all
      customers);
    - birthday-greeting, hand-written: `+c.timezone` (its `timezone IN (...)` lists every zone,
      so the `timezone` index looks up every customer; the engine writes `+timezone` since
      commit 4c02bd2).
    """
    raw: sqlite3.Connection = connection.connection.driver_connection  # type: ignore[assignment]
    by_id = {p.id: p for p in playbooks}
    sql, params = hand_sql(by_id["winback-30d"], moment)
    birthday, birthday_params = hand_sql(by_id["birthday-greeting"], moment)
    cases = [("winback-30d", "(a) as written -> `+c.last_active_at`", sql, params,
              sql.replace("WHERE c.last_active_at <=", "WHERE +c.last_active_at <=", 1)),
             ("birthday-greeting", "(a) as written -> `+c.timezone`", birthday, birthday_params,
              birthday.replace("c.timezone IN (", "+c.timezone IN ("))]
    out = []
    for playbook_id, what, planned, binds, alternative in cases:
        assert alternative != planned and query_plan(raw, alternative, binds)[0].startswith("SCAN")
        rows = len(raw.execute(planned, binds).fetchall())
        assert len(raw.execute(alternative, binds).fetchall()) == rows
        samples: dict[str, list[float]] = defaultdict(list)
        for _ in range(repeat):
            samples["planned"].append(_fetch_seconds(raw, planned, binds))
            samples["alternative"].append(_fetch_seconds(raw, alternative, binds))
        out.append({"playbook": playbook_id, "what": what, "rows": rows,
                    "plan": query_plan(raw, planned, binds)[0],
                    "planned_s": statistics.median(samples["planned"]),
                    "alternative_s": statistics.median(samples["alternative"])})
    return out


def child_measure(db: Path, repeat: int, per_record_for: list[str] | None) -> dict[str, Any]:
    """All measurements for one database, in this (fresh) process."""
    engine = open_store(f"sqlite:///{db}")  # migrations (a no-op here) outside the clock
    playbooks = sorted(load_valid_playbooks([SAMPLES_DIR]), key=lambda p: p.id)
    loaded = module_files()  # the connectors are imported with the playbooks
    out: dict[str, Any] = {"fingerprint": fingerprint(loaded), "playbooks": [], "historical": [],
                           "selective": []}
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        out["customers"] = raw.execute("SELECT count(*) FROM customers").fetchone()[0]
        out["events"] = raw.execute("SELECT count(*) FROM events").fetchone()[0]
        latest = latest_event_time(connection)
        assert latest is not None, "no events"
        out["latest_event"] = iso(latest)
        moment = prepare(connection, latest, playbooks)
        if per_record_for is None or any(p.id in per_record_for for p in playbooks):
            # What (b) pays before testing anything: loading every customer as a dict.
            for name, typed in (("min", False), ("dict", True)):
                out[f"load_customers_{name}_s"] = statistics.median(
                    _timed(load_customers, raw, typed)[0] for _ in range(min(repeat, 3)))
        for playbook in playbooks:
            wanted = per_record_for is None or playbook.id in per_record_for
            out["playbooks"].append(measure_playbook(connection, playbook, moment, repeat, wanted))
            print(f"  {playbook.id}: done", file=sys.stderr, flush=True)
        earlier = prepare(connection, latest - timedelta(days=HISTORICAL_DAYS), playbooks)
        assert earlier.historical
        for playbook in (p for p in playbooks if p.id in HISTORICAL):
            out["historical"].append(
                measure_playbook(connection, playbook, earlier, repeat, False, historical=True))
            print(f"  {playbook.id} (historical): done", file=sys.stderr, flush=True)
        for playbook in (p for p in playbooks if p.id in SELECTIVE):
            out["selective"].append(selective(connection, playbook, moment, repeat))
        out["plan_alternatives"] = plan_alternatives(connection, playbooks, moment, repeat)
        connection.rollback()
    engine.dispose()
    out["files_changed_since_import"] = fingerprint(loaded) != out["fingerprint"]
    late = set(module_files()) - set(loaded)
    out["imported_later"] = sorted(str(Path(f).resolve().relative_to(ROOT)) for f in late
                                   if Path(f).resolve().is_relative_to(ROOT)
                                   and not Path(f).resolve().is_relative_to(ROOT / ".venv"))
    return out


def dry_run_rss(db: Path, as_of: str) -> dict[str, float]:
    """Peak RSS (MB) of `retain dry-run` over every sample playbook, and of just its imports:
    the difference is what evaluating costs, whatever the CLI happens to import."""
    def peak(code: str, *args: str) -> tuple[float, float, str]:
        started = time.perf_counter()
        with subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
            assert process.stderr is not None
            errors = process.stderr.read()  # small: module file names, or a traceback
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = status  # reaped here: keep Popen from waiting again
        if status != 0:
            raise SystemExit(f"{code} {args} failed: {errors[-2000:]}")
        return usage.ru_maxrss / 1024, time.perf_counter() - started, errors  # Linux: KiB

    modules = ("import atexit, sys; atexit.register(lambda: print(*(getattr(m, '__file__', '') "
               "or '' for m in list(sys.modules.values())), sep='\\n', file=sys.stderr)); ")
    rss, seconds, loaded = peak(modules + "from cli.main import main; main(sys.argv[1:])",
                                "--db", f"sqlite:///{db}", "dry-run", str(SAMPLES_DIR),
                                "--as-of", as_of)
    imports, _, _ = peak("import cli.main, engine.plan.build")
    return {"dry_run_rss_mb": rss, "dry_run_all_s": seconds, "imports_rss_mb": imports,
            "dry_run_fingerprint": fingerprint(loaded.splitlines())}


# --- orchestration ---------------------------------------------------------------------------


def run_size(customers: int, seed: int, repeat: int, per_record_large: list[str]) -> dict[str, Any]:
    """Build (once) and measure one size in its own process."""
    db = ensure_db(customers, seed)
    per_record_for = None if customers <= PER_RECORD_ALL_UP_TO else per_record_large
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(db), str(repeat),
               ",".join(per_record_for) if per_record_for is not None else "*"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {customers:,} customers failed ({done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(size=customers, db_mb=db.stat().st_size / 2**20,
                  per_record_for=per_record_for or "all", db=str(db))
    return result


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}x"


def markdown(runs: list[dict[str, Any]]) -> str:
    """The results as markdown tables: main, historical, selective triggers, memory."""
    head = ("| customers | playbook | trigger | entering | dry-run s | dry-run show=0 s "
            "| engine query s | (a) hand SQL s | dry-run / (a) | query / (a) | (b-min) s "
            "| (b-min) / dry-run | (b-dict) s | (b-dict) / dry-run | make_plan peak MB |")
    lines = [head, "|" + "---|" * 15]
    for run in runs:
        for r in run["playbooks"]:
            pr = [r.get(name) for name in ("per_record_min", "per_record_dict")]
            lines.append(
                f"| {run['size']:,} | {r['playbook']} | {r['trigger'].removesuffix('Trigger')} "
                f"| {r['entering']:,} | {r['dry_run']:.3f} | {r['dry_run_show_0']:.3f} "
                f"| {r['engine_query']:.3f} | {r['hand_sql']:.3f} | {_ratio(r['dry_run_vs_hand'])} "
                f"| {_ratio(r['query_vs_hand'])} | {'' if pr[0] is None else f'{pr[0]:.2f}'} "
                f"| {_ratio(r.get('per_record_min_vs_dry_run'))} "
                f"| {'' if pr[1] is None else f'{pr[1]:.2f}'} "
                f"| {_ratio(r.get('per_record_dict_vs_dry_run'))} | {r['make_plan_peak_mb']:.2f} |")
    lines += ["", "Loading every customer as a dict, testing nothing (median of up to 3):", "",
              "| customers | (b-min) load s | (b-dict) load s | us per customer (b-min / b-dict) |",
              "|" + "---|" * 4]
    for run in runs:
        if "load_customers_dict_s" in run:
            low, high = run["load_customers_min_s"], run["load_customers_dict_s"]
            lines.append(f"| {run['size']:,} | {low:.2f} | {high:.2f} "
                         f"| {low / run['customers'] * 1e6:.1f} / "
                         f"{high / run['customers'] * 1e6:.1f} |")
    lines += ["", "Historical (as_of 30 days before the latest event: facts derived from events):",
              "", "| customers | playbook | entering | dry-run s | dry-run show=0 s | engine query s "
              "| (a) hand SQL s | dry-run / (a) | query / (a) | make_plan peak MB |",
              "|" + "---|" * 10]
    for run in runs:
        for r in run["historical"]:
            lines.append(f"| {run['size']:,} | {r['playbook']} | {r['entering']:,} "
                         f"| {r['dry_run']:.3f} | {r['dry_run_show_0']:.3f} "
                         f"| {r['engine_query']:.3f} | {r['hand_sql']:.3f} "
                         f"| {_ratio(r['dry_run_vs_hand'])} | {_ratio(r['query_vs_hand'])} "
                         f"| {r['make_plan_peak_mb']:.2f} |")
    lines += ["", "Selective triggers (engine query alone, as planned and with `NOT INDEXED`):", "",
              "| customers | playbook | events in window / all | uses ix_events_type_time "
              "| query s | full-scan query s |", "|" + "---|" * 6]
    for run in runs:
        for s in run["selective"]:
            lines.append(f"| {run['size']:,} | {s['playbook']} | {s['events_in_window']:,} / "
                         f"{s['events_total']:,} | {'yes' if s['uses_type_time_index'] else 'NO'} "
                         f"| {s['query_s']:.4f} | {s['full_scan_query_s']:.3f} |")
    lines += ["", "Plans: the same rows with one index forbidden:", "",
              "| customers | playbook | query -> alternative | rows | plan as written "
              "| as planned s | alternative s |", "|" + "---|" * 7]
    for run in runs:
        for a in run["plan_alternatives"]:
            lines.append(f"| {run['size']:,} | {a['playbook']} | {a['what']} | {a['rows']:,} "
                         f"| {a['plan']} | {a['planned_s']:.3f} | {a['alternative_s']:.3f} |")
    lines += ["", "Memory:", "", "| customers | `retain dry-run` (all samples) peak RSS MB "
              "| its imports alone MB | difference MB | its wall time s "
              "| max make_plan peak MB (playbook) |", "|" + "---|" * 6]
    for run in runs:
        top = max(run["playbooks"] + run["historical"], key=lambda r: r["make_plan_peak_mb"])
        lines.append(f"| {run['size']:,} | {run['dry_run_rss_mb']:.0f} "
                     f"| {run['imports_rss_mb']:.0f} "
                     f"| {run['dry_run_rss_mb'] - run['imports_rss_mb']:.0f} "
                     f"| {run['dry_run_all_s']:.1f} "
                     f"| {top['make_plan_peak_mb']:.2f} "
                     f"({top['playbook']}{', historical' if top['historical'] else ''}) |")
    return "\n".join(lines)


def verdict(runs: list[dict[str, Any]]) -> list[str]:
    """One line per target with the numbers that decide it."""
    rows = [(run["size"], r) for run in runs for r in run["playbooks"]]
    slow = [f"{r['playbook']}@{n:,} {r['dry_run_vs_hand']:.1f}x" for n, r in rows
            if r["dry_run_vs_hand"] > TARGET_VS_HAND]
    slow_query = [f"{r['playbook']}@{n:,} {r['query_vs_hand']:.1f}x" for n, r in rows
                  if r["query_vs_hand"] > TARGET_VS_HAND]
    per_record_lines = []
    for name, label in (("per_record_min", "(b-min)"), ("per_record_dict", "(b-dict)")):
        ratio = f"{name}_vs_dry_run"
        measured = [(n, r) for n, r in rows if ratio in r]
        short = [f"{r['playbook']}@{n:,} {r[ratio]:.1f}x" for n, r in measured
                 if r[ratio] < TARGET_VS_PER_RECORD]
        per_record_lines.append(f">= {TARGET_VS_PER_RECORD:g}x faster than per-record {label} "
                                f"({len(measured)} measured): "
                                + ("met" if not short else "MISSED for " + ", ".join(short)))
    out = [f"dry-run within {TARGET_VS_HAND:g}x of hand-written SQL: "
           + ("met" if not slow else "MISSED for " + ", ".join(slow)),
           f"engine query alone within {TARGET_VS_HAND:g}x of hand-written SQL: "
           + ("met" if not slow_query else "MISSED for " + ", ".join(slow_query)),
           *per_record_lines]
    if len(runs) > 1:
        # make_plan counts rows a batch at a time, so a playbook with fewer entering rows than
        # a batch peaks lower at the small size; flat means the largest peak (and the dry-run
        # process's RSS above its imports) does not grow with N.
        small, large = runs[0], runs[-1]
        above = [max(run["dry_run_rss_mb"] - run["imports_rss_mb"], 1.0) for run in (small, large)]
        peaks = [max(r["make_plan_peak_mb"] for r in run["playbooks"] + run["historical"])
                 for run in (small, large)]
        flat = above[1] <= FLAT_MEMORY * above[0] and peaks[1] <= FLAT_MEMORY * peaks[0]
        out.append(f"memory flat in N: {'met' if flat else 'MISSED'}: `retain dry-run` RSS "
                   f"{small['dry_run_rss_mb']:.0f} -> {large['dry_run_rss_mb']:.0f} MB "
                   f"({above[0]:.0f} -> {above[1]:.0f} MB above its imports), largest "
                   f"make_plan peak {peaks[0]:.2f} -> {peaks[1]:.2f} MB "
                   f"({small['size']:,} -> {large['size']:,} customers)")
    scans = [f"{s['playbook']}@{run['size']:,}" for run in runs for s in run["selective"]
             if not s["uses_type_time_index"]]
    times = []
    for s in runs[-1]["selective"]:
        first = next(f for f in runs[0]["selective"] if f["playbook"] == s["playbook"])
        grew = s["events_in_window"] / max(first["events_in_window"], 1)
        times.append(f"{s['playbook']} {first['query_s']:.4f} -> {s['query_s']:.4f} s "
                     f"({grew:.0f}x the events in the window; full scan {s['full_scan_query_s']:.3f} s)")
    out.append("selective triggers use ix_events_type_time: "
               + ("yes" if not scans else "NO for " + ", ".join(scans)) + "; " + "; ".join(times))
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry: build the databases if needed, measure every size, print and save results."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        db, repeat, chosen = Path(argv[1]), int(argv[2]), argv[3]
        result = child_measure(db, repeat, None if chosen == "*" else chosen.split(","))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000",
                        help="comma-separated customer counts (default 100000,1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per method (median kept)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-record", default=",".join(PER_RECORD_LARGE),
                        help=f"playbooks for (b) above {PER_RECORD_ALL_UP_TO:,} customers "
                             "(below it: all)")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    source: dict[str, Any] = {"commit": head_commit()}
    runs = []
    for size in (int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()):
        print(f"measuring {size:,} customers", file=sys.stderr, flush=True)
        runs.append(run_size(size, args.seed, args.repeat, args.per_record.split(",")))
    for run in runs:  # back to back, so every size runs the same CLI code
        run.update(dry_run_rss(Path(run["db"]), run["latest_event"]))
    prints = {run["fingerprint"] for run in runs}
    source["fingerprints"] = sorted(prints)
    source["changed_during_run"] = len(prints) > 1
    source["cli_fingerprints"] = sorted({str(run["dry_run_fingerprint"]) for run in runs})
    document = {"started": started.isoformat(timespec="seconds"), "argv": argv, "source": source,
                "repeat": args.repeat, "cpus": os.cpu_count(),
                "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                "sqlalchemy": sa.__version__, "runs": runs, "verdict": verdict(runs)}
    if source["changed_during_run"]:
        document["verdict"].insert(0, "WARNING: the sizes ran different code (fingerprints "
                                   f"{sorted(prints)}): the repository changed during the run")
    RESULTS.write_text(json.dumps(document, indent=2))
    print(markdown(runs) + "\n\n" + "\n".join(document["verdict"]))
    print(f"\nsource: commit {source['commit']}, code measured {', '.join(sorted(prints))}, "
          f"`retain dry-run` {', '.join(source['cli_fingerprints'])}")
    print(f"\nwritten {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
