"""Report text in a terminal: 80 columns unless `--wide`, and an engine that knows no terminal.

The reports run on the demo database (real Online Retail purchases with generated feedback, 14
months: wide enough that every report has columns to drop), plus enrollments and actions with
many statuses for the playbook report. A line over 80 columns, a cell cut with an ellipsis or a
table whose right border was cropped fails the test; `--wide` must bring back the columns the
80-column view leaves out.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REPO, Cli
from outbox_support import insert_actions

from cli import render
from engine.store.open import open_store
from engine.store.tables import Enrollment

PLAYBOOKS = REPO / "playbooks"
STATUSES = ["planned", "sent", "retrying", "suppressed", "deferred", "dead"]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo database (after its live run), with 300 more enrollments of one playbook (whose
    live run was over its limit) and actions in six statuses."""
    folder = tmp_path_factory.mktemp("terminal")
    url = f"sqlite:///{folder / 'demo.db'}"
    subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "--db", url,
                    "demo"], cwd=REPO, check=True, capture_output=True)
    engine = open_store(url)
    with engine.begin() as connection:
        ids = connection.execute(sa.text("SELECT customer_id FROM customers ORDER BY customer_id "
                                         "LIMIT 300")).scalars().all()
        entered = datetime(2011, 6, 1, tzinfo=UTC)
        connection.execute(sa.insert(Enrollment.__table__), [  # type: ignore[arg-type]
            {"id": 100_000 + i, "playbook_id": "winback-30d", "version": "v1", "customer_id": c,
             "occurrence_key": "k", "holdout": i % 10 == 0, "status": "completed",
             "entered_at": entered + timedelta(hours=i)} for i, c in enumerate(ids)])
        insert_actions(connection, [
            {"enrollment_id": 100_000 + i, "playbook_id": "winback-30d", "customer_id": c,
             "connector": "email",
             "status": STATUSES[i % len(STATUSES)], "idempotency_key": f"a{i}",
             "created_at": entered, "payload": {}} for i, c in enumerate(ids)])
    engine.dispose()
    return url


REPORTS: dict[str, list[str]] = {
    "retention": [],
    "value": [],
    "rfm": [],
    "nps": [],
    "playbooks": ["--playbooks", str(PLAYBOOKS)],
}
DROPPED: dict[str, list[str]] = {  # headers only --wide shows
    "retention": ["churn %", "M9", "M13"],
    "value": ["revenue range"],
    "rfm": ["R, F", "avg purchases", "avg revenue"],
    "nps": [],
    "playbooks": [],
}


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's console at 80 columns, whatever runs the tests."""
    monkeypatch.setattr(render.console, "width", 80)
    yield


@pytest.mark.parametrize("name", list(REPORTS))
def test_text_fits_80_columns_and_nothing_is_cut(cli: Cli, demo_url: str, narrow: None,
                                                 name: str) -> None:
    code, out, err = cli(["--db", demo_url, "report", name, *REPORTS[name]])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) > 10
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "…" not in out  # cells fold, never end in an ellipsis
    for line in lines:  # a table row that lost its right border was cropped
        if line.startswith(("│", "┃")):
            assert line.rstrip().endswith(("│", "┃")), line
    for header in DROPPED[name]:
        assert f" {header} " not in out, header


@pytest.mark.parametrize("name", [n for n, dropped in DROPPED.items() if dropped])
def test_wide_shows_the_dropped_columns(cli: Cli, demo_url: str, narrow: None,
                                        name: str) -> None:
    code, out, err = cli(["--db", demo_url, "report", name, "--wide", *REPORTS[name]])
    assert code == 0, err
    for header in DROPPED[name]:
        assert f" {header} " in out, header
    if name != "value":  # the demo's tier ranges would fit; retention and RFM do not
        assert max(len(line) for line in out.splitlines()) > 80
    assert "…" not in out


def test_playbook_actions_list_one_status_a_line(cli: Cli, demo_url: str,
                                                 narrow: None) -> None:
    """Six statuses as columns would fold every header; one row per status stays readable."""
    code, out, err = cli(["--db", demo_url, "report", "playbooks", "--playbooks",
                          str(PLAYBOOKS)])
    assert code == 0, err
    cells = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in out.splitlines()]
    rows = [row for row in cells if row[:2] == ["winback-30d", "email"]]
    assert rows == [["winback-30d", "email", status, "50"] for status in sorted(STATUSES)]


def test_engine_reports_import_no_terminal_or_charting_library(demo_url: str,
                                                               tmp_path: Path) -> None:
    """Every engine.reports module imported and every report built (JSON and table data) pulls
    in neither rich, typer nor matplotlib; drawing an HTML page is what loads matplotlib."""
    code = f"""
import importlib, pkgutil, sys
import engine.reports
for info in pkgutil.iter_modules(engine.reports.__path__):
    importlib.import_module("engine.reports." + info.name)
from engine.reports import nps, retention, rfm, value, playbooks
from engine.store.open import open_reader
with open_reader({demo_url!r}).connect() as c:
    results = [retention.build(c), value.build(c), rfm.build(c), nps.build(c),
               playbooks.build(c, [])]
for r in results:
    r.to_json(), r.sheets()
print(sorted({{'rich', 'typer', 'click', 'matplotlib'}} & set(sys.modules)))
from engine.reports.html import HtmlPage
page = HtmlPage("t")
results[0].html(page)
print('matplotlib' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split("\n")
    assert out[:2] == ["[]", "True"]
