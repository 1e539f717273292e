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

from engine.plan.build import make_plan
from engine.plan.reader import BATCH, suppressions

AS_OF = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
N = 2 * BATCH + 137
MAIL = '  - email: { subject: "Hi {{ customer.name }}", body: "x" }\n'


def test_every_enrollment_streams_in_batches(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, *(customer(f"s{n:05}", email=f"S{n:05}@Example.com", name=f"N{n}")
                        for n in range(N)))
    last = f"s{N - 1:05}@example.com"  # in the last batch: suppressions are read per batch
    with db.begin() as connection:
        connection.execute(sa.insert(suppressions).values(
            email=last, reason="bounced", created_at=AS_OF))
    pb = playbook(tmp_path, "segment: {}", more="holdout: 20%\n", actions=MAIL)
    with db.connect() as connection:
        plan = make_plan(connection, [pb], AS_OF, show=3)
        (part,) = plan.playbooks
        batches = list(part.batches())
    assert part.entering == N and len(part.shown) == 3
    assert all(len(batch) <= BATCH for batch in batches) and len(batches) >= 3
    every = [e for batch in batches for e in batch]
    assert len({e.customer_id for e in every}) == N
    assert part.holdout == sum(e.holdout for e in every)  # counted apart, the same answer
    assert 0.15 < part.holdout / N < 0.25
    status = {e.customer_id: e.actions[0].status for e in every if not e.holdout}
    if f"s{N - 1:05}" in status:
        assert status.pop(f"s{N - 1:05}") == "suppressed"
    assert set(status.values()) == {"planned"}


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
