"""The whole plan streamed in batches, on SQLite and PostgreSQL: every enrollment, counted in SQL.

More customers enter than one batch holds, so the candidates' result stays open while the
reader's batched queries (customers, suppressions) run on the same connection, which is how a
live run will read the plan it commits.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from conftest import Cli
from test_evaluate_triggers import add_customers, customer, playbook

from engine.clock import iso
from engine.plan.build import make_plan
from engine.plan.planner import in_holdout
from engine.plan.reader import BATCH, suppressions

AS_OF = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
N = 2 * BATCH + 137
MAIL = '  - email: { subject: "Hi {{ customer.name }}", body: "x" }\n'


def test_every_enrollment_streams_in_batches(db: sa.Engine, tmp_path: Path) -> None:
    ids = [f"s{n:05}" for n in range(N)]
    # written in reverse: the plan's order is (customer, occurrence), not the rows' order
    add_customers(db, *(customer(cid, email=f"{cid.upper()}@Example.com", name=f"N{cid}")
                        for cid in reversed(ids)))
    pb = playbook(tmp_path, "segment: {}", more="holdout: 20%\n", actions=MAIL)
    occurrence = iso(AS_OF)  # a segment's occurrence: the time the customer entered
    # suppressions are read per batch: the one suppressed customer sits in the last batch
    last = max(cid for cid in ids if not in_holdout(pb, cid, occurrence))
    assert ids.index(last) >= 2 * BATCH
    with db.begin() as connection:
        connection.execute(sa.insert(suppressions).values(
            email=f"{last}@example.com", reason="bounced", created_at=AS_OF))
    with db.connect() as connection:
        plan = make_plan(connection, [pb], AS_OF, show=3, complete=False)
        (part,) = plan.playbooks
        batches = list(part.batches())
    assert part.entering == N and [e.customer_id for e in part.shown] == ids[:3]
    assert all(len(batch) <= BATCH for batch in batches) and len(batches) >= 3
    every = [e for batch in batches for e in batch]
    assert [e.customer_id for e in every] == ids  # ordered, each once
    assert part.holdout == sum(e.holdout for e in every)  # counted apart, the same answer
    assert 0.15 < part.holdout / N < 0.25
    status = {e.customer_id: e.actions[0].status for e in every if not e.holdout}
    assert status.pop(last) == "suppressed"
    assert set(status.values()) == {"planned"}
    assert part.statuses == {"planned": N - part.holdout - 1, "suppressed": 1}


def test_over_limit_counts_but_enrolls_no_one(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, *(customer(f"o{n}", email=f"o{n}@x.example") for n in range(5)))
    pb = playbook(tmp_path, "segment: {}", more="limits: { max_enrollments: 4 }\n", actions=MAIL)
    with db.connect() as connection:
        (part,) = make_plan(connection, [pb], AS_OF).playbooks
        assert list(part.batches()) == []
    assert part.entering == 5 and part.shown == [] and part.over_limit is not None
    assert "5 would enter, over limits.max_enrollments 4" in part.over_limit


def test_json_lists_all_or_the_first_shown(db: sa.Engine, db_url: str, tmp_path: Path,
                                           cli: Cli) -> None:
    add_customers(db, *(customer(f"j{n:04}", email=f"j{n}@x.example") for n in range(BATCH + 5)))
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pb.yaml").write_text("id: pb\nname: P\ntrigger:\n  segment: {}\nactions:\n" + MAIL,
                                    encoding="utf-8")
    args = ["--db", db_url, "dry-run", str(folder), "--as-of", "2024-05-01", "--json"]
    code, out, err = cli(args)
    assert code == 0, err
    (part,) = json.loads(out)["playbooks"]
    assert part["entering"] == len(part["enrollments"]) == BATCH + 5
    assert part["holdout"] == 0
    keys = [e["actions"][0]["key"] for e in part["enrollments"]]
    assert len(set(keys)) == len(keys)
    code, out, err = cli([*args, "--show", "2"])
    assert code == 0, err
    (part,) = json.loads(out)["playbooks"]
    assert (part["entering"], len(part["enrollments"])) == (BATCH + 5, 2)


def test_json_reports_an_error_past_the_first_batch(db: sa.Engine, db_url: str, tmp_path: Path,
                                                    cli: Cli) -> None:
    """Errors are collected while streaming: one bad customer late in the plan still fails it."""
    rows = [customer(f"e{n:04}", email=f"e{n}@x.example", name=f"N{n}") for n in range(BATCH + 3)]
    rows[-1]["name"] = "Broken\nName"  # a line break cannot go into a subject header
    add_customers(db, *rows)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pb.yaml").write_text("id: pb\nname: P\ntrigger:\n  segment: {}\nactions:\n" + MAIL,
                                    encoding="utf-8")
    code, out, err = cli(["--db", db_url, "dry-run", str(folder), "--as-of", "2024-05-01",
                          "--json"])
    assert code == 1
    assert f"pb: customer e{BATCH + 2:04}, actions[0].email: " in err
    (part,) = json.loads(out)["playbooks"]  # the document is still whole
    assert len(part["enrollments"]) == BATCH + 3


def test_errors_are_the_same_whatever_is_shown(db: sa.Engine, db_url: str, tmp_path: Path,
                                               cli: Cli) -> None:
    """Every enrollment is planned whatever is listed: customers past the ones shown that fail
    to render fail the dry-run, text or JSON, with the same errors, the text the first few."""
    rows = [customer(f"r{n:03}", email=f"r{n}@x.example", name=f"N{n}") for n in range(40)]
    for row in rows[-7:]:
        row["name"] = "Broken\nName"  # a line break cannot go into a subject header
    add_customers(db, *rows)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pb.yaml").write_text("id: pb\nname: P\ntrigger:\n  segment: {}\nactions:\n" + MAIL,
                                    encoding="utf-8")
    args = ["--db", db_url, "dry-run", str(folder), "--as-of", "2024-05-01"]
    expected = [f"pb: customer r{n:03}, actions[0].email: " for n in range(33, 40)]
    found = {}
    for mode in ([], ["--show", "1"], ["--show", "0"], ["--json"], ["--json", "--show", "1"]):
        code, out, err = cli([*args, *mode])
        assert code == 1, mode
        found[tuple(mode)] = err
        lines = [line for line in err.splitlines() if line.startswith("pb: customer ")]
        if "--json" in mode:  # every error, a line each
            assert [line[:len(expected[0])] for line in lines] == expected
            assert len(json.loads(out)["playbooks"][0]["enrollments"]) == (1 if "1" in mode else 40)
        else:  # the first five, folded to 80 columns, and how many more
            assert [line[:len(expected[0])] for line in lines] == expected[:5]
            assert "... and 2 more (dry-run --json lists them all)" in err
            assert max(len(line) for line in err.splitlines()) <= 80
            assert "pb: 40 actions: 33 planned, 7 dead" in out
    assert found[()] == found[("--show", "1")] == found[("--show", "0")]
    assert found[("--json",)] == found[("--json", "--show", "1")]


def test_one_customer_is_over_the_limit_as_everyone_is(db: sa.Engine, db_url: str,
                                                         tmp_path: Path, cli: Cli) -> None:
    """`--customer` counts everyone entering for the limits: the customer's part of an
    over-limit plan is empty, as in the full plan."""
    add_customers(db, *(customer(f"o{n}", email=f"o{n}@x.example") for n in range(5)))
    limits = "limits: { max_enrollments: 4 }\n"
    pb = playbook(tmp_path, "segment: {}", more=limits, actions=MAIL)
    with db.connect() as connection:
        (part,) = make_plan(connection, [pb], AS_OF, customer_id="o1").playbooks
    assert part.entering == 1 and part.shown == [] and part.complete
    assert part.over_limit is not None and part.over_limit.startswith("5 would enter, over")
    code, out, err = cli(["--db", db_url, "dry-run", str(pb.file), "--as-of", "2024-05-01",
                          "--customer", "o1", "--json"])
    assert code == 0, err
    (listed,) = json.loads(out)["playbooks"]
    assert listed["enrollments"] == [] and "5 would enter" in listed["over_limit"]
    code, out, err = cli(["--db", db_url, "dry-run", str(pb.file), "--as-of", "2024-05-01",
                          "--customer", "o1"])
    assert code == 0, err
    assert "5 would enter, over limits.max_enrollments 4" in out and "1 entering" not in out
    within = playbook(tmp_path, "segment: {}", more="limits: { max_enrollments: 5 }\n",
                      actions=MAIL)
    with db.connect() as connection:
        (part,) = make_plan(connection, [within], AS_OF, customer_id="o1").playbooks
    assert part.over_limit is None and [e.customer_id for e in part.shown] == ["o1"]
