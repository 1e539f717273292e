"""Caps, priority and quiet hours, decided in the plan (RELIABILITY 21, 22; DESIGN 3).

The rules are pure (engine/plan/delivery.py) and tested first without a database; then the plan
on both databases counts the outbox rows that already fill a cap (sent and on their way, never
capped or dead ones), arbitrates between playbooks by priority, and the dry-run shows it all.
Settings come from `load_settings` with `RETAIN_CAPS_*`, `RETAIN_QUIET_HOURS_*` and
`RETAIN_TIMEZONE` (no retain.toml), and from a project's retain.toml for the dry-run command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import Cli
from outbox_support import insert_action
from pydantic import BaseModel
from test_evaluate_triggers import add_customers, customer
from test_evaluate_triggers import playbook as db_playbook
from test_planner import person, playbook

from connectors.base import Render, RenderFile
from connectors.tasks import TaskConnector
from engine.config import Cap, QuietHours, Settings, load_settings
from engine.format.playbook import Playbook
from engine.format.registry import load_connectors
from engine.format.templates import make_environment
from engine.format.validation import templates_dir
from engine.plan.build import make_plan
from engine.plan.delivery import Booking, CapLedger, DeliveryRules, cap_conflict, quiet_until
from engine.plan.planner import UNSUBSCRIBE_URL, PlannedAction, Planner
from engine.store.status import CAPPED, DEAD, DEFERRED, PLANNED, STATUSES

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = QuietHours.parse("22:00-06:00")
MAIL = '  - email: { subject: "Hello {{ customer.name }}", body: "We miss you" }\n'
HOOK = '  - webhook: { url: "https://hooks.example/x", body: { who: "{{ customer.name }}" } }\n'


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NO_PROJECT = Path(__file__).parent / "fixtures" / "playbooks"  # a folder without retain.toml


def settings(caps: Mapping[str, str] | None = None, quiet: Mapping[str, str] | None = None,
             timezone: str = "UTC") -> Settings:
    """Settings from the environment only, as `retain` reads them."""
    env = {f"RETAIN_CAPS_{k.upper()}": v for k, v in (caps or {}).items()}
    env |= {f"RETAIN_QUIET_HOURS_{k.upper()}": v for k, v in (quiet or {}).items()}
    assert not (NO_PROJECT / "retain.toml").exists()
    return load_settings(NO_PROJECT, env={**env, "RETAIN_TIMEZONE": timezone})


def planner_at(pb: Playbook, as_of: datetime, rules: DeliveryRules, *, rank: int = 0,
               ledger: CapLedger | None = None, connectors: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Planner:
    found = connectors or {kind: cls() for kind, cls in load_connectors().items()}
    return Planner(pb, as_of, found, make_environment(templates_dir(Path(pb.file))), rules=rules,
                   ledger=ledger, rank=rank, **kwargs)


def rules_of(caps: Mapping[str, str] | None = None, quiet: Mapping[str, str] | None = None,
             timezone: str = "UTC", priorities: Mapping[str, int] | None = None
             ) -> DeliveryRules:
    return DeliveryRules.from_settings(settings(caps, quiet, timezone), priorities)


def first(pl: Planner, cid: str, customer_record: dict[str, Any],
          booked: Mapping[str, list[Booking]] | None = None) -> PlannedAction:
    return pl.enrollment(cid, "o", customer_record, None, {}, booked).actions[0]


# --- quiet hours: pure --------------------------------------------------------------------------

def test_reliability_21_due_0530_in_quiet_2200_0600_is_deferred_to_0600(tmp_path: Path) -> None:
    """RELIABILITY 21 exactly: 05:30 in the customer's zone, quiet 22:00-06:00 -> 06:00 there,
    with the reason shown (Braze's rule)."""
    as_of = utc("2026-01-15T04:30:00")  # 05:30 in Berlin (CET, UTC+1)
    pl = planner_at(playbook(tmp_path), as_of, rules_of(quiet={"email": "22:00-06:00"}))
    action = first(pl, "c1", {**person("c1", "ann@x.example"), "timezone": "Europe/Berlin"})
    assert action.status == DEFERRED
    assert action.run_at == utc("2026-01-15T05:00:00")  # 06:00 CET
    assert action.run_at.astimezone(BERLIN).strftime("%H:%M") == "06:00"
    assert action.reason == ("quiet hours 22:00-06:00 (Europe/Berlin): deferred to "
                             "2026-01-15T05:00:00Z")
    # the same instant for a customer in UTC is 04:30, also quiet, so 06:00 UTC
    utc_one = first(pl, "c2", person("c2", "bob@x.example"))
    assert (utc_one.status, utc_one.run_at) == (DEFERRED, utc("2026-01-15T06:00:00"))


@pytest.mark.parametrize(("due", "expected"), [
    ("2026-01-15T21:59:59", None),  # before the window
    ("2026-01-15T22:00:00", "2026-01-16T06:00:00"),  # its first minute: tomorrow's end
    ("2026-01-15T23:45:00", "2026-01-16T06:00:00"),  # before midnight: tomorrow's end
    ("2026-01-16T00:10:00", "2026-01-16T06:00:00"),  # after midnight: today's end
    ("2026-01-16T05:59:59", "2026-01-16T06:00:00"),
    ("2026-01-16T06:00:00", None),  # the end is allowed
    ("2026-01-16T12:00:00", None),
])
def test_a_window_across_midnight(due: str, expected: str | None) -> None:
    found = quiet_until(utc(due), NIGHT, ZoneInfo("UTC"))
    assert found == (utc(expected) if expected else None)


def test_a_window_within_one_day() -> None:
    lunch = QuietHours.parse("12:00-14:00")
    assert quiet_until(utc("2026-01-15T13:00:00"), lunch, ZoneInfo("UTC")) == \
        utc("2026-01-15T14:00:00")
    assert quiet_until(utc("2026-01-15T11:59:00"), lunch, ZoneInfo("UTC")) is None
    assert quiet_until(utc("2026-01-15T23:00:00"), lunch, ZoneInfo("UTC")) is None


@pytest.mark.parametrize(("quiet", "due", "expected"), [
    # spring forward in Berlin, 2026-03-29 02:00 CET -> 03:00 CEST: 06:00 is UTC+2 that day
    ("22:00-06:00", "2026-03-28T23:30:00", "2026-03-29T04:00:00"),
    ("22:00-06:00", "2026-03-29T03:00:00", "2026-03-29T04:00:00"),  # 05:00 CEST
    # an end that does not exist that day (02:30): the transition itself, 03:00 CEST
    ("22:00-02:30", "2026-03-28T23:30:00", "2026-03-29T01:00:00"),
    # fall back, 2026-10-25 03:00 CEST -> 02:00 CET: 06:00 is UTC+1 again
    ("22:00-06:00", "2026-10-24T23:30:00", "2026-10-25T05:00:00"),
    # a repeated end (02:30 twice): its first showing, or the second one from inside it
    ("22:00-02:30", "2026-10-24T23:30:00", "2026-10-25T00:30:00"),
    ("22:00-02:30", "2026-10-25T01:10:00", "2026-10-25T01:30:00"),  # 02:10 CET, 2nd pass
])
def test_quiet_hours_on_dst_days(quiet: str, due: str, expected: str) -> None:
    found = quiet_until(utc(due), QuietHours.parse(quiet), BERLIN)
    assert found == utc(expected)
    assert found > utc(due)


def test_an_unknown_zone_falls_back_to_the_default_and_says_so(tmp_path: Path) -> None:
    as_of = utc("2026-01-15T04:30:00")  # 05:30 in Berlin, 04:30 UTC
    pl = planner_at(playbook(tmp_path), as_of,
                    rules_of(quiet={"email": "22:00-06:00"}, timezone="Europe/Berlin"))
    lost = first(pl, "c1", {**person("c1", "a@x.example"), "timezone": "Mars/Olympus"})
    assert (lost.status, lost.run_at) == (DEFERRED, utc("2026-01-15T05:00:00"))
    assert lost.reason is not None
    assert "(Europe/Berlin; customer zone 'Mars/Olympus' unknown)" in lost.reason
    for odd in ("../../etc/passwd", "Europe", "x" * 300, "utc", 5):
        bad = first(pl, "c2", {**person("c2", "b@x.example"), "timezone": odd})
        assert (bad.status, bad.run_at) == (DEFERRED, lost.run_at), odd
    plain = first(pl, "c3", person("c3", "c@x.example"))  # no zone: [retain] timezone
    assert plain.run_at == lost.run_at and "(Europe/Berlin)" in (plain.reason or "")


def test_only_channels_with_quiet_hours_wait(tmp_path: Path) -> None:
    pb = playbook(tmp_path, actions=MAIL + '  - task: { title: "Call", due_in: 1d }\n')
    as_of = utc("2026-01-15T23:00:00")
    pl = planner_at(pb, as_of, rules_of(quiet={"email": "22:00-06:00"}))
    email, task = pl.enrollment("c1", "o", person("c1", "a@x.example"), None, {}).actions
    assert (email.status, task.status, task.run_at) == (DEFERRED, PLANNED, as_of)
    skipped = first(pl, "c2", person("c2", None))  # no address: skipped, not deferred
    assert (skipped.status, skipped.run_at) == ("skipped", as_of)


# --- caps: pure ---------------------------------------------------------------------------------

def booking(at: datetime, pid: str = "old", key: str | None = None) -> Booking:
    return Booking(at, pid, key or f"{pid}/{at.isoformat()}")


def test_a_rolling_window_judges_rows_before_and_after() -> None:
    """`2/7d`: no span of 7 days holds more than 2. A row due later counts as much as one sent
    earlier; rows 6 days either side never share a 7-day span, so a third fits between."""
    cap, t = Cap.parse("2/7d"), utc("2026-01-15T10:00:00")
    day = timedelta(days=1)
    assert cap_conflict(cap, t, [booking(t - 2 * day)]) is None
    full = cap_conflict(cap, t, [booking(t - 2 * day, "a"), booking(t - day, "b")])
    assert full is not None and [b.playbook_id for b in full] == ["a", "b"]
    assert cap_conflict(cap, t, [booking(t + 3 * day), booking(t + 5 * day, "x")]) is not None
    assert cap_conflict(cap, t, [booking(t - 6 * day), booking(t + 6 * day)]) is None
    assert cap_conflict(cap, t, [booking(t - 7 * day), booking(t - 3 * day)]) is None  # 7d ago
    assert cap_conflict(cap, t, [booking(t + 7 * day), booking(t + 1 * day)]) is None


def test_reliability_22_the_third_email_in_7_days_is_capped(tmp_path: Path) -> None:
    """Three playbooks each send one email now, cap 2/7d: the first two (by priority) go, the
    third is capped with the cap and both winners named."""
    as_of = utc("2026-01-15T10:00:00")
    pbs = [playbook(tmp_path, f"priority: {prio}\n", pid=pid)
           for pid, prio in (("winback-30d", 80), ("nps-ask", 50), ("promo", 10))]
    rules = rules_of(caps={"email": "2/7d"}, priorities={p.id: p.document.priority for p in pbs})
    ledger = CapLedger()
    got = [first(planner_at(pb, as_of, rules, rank=rank, ledger=ledger), "c1",
                 person("c1", "ann@x.example")) for rank, pb in enumerate(pbs)]
    assert [a.status for a in got] == [PLANNED, PLANNED, CAPPED]
    assert got[2].reason == ("cap email 2/7d reached: sent or planned by winback-30d "
                             "(priority 80) and nps-ask (priority 50)")
    assert got[2].run_at == as_of and not got[2].error
    other = first(planner_at(pbs[2], as_of, rules, rank=2, ledger=ledger), "c2",
                  person("c2", "bob@x.example"))
    assert other.status == PLANNED  # caps are per customer


def test_outbox_bookings_count_and_a_deferred_action_is_judged_when_it_goes(
        tmp_path: Path) -> None:
    """Quiet hours first, then the cap at the deferred time: an email sent 20 h before as-of
    fills a 1/1d cap now, but not 10 h later, where the deferred action goes."""
    as_of = utc("2026-01-15T23:00:00")
    sent = {"email": [booking(as_of - timedelta(hours=20), "welcome")]}
    pb = playbook(tmp_path)
    now = first(planner_at(pb, as_of, rules_of(caps={"email": "1/1d"})), "c1",
                person("c1", "a@x.example"), sent)
    assert now.status == CAPPED and now.reason == \
        "cap email 1/1d reached: sent or planned by welcome"
    later = first(planner_at(pb, as_of, rules_of(caps={"email": "1/1d"},
                                                  quiet={"email": "22:00-06:00"})),
                  "c1", person("c1", "a@x.example"), sent)
    assert (later.status, later.run_at) == (DEFERRED, utc("2026-01-16T06:00:00"))


def test_dead_capped_and_suppressed_actions_take_no_slot(tmp_path: Path) -> None:
    """A higher-priority webhook that cannot render, or an email to a suppressed address, or
    one that was capped, leaves the slot to the next playbook (Braze: capped or failed
    messages do not count)."""
    as_of = utc("2026-01-15T10:00:00")
    broken = playbook(tmp_path, "priority: 90\n", pid="broken",
                      actions='  - webhook: { url: "https://h.example/{{ customer.name }}" }\n')
    fine = playbook(tmp_path, "priority: 10\n", pid="fine", actions=HOOK)
    rules = rules_of(caps={"webhook": "1/1d", "email": "1/1d"})
    ledger = CapLedger()
    two_lines = person("c1", name="A\nB")  # cannot go into a URL (a header-like value)
    dead = first(planner_at(broken, as_of, rules, ledger=ledger), "c1", two_lines)
    assert (dead.status, dead.error) == (DEAD, True)
    assert first(planner_at(fine, as_of, rules, rank=1, ledger=ledger), "c1",
                 two_lines).status == PLANNED
    # an email to a suppressed address: suppressed, and the next playbook's email still fits
    loud = playbook(tmp_path, "priority: 90\n", pid="loud")
    quiet = playbook(tmp_path, "priority: 10\n", pid="quiet")
    ledger = CapLedger()
    blocked = planner_at(loud, as_of, rules, ledger=ledger).enrollment(
        "c2", "o", person("c2", "c2@x.example"), None, {"c2@x.example": "unsubscribed"})
    assert blocked.actions[0].status == "suppressed"
    assert first(planner_at(quiet, as_of, rules, rank=1, ledger=ledger), "c2",
                 person("c2", "c2@x.example")).status == PLANNED
    # two capped emails in a row: the second is capped by the first planned, not the capped
    twice = playbook(tmp_path, pid="twice", actions=MAIL + MAIL + MAIL)
    made = planner_at(twice, as_of, rules_of(caps={"email": "2/1d"})).enrollment(
        "c3", "o", person("c3", "c3@x.example"), None, {})
    assert [a.status for a in made.actions] == [PLANNED, PLANNED, CAPPED]
    assert made.actions[2].reason == "cap email 2/1d reached: sent or planned by twice"


def test_later_stages_are_capped_when_committed_not_now(tmp_path: Path) -> None:
    pb = playbook(tmp_path, actions=MAIL + "  - wait: 1h\n" + MAIL)
    made = planner_at(pb, utc("2026-01-15T10:00:00"), rules_of(caps={"email": "1/1d"})
                      ).enrollment("c1", "o", person("c1", "a@x.example"), None, {})
    assert [(a.stage, a.status) for a in made.actions] == [(0, PLANNED), (1, PLANNED)]


def test_a_second_pass_replans_against_the_higher_priority_plan_only(tmp_path: Path) -> None:
    """Streaming a playbook again (a dry-run lists, then `--json` streams) forgets its own and
    later playbooks' bookings, so the same customers get the same statuses."""
    as_of = utc("2026-01-15T10:00:00")
    high = playbook(tmp_path, "priority: 50\n", pid="high")
    low = playbook(tmp_path, "priority: 10\n", pid="low", actions=MAIL + MAIL)
    rules, ledger = rules_of(caps={"email": "2/7d"}), CapLedger()

    def plan(pb: Playbook, rank: int) -> list[str]:
        ledger.forget_from(rank)  # what make_plan's source does at each pass
        pl = planner_at(pb, as_of, rules, rank=rank, ledger=ledger)
        return [a.status for a in pl.enrollment("c1", "o", person("c1", "a@x.example"),
                                                None, {}).actions]

    once = [plan(high, 0), plan(low, 1)]
    assert once == [[PLANNED], [PLANNED, CAPPED]]
    assert [plan(high, 0), plan(low, 1)] == once
    assert plan(low, 1) == once[1]


# --- the live payload -------------------------------------------------------------------------

class FreezingTask(TaskConnector):
    """The task connector whose payload says it was asked for one, and with what."""

    def payload(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str, customer: Mapping[str, Any],
                unsubscribe_url: str) -> dict[str, Any]:
        return {**self.plan(params, render, render_file, due_at), "frozen": key,
                "link": unsubscribe_url, "customer": customer["customer_id"]}


def test_a_live_plan_freezes_payloads_with_real_links_and_the_same_decisions(
        tmp_path: Path) -> None:
    pb = playbook(tmp_path, actions='  - task: { title: "Call {{ customer.name }} '
                  '{{ unsubscribe_url }}", due_in: 1d }\n')
    as_of = utc("2026-01-15T23:00:00")
    rules = rules_of(quiet={"task": "22:00-06:00"})
    connectors = {"task": FreezingTask()}

    def link(address: str) -> str:
        return f"http://127.0.0.1:8765/unsubscribe?token=t-{address}"

    dry = first(planner_at(pb, as_of, rules, connectors=connectors), "c1",
                person("c1", "a@x.example"))
    live = first(planner_at(pb, as_of, rules, connectors=connectors, unsubscribe=link), "c1",
                 person("c1", "a@x.example"))
    assert (live.status, live.run_at, live.key, live.reason) == \
        (dry.status, dry.run_at, dry.key, dry.reason)
    assert live.status == DEFERRED
    assert "frozen" not in dry.fields and dry.fields["title"] == f"Call Ann {UNSUBSCRIBE_URL}"
    assert live.fields["frozen"] == live.key and live.fields["customer"] == "c1"
    assert live.fields["link"] == link("a@x.example")
    assert live.fields["title"] == f"Call Ann {link('a@x.example')}"
    assert live.fields["due_at"] == utc("2026-01-17T06:00:00")  # rendered for the deferred time
    nobody = first(planner_at(pb, as_of, rules, connectors=connectors, unsubscribe=link), "c2",
                   person("c2", None))
    assert nobody.fields["link"] == ""  # no address, nothing to unsubscribe


# --- the plan on both databases ------------------------------------------------------------------

AS_OF = utc("2026-01-15T10:00:00")


def add_rows(db: sa.Engine, *rows: tuple[str, str, str, str, datetime, datetime | None]) -> None:
    """Outbox rows (playbook, customer, connector, status, next_attempt_at, sent_at)."""
    with db.begin() as connection:
        for n, (pid, cid, connector, status, due, sent) in enumerate(rows):
            insert_action(
                connection, playbook_id=pid, customer_id=cid, connector=connector, payload={},
                idempotency_key=f"{pid}/{cid}/{n}", status=status, next_attempt_at=due,
                sent_at=sent, created_at=due)


def test_outbox_rows_fill_the_cap_on_both_databases(db: sa.Engine, tmp_path: Path) -> None:
    """Sent and on-their-way rows count (by sent_at, else next_attempt_at); capped, dead,
    cancelled rows, other channels and rows a window ago do not."""
    day = timedelta(days=1)
    add_customers(db, *(customer(cid, email=f"{cid}@x.example", name=cid)
                        for cid in ("full", "later", "free")))
    add_rows(db,
             ("welcome", "full", "email", "sent", AS_OF - 3 * day, AS_OF - 3 * day),
             ("nps", "full", "email", "retrying", AS_OF + day, None),
             ("promo", "later", "email", "deferred", AS_OF + 2 * day, None),
             ("promo", "later", "email", "planned", AS_OF + 6 * day, None),
             ("promo", "free", "email", "capped", AS_OF, None),
             ("promo", "free", "email", "dead", AS_OF, None),
             ("promo", "free", "email", "cancelled", AS_OF, None),
             ("promo", "free", "webhook", "sent", AS_OF, AS_OF),
             ("promo", "free", "email", "sent", AS_OF - 8 * day, AS_OF - 7 * day))
    pb = db_playbook(tmp_path, "segment: {}", actions=MAIL, pid="winback")
    with db.connect() as connection:
        plan = make_plan(connection, [pb], AS_OF, settings=settings(caps={"email": "2/7d"}))
        got = {e.customer_id: e.actions[0] for e in plan.playbooks[0].enrollments()}
    assert {cid: a.status for cid, a in got.items()} == \
        {"full": CAPPED, "later": CAPPED, "free": PLANNED}
    assert got["full"].reason == "cap email 2/7d reached: sent or planned by welcome and nps"
    assert got["later"].reason == "cap email 2/7d reached: sent or planned by promo"
    assert plan.playbooks[0].statuses == {PLANNED: 1, CAPPED: 2}


def test_priority_wins_the_slot_whatever_the_ids(db: sa.Engine, tmp_path: Path) -> None:
    """`a-promo` sorts first by id but has the lower priority: `z-winback` gets the slot."""
    add_customers(db, customer("c1", email="c1@x.example", name="Ann"),
                  customer("c2", email="c2@x.example", name="Bob"))
    low = db_playbook(tmp_path, "segment: {}", more="priority: 10\n", actions=MAIL,
                      pid="a-promo")
    high = db_playbook(tmp_path, "segment: {}", more="priority: 80\n", actions=MAIL,
                       pid="z-winback")
    add_rows(db, ("welcome", "c2", "email", "sent", AS_OF - timedelta(days=1), AS_OF))
    with db.connect() as connection:
        plan = make_plan(connection, [low, high], AS_OF,
                         settings=settings(caps={"email": "1/7d"}))
        first_pass = {pp.playbook.id: {e.customer_id: e.actions[0] for e in pp.enrollments()}
                      for pp in plan.playbooks}
    assert [pp.playbook.id for pp in plan.playbooks] == ["z-winback", "a-promo"]
    assert first_pass["z-winback"]["c1"].status == PLANNED
    assert first_pass["a-promo"]["c1"].status == CAPPED
    assert first_pass["a-promo"]["c1"].reason == \
        "cap email 1/7d reached: sent or planned by z-winback (priority 80)"
    assert {first_pass[p]["c2"].status for p in first_pass} == {CAPPED}  # the outbox row


# --- dry-run -----------------------------------------------------------------------------------

def test_dry_run_shows_deferred_and_capped_actions_with_reasons(
        db: sa.Engine, db_url: str, tmp_path: Path, cli: Cli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's retain.toml sets the rules; the text shows reasons and counts by status,
    `--json` each action's status, reason and (deferred) run_at."""
    add_customers(db, customer("c1", email="c1@x.example", name="Ann",
                               timezone="Europe/Berlin"),
                  customer("c2", email="c2@x.example", name="Bob"))
    folder = tmp_path / "project"
    folder.mkdir()
    for pid, prio in (("winback", 80), ("promo", 10)):
        (folder / f"{pid}.yaml").write_text(
            f"id: {pid}\nname: {pid}\npriority: {prio}\ntrigger:\n  segment: {{}}\n"
            f"actions:\n{MAIL}", encoding="utf-8")
    (folder / "retain.toml").write_text('[caps]\nemail = "1/7d"\n\n[quiet_hours]\n'
                                        'email = "22:00-06:00"\n', encoding="utf-8")
    monkeypatch.chdir(folder)
    for name in [n for n in os.environ if n.startswith("RETAIN_")]:
        monkeypatch.delenv(name)
    args = ["--db", db_url, "dry-run", str(folder), "--as-of", "2026-01-15T04:30:00Z"]
    code, out, err = cli(args)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "Caps: email 1/7d. Quiet hours: email 22:00-06:00 (customer's zone, else UTC)." \
        in out
    assert "winback: 2 actions: 2 deferred" in out
    assert "promo: 2 actions: 2 capped" in out
    flat = " ".join(out.split())
    assert "deferred customer c1: quiet hours 22:00-06:00 (Europe/Berlin): deferred to " \
        "2026-01-15T05:00:00Z" in flat
    assert "capped customer c1: cap email 1/7d reached: sent or planned by winback " \
        "(priority 80)" in flat
    code, out, err = cli([*args, "--json"])
    assert code == 0, err
    by_id = {p["id"]: p for p in json.loads(out)["playbooks"]}
    (win_c1, win_c2) = [e["actions"][0] for e in by_id["winback"]["enrollments"]]
    assert (win_c1["status"], win_c1["run_at"]) == (DEFERRED, "2026-01-15T05:00:00Z")
    assert (win_c2["status"], win_c2["run_at"]) == (DEFERRED, "2026-01-15T06:00:00Z")
    assert win_c1["reason"].startswith("quiet hours 22:00-06:00 (Europe/Berlin)")
    promo_c1 = by_id["promo"]["enrollments"][0]["actions"][0]
    assert (promo_c1["status"], promo_c1["run_at"]) == (CAPPED, "2026-01-15T05:00:00Z")
    assert "winback (priority 80)" in promo_c1["reason"]
    assert set(win_c1) == {"type", "step", "stage", "key", "commit_now", "run_at", "status",
                           "fields", "reason"}
    assert all(s in STATUSES for p in by_id.values() for e in p["enrollments"]
               for s in (a["status"] for a in e["actions"]))


def test_a_live_plan_decides_as_the_dry_run_on_both_databases(db: sa.Engine,
                                                               tmp_path: Path) -> None:
    """`unsubscribe` makes the plan live: payloads as fields, the same statuses, keys, due
    times and reasons as the dry-run, caps, priority and quiet hours included."""
    add_customers(db, *(customer(f"c{n}", email=f"c{n}@x.example", name=f"N{n}",
                                 timezone="America/New_York" if n % 2 else None)
                        for n in range(6)))
    add_rows(db, ("welcome", "c3", "webhook", "sent", AS_OF - timedelta(hours=2), AS_OF))
    pbs = [db_playbook(tmp_path, "segment: {}", more="priority: 80\n", actions=HOOK + MAIL,
                       pid="high"),
           db_playbook(tmp_path, "segment: {}", more="priority: 20\n", actions=MAIL + HOOK,
                       pid="low")]
    rules = settings(caps={"email": "1/7d", "webhook": "1/1d"}, quiet={"email": "08:00-12:00"})

    def decided(**live: Any) -> list[tuple[Any, ...]]:
        with db.connect() as connection:
            plan = make_plan(connection, pbs, AS_OF, settings=rules, **live)
            return [(pp.playbook.id, e.customer_id, a.key, a.status, a.run_at, a.reason,
                     dict(a.fields)) for pp in plan.playbooks for e in pp.enrollments()
                    for a in e.actions]

    dry = decided()
    live = decided(unsubscribe=lambda address: f"https://u.example/?t={address}")
    assert [row[:6] for row in dry] == [row[:6] for row in live]
    statuses = {(pid, cid, fields.get("url") is None): status
                for pid, cid, _, status, *_, fields in dry}
    assert statuses[("high", "c0", False)] == PLANNED  # the webhook
    assert statuses[("high", "c3", False)] == CAPPED  # the welcome webhook 2 h ago
    assert statuses[("high", "c0", True)] == DEFERRED  # 10:00 UTC is quiet in UTC
    assert statuses[("high", "c1", True)] == PLANNED  # 05:00 in New York is not
    assert {statuses[("low", c, True)] for c in ("c0", "c1")} == {CAPPED}
    assert statuses[("low", "c0", False)] == CAPPED  # high's webhook took the day
    hooks = [fields for pid, _, _, status, *_, fields in live
             if status == PLANNED and "url" in fields]
    assert hooks and all("headers" in fields for fields in hooks)  # the frozen payload
    assert all("headers" not in fields for *_, fields in dry)


def test_a_resumed_stage_is_the_one_capped(tmp_path: Path) -> None:
    """A planner for an enrollment whose wait is over judges caps for that stage."""
    pb = playbook(tmp_path, actions=MAIL + "  - wait: 1h\n" + MAIL)
    full = {"email": [booking(utc("2026-01-15T09:00:00"), "welcome")]}
    made = planner_at(pb, utc("2026-01-15T10:00:00"), rules_of(caps={"email": "1/1d"}),
                      commit_stage=1).enrollment("c1", "o", person("c1", "a@x.example"), None,
                                                 {}, full)
    assert [(a.stage, a.status) for a in made.actions] == [(0, PLANNED), (1, CAPPED)]
