"""`retain demo` as a live run into a folder, and the uplift report on what it did (SQLite: the
demo is one command on a fresh machine).

The demo writes real `.eml` files where it says; a second demo sends nothing new. Then goal
events arrive for some treatment and holdout customers of a playbook with a holdout and a goal
(`churn-warning`: purchase within 21 days), and `report playbooks` after the goal window counts
exactly those conversions per group.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from conftest import Cli
from live_support import Mailbox, smtp_env
from outbox_support import PAYLOAD, WITH_PAYLOAD

from engine.store.open import open_store
from engine.store.tables import actions, enrollments
from playbooks import SAMPLES_DIR

PLAYBOOK = "churn-warning"


@pytest.fixture
def demo_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    for name in ("RETAIN_EMAIL_TRANSPORT", "RETAIN_EMAIL_DIR", "RETAIN_SMTP_HOST",
                 "RETAIN_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    return f"sqlite:///{tmp_path / 'shop.db'}"


def test_demo_writes_eml_files_where_it_says_and_a_second_demo_sends_nothing(
        demo_db: str, tmp_path: Path, cli: Cli) -> None:
    code, out, err = cli(["--db", demo_db, "demo"])
    assert code == 0, err
    folder = tmp_path / "shop-mail"
    files = sorted(folder.glob("*.eml"))
    assert files, out
    assert str(folder) in "".join(out.split())  # printed where to open them (maybe wrapped)
    sample = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert sample["Message-ID"] and sample["To"] and sample["Subject"]
    assert str(sample["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert str(sample["List-Unsubscribe"]).startswith("<http://127.0.0.1:8765/unsubscribe?")
    engine = open_store(demo_db)
    with engine.connect() as connection:
        emails = connection.execute(sa.select(sa.func.count()).select_from(actions).where(
            actions.c.connector == "email", actions.c.status == "sent")).scalar_one()
        ids = {p["message_id"] for p in connection.execute(sa.select(PAYLOAD).select_from(WITH_PAYLOAD).where(
            actions.c.connector == "email", actions.c.status == "sent")).scalars()}
    engine.dispose()
    assert emails == len(files)
    on_disk = {str(message_from_bytes(f.read_bytes(), policy=policy.default)["Message-ID"])
               for f in files}
    assert on_disk == ids

    # the link works after the process that made it is gone: the key is kept in the database
    link = str(sample["List-Unsubscribe"]).strip("<>")
    token = parse_qs(urlsplit(link).query)["token"][0]
    code, out, err = cli(["--db", demo_db, "unsubscribe", "--token", token])
    assert code == 0, err
    address = sample["To"].addresses[0].addr_spec.lower()
    assert address in out

    code, out, err = cli(["--db", demo_db, "demo", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["messages"] == len(files)  # the same files, none new
    assert sorted(folder.glob("*.eml")) == files
    assert all(line["entered"] == 0 and not line["dispatched"]
               for line in summary["run"]["playbooks"])


def test_uplift_report_counts_the_goal_events_per_group(
        demo_db: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli(["--db", demo_db, "demo", "--json"])
    assert code == 0, err
    as_of = json.loads(out)["run"]["as_of"]
    assert as_of == "2011-12-10T00:00:00Z"
    engine = open_store(demo_db)
    with engine.connect() as connection:
        entered = connection.execute(sa.select(
            enrollments.c.customer_id, enrollments.c.holdout).where(
            enrollments.c.playbook_id == PLAYBOOK).order_by(enrollments.c.customer_id)).all()
    engine.dispose()
    treatment = [cid for cid, held in entered if not held]
    holdout = [cid for cid, held in entered if held]
    assert len(treatment) >= 3 and len(holdout) >= 1, entered

    # purchases after the run: two treatment and one holdout customer within the 21 days,
    # one more treatment customer after the window (not a conversion)
    goals = [(treatment[0], "2011-12-12T10:00:00Z"), (treatment[1], "2011-12-30T10:00:00Z"),
             (holdout[0], "2011-12-15T10:00:00Z"), (treatment[2], "2012-01-05T10:00:00Z")]
    path = tmp_path / "later.jsonl"
    path.write_text("".join(json.dumps(
        {"event_id": f"goal-{n}", "customer_id": cid, "type": "purchase", "occurred_at": when,
         "amount": 30}) + "\n" for n, (cid, when) in enumerate(goals)), encoding="utf-8")
    code, out, err = cli(["--db", demo_db, "sync", "events", str(path)])
    assert code == 0 and "inserted 4" in out, out + err

    def report(moment: str) -> dict[str, Any]:
        code, out, err = cli(["--db", demo_db, "report", "playbooks", "--playbooks",
                              str(SAMPLES_DIR), "--as-of", moment, "--json"])
        assert code == 0, err
        found = {p["playbook_id"]: p for p in json.loads(out)["playbooks"]}
        return found[PLAYBOOK]

    line = report("2012-01-10T00:00:00Z")  # the 21-day window ended 2011-12-31
    assert (line["entered"], line["holdout"]) == (len(entered), len(holdout))
    groups = line["groups"]
    assert (groups["treatment"]["entered"], groups["treatment"]["measured"],
            groups["treatment"]["converted"]) == (len(treatment), len(treatment), 2)
    assert (groups["holdout"]["entered"], groups["holdout"]["measured"],
            groups["holdout"]["converted"]) == (len(holdout), len(holdout), 1)
    assert line["goal"] == {"event": "purchase", "within": "3w"}
    assert groups["treatment"]["rate"] == pytest.approx(100 * 2 / len(treatment), abs=0.01)
    assert groups["holdout"]["rate"] == pytest.approx(100 / len(holdout), abs=0.01)
    assert line["conclusion"] == "too_few_enrollments"  # the demo's holdout is a handful

    # a live run after the window records the same conversions; the report does not change
    monkeypatch.setenv("RETAIN_EMAIL_TRANSPORT", "file")
    monkeypatch.setenv("RETAIN_EMAIL_DIR", str(tmp_path / "later-mail"))
    code, out, err = cli(["--db", demo_db, "run", "--as-of", "2012-01-10T00:00:00Z",
                          str(SAMPLES_DIR), "--json"])
    assert code == 0, err
    engine = open_store(demo_db)
    with engine.connect() as connection:
        converted = set(connection.execute(sa.select(enrollments.c.customer_id).where(
            enrollments.c.playbook_id == PLAYBOOK,
            enrollments.c.converted_at.is_not(None))).scalars())
    engine.dispose()
    assert converted == {treatment[0], treatment[1], holdout[0]}
    again = report("2012-01-10T00:00:00Z")
    assert again["groups"] == groups


def test_a_week_of_daily_runs_on_the_demo_sends_each_message_once(
        demo_db: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample playbooks (waits, holdouts, caps, quiet hours, points, tasks) on the demo data,
    run every day for a week through a real aiosmtpd: no Message-ID arrives twice, every sent
    email row arrived, a cap of 2 emails in 7 days holds per customer, nothing is left claimed."""
    (tmp_path / "retain.toml").write_text(
        '[caps]\nemail = "2/7d"\n\n[quiet_hours]\nemail = "21:00-08:00"\n', encoding="utf-8")
    code, out, err = cli(["--db", demo_db, "demo", "--json"])
    assert code == 0, err
    box = Mailbox().start()
    try:
        smtp_env(monkeypatch, box.port)
        for day in range(1, 8):
            for hour in ("09:00", "15:00"):
                code, out, err = cli(["--db", demo_db, "run", "--as-of",
                                      f"2011-12-{10 + day:02d}T{hour}:00Z", str(SAMPLES_DIR)])
                assert code == 0, out + err
    finally:
        box.stop()
    counts = box.by_message_id()
    assert len(counts) > 50 and set(counts.values()) == {1}
    engine = open_store(demo_db)
    with engine.connect() as connection:
        sent = connection.execute(sa.select(PAYLOAD, actions.c.customer_id,
                                            actions.c.sent_at).select_from(WITH_PAYLOAD).where(
            actions.c.connector == "email", actions.c.status == "sent",
            actions.c.sent_at > datetime(2011, 12, 10, tzinfo=UTC))).all()
        claimed = connection.execute(sa.select(sa.func.count()).select_from(actions).where(
            actions.c.status == "claimed")).scalar_one()
        all_sent = connection.execute(sa.select(actions.c.customer_id, actions.c.sent_at).where(
            actions.c.connector == "email", actions.c.status == "sent")).all()
    engine.dispose()
    assert {p["message_id"] for p, _, _ in sent} == set(counts)
    assert claimed == 0
    by_customer: dict[str, list[datetime]] = {}
    for cid, when in all_sent:
        by_customer.setdefault(cid, []).append(when.astimezone(UTC))
    for cid, times in by_customer.items():
        times.sort()
        for i in range(2, len(times)):
            assert times[i] - times[i - 2] >= timedelta(days=7), (cid, times)
