"""`retain test --on postgresql://...`: the same test files give the same results on SQLite and
PostgreSQL, each test in a schema of its own that is gone afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PG_URL, Cli, require_postgres

from engine.errors import InputError
from engine.playtest.stores import PostgresStores
from engine.store.scratch import SCRATCH_PREFIX

REPO = Path(__file__).resolve().parent.parent

# Tests of two sample playbooks with mistakes of several kinds (a wrong condition, a template
# typo, a wait too short, a points total) and one that passes.
MISTAKES = """\
playbooks: [winback-30d, purchase-points]
customers:
  - { customer_id: ana, email: ana@example.com, name: Ana, created_at: -200d }
  - { customer_id: ben, email: ben@example.com, name: Ben, created_at: -200d }
  - { customer_id: cat, created_at: -2d }
  - { customer_id: dan, created_at: -2d }
  - { customer_id: eve, created_at: -2d }
  - { customer_id: fay, created_at: -2d }
events:
  - { customer_id: ana, type: purchase, at: -45d, amount: 80 }
  - { customer_id: ben, type: purchase, at: -3d, amount: 5 }
tests:
  - name: wrong entry, wrong clause and a subject typo
    steps:
      - run
      - expect:
          playbook: winback-30d
          entered: [ana, ben]
          not_entered: { ben: email }
          sent:
            - email: { customer: ana, subject: "We miss you, Anna" }
  - name: a wait that is too short
    steps:
      - run
      - advance: 6d
      - run
      - expect:
          playbook: winback-30d
          sent:
            - task: { customer: ana }
  - name: points that are not there
    steps:
      - events:
          - { customer_id: ben, type: purchase, at: -1h, amount: 5 }
      - run
      - expect:
          playbook: purchase-points
          entered: [ben]
          customers: { ben: { points_balance: 20 } }
  - name: passes on both
    steps:
      - run
      - expect:
          playbook: winback-30d
          enrollments: { ana: waiting, ben: none }
"""


def _scratch_schemas() -> set[str]:
    engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            return set(connection.execute(
                sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
                {"p": f"{SCRATCH_PREFIX}%"}).scalars())
    finally:
        engine.dispose()


def _outcomes(out: str) -> list[dict[str, Any]]:
    """Each test's outcome and failures as --json prints them, without the timings."""
    tests = json.loads(out)["tests"]
    return [{key: value for key, value in test.items() if key != "seconds"} for test in tests]


def test_the_same_tests_give_the_same_results_on_sqlite_and_postgresql(
        cli: Cli, tmp_path: Path) -> None:
    require_postgres()
    folder = tmp_path / "playbooks"
    shutil.copytree(REPO / "playbooks", folder)
    (folder / "tests" / "mistakes.test.yaml").write_text(MISTAKES)
    before = _scratch_schemas()

    on_sqlite = cli(["test", str(folder), "--json"])
    on_postgres = cli(["test", str(folder), "--json", "--on", PG_URL])

    assert (on_sqlite[0], on_postgres[0]) == (1, 1)
    assert _outcomes(on_postgres[1]) == _outcomes(on_sqlite[1])
    mistakes = [t for t in _outcomes(on_postgres[1]) if t["file"].endswith("mistakes.test.yaml")]
    assert [t["outcome"] for t in mistakes] == ["failed", "failed", "failed", "passed"]
    assert [f["what"] for f in mistakes[0]["failures"]] == [
        "expect.entered", "expect.not_entered.ben", "expect.sent"]
    samples = [t for t in _outcomes(on_postgres[1]) if t not in mistakes]
    assert samples and all(t["outcome"] == "passed" for t in samples)
    assert _scratch_schemas() - before == set(), "a test's schema was left behind"


def test_the_samples_pass_on_postgresql(cli: Cli) -> None:
    require_postgres()
    code, out, err = cli(["test", str(REPO / "playbooks"), "--on", PG_URL])
    assert (code, err) == (0, ""), out
    assert " passed in " in out and "failed" not in out


def test_a_schema_is_dropped_when_a_test_breaks_and_close_drops_what_is_left() -> None:
    require_postgres()
    stores = PostgresStores(PG_URL)
    try:
        with pytest.raises(RuntimeError), stores.fresh() as engine:
            with engine.connect() as connection:
                assert connection.exec_driver_sql(
                    "SELECT count(*) FROM alembic_version").scalar() == 1
            raise RuntimeError("the test broke")
        assert stores.server.left() == []
        abandoned = stores.fresh()
        abandoned.__enter__()  # a test interrupted: its schema's context never ends
        assert len(stores.server.left()) == 1
    finally:
        stores.close()
    assert [s for s in _scratch_schemas() if stores.server.token in s] == []


def test_a_server_that_cannot_be_reached_is_named_without_its_password(cli: Cli) -> None:
    url = "postgresql://retain:hunter2@127.0.0.1:1/test"
    with pytest.raises(InputError, match=r"retain:\*\*\*@127\.0\.0\.1:1/test"):
        PostgresStores(url)
    code, out, err = cli(["test", str(REPO / "playbooks"), "--on", url])
    assert code == 1
    assert "cannot connect to postgresql://retain:***@127.0.0.1:1/test" in err
    assert "hunter2" not in out + err
