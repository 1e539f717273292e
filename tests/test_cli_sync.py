"""`retain sync customers|events`, run in-process: exit codes, messages, --rejects, --json."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import pytest
from conftest import Cli

FIXTURES = Path(__file__).parent / "fixtures" / "sync"




@pytest.fixture
def db_arg(sqlite_url: str) -> list[str]:
    return ["--db", sqlite_url]


def test_clean_files_sync_with_exit_0(cli: Cli,
                                      db_url: str) -> None:
    code, out, err = cli(["--db", db_url, "sync", "customers",
                          str(FIXTURES / "customers.csv")])
    assert (code, err) == (0, "")
    assert out == (f"{FIXTURES / 'customers.csv'}: read 4, inserted 4, updated 0, unchanged 0,"
                   " rejected 0\n")
    code, out, _ = cli(["--db", db_url, "sync", "events", str(FIXTURES / "events.jsonl")])
    assert code == 0 and "read 8, inserted 8" in out


def bad_events(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,type,occurred_at,amount\n"
                    "e1,c1,purchase,2024-01-01,10\n"
                    "e2,c1,purchase,2024-01-02,ten\n"
                    "e3,c9,login,2024-01-03,\n"
                    "e4,c1,login,2024-01-04,\n", encoding="utf-8")
    return path


def test_rejected_rows_are_listed_by_line_with_exit_1(db_arg: list[str], tmp_path: Path,
                                                      cli: Cli) -> None:
    cli([*db_arg, "sync", "customers", str(FIXTURES / "customers.csv")])
    path = bad_events(tmp_path)
    code, out, err = cli([*db_arg, "sync", "events", str(path)])
    assert code == 1
    assert out == f"{path}: read 4, inserted 2, duplicates 0, conflicts 0, rejected 2\n"
    assert err.splitlines() == [f"{path}:3: bad amount 'ten': not a number",
                                f"{path}:4: unknown customer 'c9' (sync customers first)"]


def test_rejects_file_in_csv_can_be_fixed_and_synced_again(
        db_arg: list[str], tmp_path: Path, cli: Cli) -> None:
    cli([*db_arg, "sync", "customers", str(FIXTURES / "customers.csv")])
    rejects = tmp_path / "rejects.csv"
    code, out, _ = cli([*db_arg, "sync", "events", str(bad_events(tmp_path)),
                        "--rejects", str(rejects)])
    assert code == 1 and f"rejected rows written to {rejects}" in out
    with rejects.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["event_id", "customer_id", "type", "occurred_at", "amount", "_reason"],
        ["e2", "c1", "purchase", "2024-01-02", "ten", "bad amount 'ten': not a number"],
        ["e3", "c9", "login", "2024-01-03", "", "unknown customer 'c9' (sync customers first)"]]
    fixed = tmp_path / "fixed.csv"
    fixed.write_text(rejects.read_text(encoding="utf-8").replace("ten", "10").replace("c9", "c2"),
                     encoding="utf-8")
    code, out, _ = cli([*db_arg, "sync", "events", str(fixed), "--json"])
    report = json.loads(out)
    assert code == 0
    assert (report["read"], report["inserted"], report["rejected"]) == (2, 2, [])


def test_rejects_file_in_jsonl_keeps_each_row_with_a_reason(
        db_arg: list[str], tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "customers.jsonl"
    path.write_text('{"customer_id": "c1", "timezone": "Mars/Olympus", "seats": 3}\n'
                    "not json\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    code, _, err = cli([*db_arg, "sync", "customers", str(path), "--rejects", str(rejects)])
    assert code == 1 and f"{path}:2: not valid JSON: Expecting value at column 1" in err
    assert [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()] == [
        {"customer_id": "c1", "timezone": "Mars/Olympus", "seats": 3,
         "_reason": "unknown time zone 'Mars/Olympus'"},
        {"_raw": "not json", "_reason": "not valid JSON: Expecting value at column 1"}]


def test_json_report(db_arg: list[str], tmp_path: Path,
                     cli: Cli) -> None:
    path = tmp_path / "c.csv"
    path.write_text("customer_id,birthday\nc1,1990-01-01\nc2,someday\n", encoding="utf-8")
    code, out, err = cli([*db_arg, "sync", "customers", str(path), "--json"])
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "kind": "customers", "source": str(path), "read": 2, "inserted": 1, "updated": 0,
        "unchanged": 0, "duplicates": 0, "conflicts": [], "warnings": [], "rejected": [{
            "line": 3, "reason": "bad birthday 'someday': not a date (YYYY-MM-DD)",
            "raw": {"customer_id": "c2", "birthday": "someday"}}]}


def test_long_listings_are_capped(db_arg: list[str], tmp_path: Path,
                                  cli: Cli) -> None:
    path = tmp_path / "c.csv"
    path.write_text("customer_id,email\n" + "".join(f"c{n},nobody\n" for n in range(60)),
                    encoding="utf-8")
    code, _, err = cli([*db_arg, "sync", "customers", str(path)])
    lines = err.splitlines()
    assert code == 1 and len(lines) == 51
    assert lines[0] == f"{path}:2: bad email 'nobody': not an email address"
    assert lines[-1] == "... and 10 more rejected row(s) (use --rejects FILE to get them all)"


def test_a_missing_file_is_exit_1_and_creates_no_database(
        tmp_path: Path, cli: Cli) -> None:
    database = tmp_path / "retain.db"
    missing = tmp_path / "nope.csv"
    code, out, err = cli(["--db", f"sqlite:///{database}", "sync", "events", str(missing)])
    assert (code, out) == (1, "")
    assert err.strip() == f"{missing}: no such file"
    assert not database.exists()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("data.txt", "x\n", "unknown file format"),
    ("empty.csv", "", "empty file; a CSV file starts with a header line"),
    ("noid.csv", "name\nAda\n", ":1: the header lacks the column(s) customer_id"),
])
def test_an_unreadable_file_is_exit_1_with_a_clear_message(
        db_arg: list[str], tmp_path: Path, cli: Cli,
        name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    code, _, err = cli([*db_arg, "sync", "customers", str(path)])
    assert code == 1 and message in err and str(path) in err


def test_format_option_overrides_the_file_name(db_arg: list[str], tmp_path: Path,
                                               cli: Cli) -> None:
    path = tmp_path / "customers.export"
    path.write_bytes((FIXTURES / "customers.jsonl").read_bytes())
    code, out, _ = cli([*db_arg, "sync", "customers", str(path), "--format", "jsonl"])
    assert code == 0 and "inserted 4" in out
    code, _, err = cli([*db_arg, "sync", "customers", str(path), "--format", "xml"])
    assert code == 2 and "xml" in err


def test_a_conflict_is_listed_with_both_lines_and_exit_1(db_url: str, tmp_path: Path,
                                                          cli: Cli) -> None:
    cli(["--db", db_url, "sync", "customers", str(FIXTURES / "customers.csv")])
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,type,occurred_at,amount\n"
                    "e1,c1,purchase,2024-01-01,10\n"
                    "e1,c1,purchase,2024-01-01,10\n"
                    "e1,c1,purchase,2024-01-01,15\n", encoding="utf-8")
    rejects = tmp_path / "rejects.csv"
    code, out, err = cli(["--db", db_url, "sync", "events", str(path), "--rejects", str(rejects)])
    assert code == 1
    assert out.splitlines()[0] == f"{path}: read 3, inserted 1, duplicates 1, conflicts 1, rejected 0"
    assert err.splitlines() == [f"{path}:4: conflict: event_id 'e1' has other contents at {path}:2"
                                " (amount 10.0 there, 15.0 here)"]
    assert "15" in rejects.read_text(encoding="utf-8").splitlines()[1]


def test_suppressions_load_lower_cased_with_bad_rows_by_line(db_url: str, tmp_path: Path,
                                                             cli: Cli) -> None:
    path = tmp_path / "suppressed.csv"
    path.write_text("email,reason,suppressed_at,list\n"
                    "Ada@Example.com,bounced,2024-03-01T10:00:00+01:00,news\n"
                    "bob@example.com,,,\n"
                    "not-an-address,unsubscribed,yesterday,\n"
                    "ADA@example.COM,bounced,2024-03-01T09:00:00Z,\n", encoding="utf-8")
    code, out, err = cli(["--db", db_url, "sync", "suppressions", str(path), "--json"])
    report = json.loads(out)
    assert code == 1 and err == ""
    assert [report[k] for k in ("read", "inserted", "updated", "unchanged")] == [4, 2, 0, 1]
    assert report["rejected"][0]["line"] == 4
    assert report["rejected"][0]["reason"] == ("bad email 'not-an-address': not an email address;"
                                               " bad suppressed_at 'yesterday': not an ISO 8601 time")
    import sqlalchemy as sa

    from engine.store.open import open_store

    engine = open_store(db_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT email, reason, created_at FROM suppressions ORDER BY email")).all()
    engine.dispose()
    assert [tuple(r[:2]) for r in rows] == [("ada@example.com", "bounced"),
                                            ("bob@example.com", "unsubscribed")]
    assert str(rows[0][2]).startswith("2024-03-01 09:00:00")
    again = tmp_path / "again.jsonl"
    again.write_text('{"email": "BOB@example.com", "reason": "complained"}\n'
                     '{"email": "ada@example.com"}\n', encoding="utf-8")
    code, out, _ = cli(["--db", db_url, "sync", "suppressions", str(again)])
    assert (code, out) == (0, f"{again}: read 2, inserted 0, updated 1, unchanged 1,"
                              " rejected 0\n")


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _slice(source: str, lines: int, target: Path) -> Path:
    """The first `lines` lines (header included) of a real data set, gzip-compressed again."""
    path = DATA / source
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real dataset {path} is absent; CI must run the dataset tests")
        pytest.skip(f"real dataset {path} is absent")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        head = [next(handle) for _ in range(lines)]
    with gzip.open(target, "wt", encoding="utf-8") as handle:
        handle.writelines(head)
    return target


@pytest.mark.parametrize(("dataset", "source"), [
    ("online-retail", "online_retail.csv.gz"),
    ("online-retail-ii", "online_retail_ii_2009_2010.csv.gz")])
def test_dataset_option_loads_a_public_data_set_through_its_mapping(
        db_url: str, tmp_path: Path, cli: Cli, dataset: str, source: str) -> None:
    from engine.sync.datasets import dataset_rows

    path = _slice(source, 3000, tmp_path / source)
    customers, events = dataset_rows(dataset.replace("-", "_"), path)
    code, out, err = cli(["--db", db_url, "sync", "customers", "--dataset", dataset, str(path),
                          "--json"])
    assert (code, err) == (0, "")
    assert json.loads(out)["inserted"] == len(customers) > 50
    code, out, err = cli(["--db", db_url, "sync", "events", "--dataset", dataset, str(path)])
    assert (code, err) == (0, "")
    assert out.startswith(f"{path}: read {len(events)}, inserted {len(events)}, duplicates 0,")
    assert any(row["type"] == "return" for _, row in events)  # cancellations load as returns


def test_dataset_option_loads_all_of_cdnow(sqlite_url: str, cli: Cli) -> None:
    path = DATA / "cdnow_master.csv.gz"
    if not path.is_file():
        pytest.skip(f"real dataset {path} is absent")
    code, out, _ = cli(["--db", sqlite_url, "sync", "customers", "--dataset", "cdnow", str(path)])
    assert (code, out) == (0, f"{path}: read 23570, inserted 23570, updated 0, unchanged 0,"
                              " rejected 0\n")
    code, out, _ = cli(["--db", sqlite_url, "sync", "events", "--dataset", "cdnow", str(path)])
    assert (code, out) == (0, f"{path}: read 69659, inserted 69659, duplicates 0, conflicts 0,"
                              " rejected 0\n")


def test_dataset_option_names_the_known_sets(sqlite_url: str, tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a\n1\n", encoding="utf-8")
    code, _, err = cli(["--db", sqlite_url, "sync", "events", "--dataset", "iris", str(path)])
    assert code == 2 and "online-retail" in err and "cdnow" in err


def test_a_synced_suppression_reaches_the_customer_view(db_url: str, tmp_path: Path,
                                                        cli: Cli) -> None:
    cli(["--db", db_url, "sync", "customers", str(FIXTURES / "customers.csv")])
    path = tmp_path / "bounces.jsonl"
    path.write_text('{"email": "ADA@example.COM", "reason": "bounced",'
                    ' "suppressed_at": "2024-05-01T00:00:00Z"}\n', encoding="utf-8")
    assert cli(["--db", db_url, "sync", "suppressions", str(path)])[0] == 0
    code, out, _ = cli(["--db", db_url, "customer", "show", "c1", "--json"])
    assert code == 0
    suppressed = json.loads(out)["suppressed"]
    assert (suppressed["email"], suppressed["reason"]) == ("ada@example.com", "bounced")
