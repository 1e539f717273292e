"""Dry-run, explain and the demo on the shipped demo data: golden SQL, no side effects, verdicts.

Golden SQL: each sample playbook's ONE statement, compiled for SQLite and PostgreSQL at a fixed
instant, is kept in tests/golden/sql/ so a change in what the database is asked shows up in the
diff. Regenerate with RETAIN_UPDATE_SNAPSHOTS=1 and review the diff.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Cli
from sqlalchemy.dialects import postgresql, sqlite

from engine.demo.build import load_demo
from engine.format.validation import load_valid_playbooks
from engine.plan.build import make_plan
from engine.plan.planner import in_holdout
from engine.query.evaluate import Moment, candidates, playbook_query, prepare
from engine.query.explain import explain
from engine.store.open import open_store
from playbooks import SAMPLES_DIR

GOLDEN = Path(__file__).parent / "golden" / "sql"
AS_OF = datetime(2011, 12, 10, tzinfo=UTC)
SAMPLES = load_valid_playbooks([SAMPLES_DIR])
BY_ID = {p.id: p for p in SAMPLES}


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The demo database on SQLite, built once for this module, checkpointed (no WAL left)."""
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    engine = open_store(f"sqlite:///{path}")
    load_demo(engine)
    engine.dispose()
    yield path


@pytest.fixture
def demo(demo_file: Path) -> Iterator[sa.Engine]:
    engine = open_store(f"sqlite:///{demo_file}")
    yield engine
    engine.dispose()


def files_digest(path: Path) -> dict[str, str]:
    """Every file of a SQLite database (main, -wal, -journal), by content hash; an empty WAL
    counts as absent. The -shm file is SQLite's shared-memory index of open connections, not
    stored data, so it is not compared."""
    found = {}
    for file in sorted(path.parent.glob(path.name + "*")):
        if file.name.endswith("-shm"):
            continue
        data = file.read_bytes()
        if data or not file.name.endswith("-wal"):
            found[file.name] = hashlib.sha256(data).hexdigest()
    return found


@pytest.mark.parametrize("playbook", [p.id for p in SAMPLES])
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_golden_sql(playbook: str, dialect: str) -> None:
    moment = Moment(AS_OF, datetime(2011, 12, 9, 12, 31, tzinfo=UTC), (None, "Europe/London"), {})
    query = playbook_query(BY_ID[playbook], moment.trigger_context(playbook))
    chosen = sqlite.dialect() if dialect == "sqlite" else postgresql.dialect()
    text = str(query.compile(dialect=chosen, compile_kwargs={"literal_binds": True})) + "\n"
    golden = GOLDEN / f"{playbook}.{dialect}.sql"
    if os.environ.get("RETAIN_UPDATE_SNAPSHOTS") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"missing {golden}: run with RETAIN_UPDATE_SNAPSHOTS=1"
    assert text == golden.read_text(encoding="utf-8")


def test_every_sample_is_one_statement_that_runs(demo: sa.Engine) -> None:
    with demo.connect() as connection:
        moment = prepare(connection, AS_OF, SAMPLES)
        assert not moment.historical
        entering = {p.id: len(list(candidates(connection, playbook_query(
            p, moment.trigger_context(p.id))))) for p in SAMPLES}
    # Real data, fixed files: these numbers only move when the engine's semantics do.
    assert entering["winback-30d"] > 500
    assert entering["purchase-points"] > 0 and entering["negative-feedback"] > 0
    assert entering["welcome-series"] == 0  # nobody's first purchase fell on 2011-12-09


def test_dry_run_changes_no_byte_of_the_database(demo_file: Path, cli: Cli) -> None:
    before = files_digest(demo_file)
    url = f"sqlite:///{demo_file}"
    code, out, _ = cli(["--db", url, "dry-run", str(SAMPLES_DIR), "--as-of", "2011-12-10",
                        "--json"])
    assert code == 0
    plan = json.loads(out)
    assert plan["as_of"] == "2011-12-10T00:00:00Z"
    assert any(p["entering"] for p in plan["playbooks"])
    code, _, _ = cli(["--db", url, "dry-run", str(SAMPLES_DIR), "--as-of", "2011-06-01"])
    assert code == 0  # a historical dry-run too
    sa.create_engine(url).dispose()
    assert files_digest(demo_file) == before


def test_json_plan_lists_every_enrollment_with_rendered_actions(demo_file: Path, cli: Cli) -> None:
    code, out, _ = cli(["--db", f"sqlite:///{demo_file}", "dry-run", str(SAMPLES_DIR),
                        "--as-of", "2011-12-10", "--json"])
    assert code == 0
    plan = {p["id"]: p for p in json.loads(out)["playbooks"]}
    feedback = plan["negative-feedback"]
    assert feedback["entering"] == len(feedback["enrollments"]) > 0
    first = feedback["enrollments"][0]
    assert first["occurrence"] == first["event_id"]
    task, email = first["actions"]
    assert task["type"] == "task" and task["fields"]["title"].startswith("Follow up with ")
    assert "feedback score " in task["fields"]["title"] and ".0" not in task["fields"]["title"]
    assert email["type"] == "email" and email["fields"]["to"].endswith("@demo.example")
    winback = plan["winback-30d"]
    assert "over limits.max_percent 20% = 300 of 1,500" in winback["over_limit"]
    assert winback["entering"] > 300 and winback["enrollments"] == []  # over: no one enrolls
    assert winback["holdout"] == 0


def test_json_plan_of_a_playbook_within_limits_times_keys_and_holds_out(
        demo_file: Path, cli: Cli, tmp_path: Path) -> None:
    """winback-30d without its limit: every enrollment listed, waits timed, 10% held out."""
    shutil.copytree(SAMPLES_DIR / "templates", tmp_path / "templates")
    text = (SAMPLES_DIR / "winback-30d.yaml").read_text(encoding="utf-8")
    (tmp_path / "winback-30d.yaml").write_text(
        text.replace("limits:\n  max_percent: 20%\n", ""), encoding="utf-8")
    code, out, err = cli(["--db", f"sqlite:///{demo_file}", "dry-run", str(tmp_path),
                          "--as-of", "2011-12-10", "--json"])
    assert code == 0, err
    (winback,) = json.loads(out)["playbooks"]
    assert winback["over_limit"] is None and winback["entering"] == len(winback["enrollments"])
    held = [e for e in winback["enrollments"] if e["holdout"]]
    assert winback["holdout"] == len(held)  # the count agrees with the listed enrollments
    assert 0.05 < len(held) / len(winback["enrollments"]) < 0.15  # holdout: 10%
    assert all(e["actions"] == [] for e in held)
    planned = [e["actions"] for e in winback["enrollments"] if not e["holdout"]]
    email, task = planned[0]  # the task comes after `wait: 7d` and is due 2 days later
    assert (email["run_at"], task["run_at"]) == ("2011-12-10T00:00:00Z", "2011-12-17T00:00:00Z")
    assert (email["commit_now"], task["commit_now"]) == (True, False)
    assert task["fields"]["due_at"] == "2011-12-19T00:00:00Z"
    assert task["fields"]["title"].startswith("Call ")
    assert task["fields"]["assignee"] == "retention-team"
    keys = [a["key"] for actions in planned for a in actions]
    assert len(set(keys)) == len(keys) == 2 * len(planned)  # distinct, every one
    assert max(len(key) for key in keys) <= 255


def test_dry_run_for_one_customer_equals_their_part_of_the_full_plan(demo: sa.Engine) -> None:
    with demo.connect() as connection:
        full = make_plan(connection, SAMPLES, AS_OF)
        someone = next(e for pp in full.playbooks for e in pp.shown)
        alone = make_plan(connection, SAMPLES, AS_OF, customer_id=someone.customer_id)
    mine = [(pp.playbook.id, e) for pp in full.playbooks for e in pp.shown
            if e.customer_id == someone.customer_id]
    assert [(pp.playbook.id, e) for pp in alone.playbooks for e in pp.shown] == mine


def test_explain_a_customer_who_enters(demo: sa.Engine, cli: Cli) -> None:
    with demo.connect() as connection:
        first = next(candidates(connection, playbook_query(
            BY_ID["winback-30d"], prepare(connection, AS_OF, SAMPLES).trigger_context(
                "winback-30d"))))
        result = explain(connection, BY_ID["winback-30d"], first.customer_id, AS_OF,
                         holdout=in_holdout)
    assert result.entering == [first.occurrence]
    assert all(clause.result for clause in result.clauses)
    paths = [clause.path for clause in result.clauses]
    assert paths == ["trigger.inactive", "when[0].email.is_null", "when[1].purchase_count.gte",
                     "when[2].last_emailed_at.older_than", "reentry"]
    code, out, _ = cli(["--db", str(demo.url), "explain", "winback-30d", first.customer_id,
                        "--playbooks", str(SAMPLES_DIR), "--as-of", "2011-12-10"])
    assert code == 0
    assert f"ENTERS for {first.occurrence}" in " ".join(out.split())


def test_explain_a_customer_who_does_not_enter(demo: sa.Engine, cli: Cli) -> None:
    with demo.connect() as connection:
        vip = BY_ID["vip-care"]
        entering = {c.customer_id for c in candidates(connection, playbook_query(
            vip, prepare(connection, AS_OF, [vip]).trigger_context(vip.id)))}
        spent, customer = connection.execute(sa.text(
            "select total_spent, customer_id from customers where purchase_count >= 10 "
            "and total_spent < 5000 order by customer_id limit 1")).one()
        assert customer not in entering
        result = explain(connection, vip, customer, AS_OF, holdout=in_holdout)
    assert result.entering == []
    by_path = {clause.path: clause for clause in result.clauses}
    gte = by_path["when[0].any[1].all[0].total_spent.gte"]
    assert (gte.actual, gte.result, gte.wanted) == (pytest.approx(spent), False, "gte 5000")
    assert by_path["when[0].any[1].all[1].purchase_count.gte"].result is True
    assert by_path["when[0].any"].result is False
    code, out, _ = cli(["--db", str(demo.url), "explain", "vip-care", customer, "--playbooks",
                        str(SAMPLES_DIR), "--as-of", "2011-12-10", "--json"])
    assert code == 0
    document = json.loads(out)
    assert document["enters"] is False
    assert [c["result"] for c in document["clauses"] if c["path"] == "when[0].any"] == [False]


def test_explain_refuses_unknown_playbook_and_customer(demo_file: Path, cli: Cli) -> None:
    url = f"sqlite:///{demo_file}"
    code, _, err = cli(["--db", url, "explain", "winbak-30d", "12347", "--playbooks",
                        str(SAMPLES_DIR)])
    assert code == 1 and "did you mean 'winback-30d'" in err
    code, _, err = cli(["--db", url, "explain", "winback-30d", "nobody", "--playbooks",
                        str(SAMPLES_DIR)])
    assert code == 1 and "customer 'nobody' not found" in err


def test_reading_commands_do_not_create_a_database(tmp_path: Path, cli: Cli) -> None:
    missing = tmp_path / "typo.db"
    code, _, err = cli(["--db", f"sqlite:///{missing}", "dry-run", str(SAMPLES_DIR)])
    assert code == 1 and "no database at" in err
    assert not missing.exists()


def test_demo_command_runs_the_samples_live_into_a_folder(tmp_path: Path, cli: Cli) -> None:
    code, out, _ = cli(["--db", f"sqlite:///{tmp_path / 'demo.db'}", "demo"])
    assert code == 0
    assert "Live run at 2011-12-10 00:00 UTC" in out
    assert "winback-30d" in out and "over limits.max_percent" in out
    mail = tmp_path / "demo-mail"
    written = sorted(mail.glob("*.eml"))
    assert written and f"emails are in {mail}/" in " ".join(out.split())
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in written[0].read_bytes()
    code, out, _ = cli(["--db", f"sqlite:///{tmp_path / 'demo.db'}", "demo"])
    assert code == 0 and "0 actions delivered" in out  # nothing new the second time
    assert sorted(mail.glob("*.eml")) == written


def test_a_missing_value_renders_as_nothing_not_none(tmp_path: Path, cli: Cli) -> None:
    from engine.format.templates import make_environment, render

    environment = make_environment()
    assert render(environment, "Hi {{ customer.name }}!", {"customer": {"name": None}}) == "Hi !"


@pytest.mark.parametrize("rows", [0, 1, 12000])
def test_count_is_the_databases_count_of_the_statement(db: sa.Engine, rows: int) -> None:
    from engine.query.evaluate import count

    with db.connect() as connection:
        connection.exec_driver_sql("create temporary table many (a varchar, b varchar, c integer)")
        if rows:
            connection.execute(sa.text("insert into many values (:a, 'x', null)"),
                               [{"a": str(i)} for i in range(rows)])
        query = sa.select(sa.column("a"), sa.column("b"), sa.column("c")).select_from(
            sa.table("many"))
        assert count(connection, query) == rows
        assert count(connection, query.where(sa.column("a") == "7")) == (1 if rows > 7 else 0)
