"""`retain demo`: the shipped demo data loads on both databases, idempotently, and is reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Cli

from engine.demo.build import CUSTOMERS_FILE, DEMO_DIR, EVENTS_FILE, build_demo_files, load_demo
from engine.store.tables import Customer, Event

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        customers = connection.execute(sa.select(sa.func.count()).select_from(Customer)).scalar()
        events = connection.execute(sa.select(sa.func.count()).select_from(Event)).scalar()
    return customers or 0, events or 0


def test_demo_loads_and_reloading_changes_nothing(db: sa.Engine) -> None:
    customers, events = load_demo(db)
    assert (customers.inserted, customers.rejected) == (1500, [])
    assert events.rejected == [] and events.inserted > 10_000
    before = counts(db)
    again_customers, again_events = load_demo(db)
    assert (again_events.inserted, again_events.duplicates) == (0, events.inserted)
    assert counts(db) == before
    with db.connect() as connection:
        with_email = connection.execute(sa.select(sa.func.count()).where(
            Customer.email.is_not(None), Customer.purchase_count > 0)).scalar()
    assert with_email and with_email > 1000


def test_demo_command_summarises_as_json(tmp_path: Path, cli: Cli) -> None:
    code, out, _ = cli(["--db", f"sqlite:///{tmp_path / 'demo.db'}", "demo", "--json"])
    assert code == 0
    summary = json.loads(out)
    assert summary["customers"] == 1500
    assert set(summary["events"]) == {"purchase", "return", "login", "feedback"}
    assert len(summary["playbooks"]) == 7
    assert summary["latest_event"].startswith("2011-12-09")


def test_shipped_files_regenerate_byte_for_byte(tmp_path: Path) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"raw datasets not found at {SHARED_DATA}")
    build_demo_files(SHARED_DATA, tmp_path)
    for name in (CUSTOMERS_FILE, EVENTS_FILE):
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), name
