"""`retain report nps` on real SQLite and PostgreSQL.

None of the real datasets has feedback or survey scores (shared/data/README.md), so every score
here is MADE UP: a small hand-written set whose every number is worked out in the comments, and a
seeded random set checked against an independent pandas computation.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import Cli

from engine.reports import nps
from engine.reports.periods import PeriodKind
from engine.store.open import open_store
from engine.sync.ingest import ingest_customers, ingest_events

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def load(engine: sa.Engine, customer_ids: list[str], happenings: list[dict[str, Any]]) -> None:
    """Customers then events, through the same ingest path as `retain sync`."""
    ingest_customers(engine, list(enumerate(({"customer_id": c, "created_at": "2023-12-01"}
                                             for c in customer_ids), 2)), "test", now=NOW)
    ingest_events(engine, list(enumerate(happenings, 2)), "test")


def answer(event_id: str, customer_id: str, when: str, score: float | None,
           kind: str = "feedback") -> dict[str, Any]:
    properties: dict[str, Any] = {"comment": "made up"}
    if score is not None:
        properties["score"] = score
    return {"event_id": event_id, "customer_id": customer_id, "type": kind,
            "occurred_at": when, "properties": properties}


def report(engine: sa.Engine, start: str | None = None, end: str | None = None,
           kind: PeriodKind = PeriodKind.MONTH, timezone: str | None = None,
           now: str | None = None) -> dict[str, Any]:
    with engine.connect() as connection:
        if timezone and connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SET TIME ZONE '{timezone}'")
        result = nps.build(connection, None if start is None else utc(start),
                           None if end is None else utc(end), kind,
                           now=None if now is None else utc(now))
    return result.to_json()


def trend(got: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(p["start"][:10], p["responses"], p["promoters"], p["passives"], p["detractors"],
             p["nps"], p["partial"]) for p in got["periods"]]


# Made-up answers. Valid: 10, 9 (promoters), 7, 8 (passives), 6, 0, 6.5 (detractors).
SURVEY = [
    answer("f1", "a", "2024-01-05T09:00:00Z", 10),
    answer("f2", "b", "2024-01-10T00:00:00Z", 9),  # exactly --from in the window test
    answer("f3", "c", "2024-01-20T00:00:00Z", 6),
    answer("f4", "a", "2024-01-25T00:00:00Z", 7),  # a answers twice in January: both count
    answer("f5", "b", "2024-03-03T00:00:00Z", 0),
    answer("f6", "c", "2024-03-04T00:00:00Z", 8),  # exactly --to: outside
    answer("f7", "a", "2024-03-05T00:00:00Z", 6.5),  # below 7: a detractor
    # Not responses: no score, out of 0-10, another event type with a score.
    answer("x1", "a", "2024-01-15T00:00:00Z", None),
    answer("x2", "b", "2024-01-16T00:00:00Z", 11),
    answer("x3", "c", "2024-03-06T00:00:00Z", -1),
    answer("x4", "c", "2024-01-07T00:00:00Z", 10, kind="review"),
    {"event_id": "v1", "customer_id": "a", "type": "page_view",
     "occurred_at": "2024-03-10T00:00:00Z"},  # the latest event: March has ended all the same
]


def test_every_number_of_a_small_survey(db: sa.Engine) -> None:
    """7 responses: 2 promoters, 2 passives, 3 detractors -> NPS 100 x (2 - 3) / 7.
    January: 10, 9, 6, 7 -> 100 x (2 - 1) / 4 = 25; February: none; March: 0, 8, 6.5 -> -66.7.
    March has ended (now is the clock), so it is complete although the latest event is on
    03-10: the report says so in a note instead of cutting March there."""
    load(db, ["a", "b", "c"], SURVEY)
    got = report(db)
    assert {k: got[k] for k in ("nps", "responses", "promoters", "passives", "detractors")} == {
        "nps": pytest.approx(-14.2857), "responses": 7, "promoters": 2, "passives": 2,
        "detractors": 3}
    assert (got["from"], got["to"], got["period"]) == (None, None, "month")
    assert trend(got) == [
        ("2024-01-01", 4, 2, 1, 1, 25.0, False),
        ("2024-02-01", 0, 0, 0, 0, None, False),
        ("2024-03-01", 3, 0, 1, 2, pytest.approx(-66.6667), False),
    ]
    assert [(p["start"], p["end"]) for p in got["periods"]][0] == (
        "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z")
    assert got["periods"][-1]["end"] == "2024-04-01T00:00:00Z"
    assert got["latest_event"] == "2024-03-10T00:00:00Z"
    assert got["notes"] == ["latest event 2024-03-10, 22 days before 2024-03 ends: feedback "
                            "after it is not in the data"]


def test_a_period_running_past_as_of_is_partial(db: sa.Engine) -> None:
    """As of 2024-03-05T12:00, f7 (03-05) is seen and x3/v1 are not; March runs past now, so
    it is partial and cut there; the latest event is hours old, so there is no note."""
    load(db, ["a", "b", "c"], SURVEY)
    got = report(db, now="2024-03-05T12:00:00")
    assert trend(got)[-1] == ("2024-03-01", 3, 0, 1, 2, pytest.approx(-66.6667), True)
    assert (got["as_of"], got["latest_event"], got["notes"]) == (
        "2024-03-05T12:00:00Z", "2024-03-05T00:00:00Z", [])
    earlier = report(db, now="2024-03-04T00:00:00")  # f6 at that instant is not seen yet
    assert trend(earlier)[-1] == ("2024-03-01", 1, 0, 0, 1, -100.0, True)


def test_the_window_includes_from_excludes_to_and_marks_cut_periods_partial(
        db: sa.Engine) -> None:
    """[2024-01-10, 2024-03-04): 9, 6, 7 in January (NPS 0) and 0 in March (-100); January
    starts before --from and March ends after --to, so both are partial."""
    load(db, ["a", "b", "c"], SURVEY)
    got = report(db, "2024-01-10", "2024-03-04")
    assert (got["responses"], got["promoters"], got["passives"], got["detractors"],
            got["nps"]) == (4, 1, 1, 2, -25.0)
    assert (got["from"], got["to"]) == ("2024-01-10T00:00:00Z", "2024-03-04T00:00:00Z")
    assert trend(got) == [
        ("2024-01-01", 3, 1, 1, 1, 0.0, True),
        ("2024-02-01", 0, 0, 0, 0, None, False),
        ("2024-03-01", 1, 0, 0, 1, -100.0, True),
    ]


def test_weeks_and_quarters(db: sa.Engine) -> None:
    """ISO weeks from Monday 2024-01-01 to the week of 2024-03-05 (Monday 03-04): 10 weeks, all
    ended. One quarter holds everything, ended too; as of 2024-03-08 the last week and the
    quarter run past now and are partial."""
    load(db, ["a", "b", "c"], SURVEY)
    weeks = report(db, kind=PeriodKind.WEEK)
    assert weeks["period"] == "week"
    assert len(weeks["periods"]) == 10
    assert weeks["periods"][0]["start"] == "2024-01-01T00:00:00Z"
    assert weeks["periods"][0]["end"] == "2024-01-08T00:00:00Z"
    assert weeks["periods"][-1]["start"] == "2024-03-04T00:00:00Z"
    # f5 (Sunday 03-03) closes the week of 02-26; f6 and f7 open the week of 03-04.
    assert [p["responses"] for p in weeks["periods"]] == [1, 1, 1, 1, 0, 0, 0, 0, 1, 2]
    assert [p["partial"] for p in weeks["periods"]] == [False] * 10
    assert weeks["notes"] == []  # the last week ends a day after the latest event
    quarters = report(db, kind=PeriodKind.QUARTER)
    assert trend(quarters) == [("2024-01-01", 7, 2, 2, 3, pytest.approx(-14.2857), False)]
    assert quarters["notes"][0].startswith("latest event 2024-03-10, 22 days before 2024-Q1")
    weeks = report(db, kind=PeriodKind.WEEK, now="2024-03-08")
    assert [p["partial"] for p in weeks["periods"]] == [False] * 9 + [True]
    quarters = report(db, kind=PeriodKind.QUARTER, now="2024-03-08")
    assert [p["partial"] for p in quarters["periods"]] == [True]


def test_periods_are_utc_whatever_the_session_time_zone(db: sa.Engine) -> None:
    """An answer at 2024-02-01T02:00Z belongs to February even for a session in New York."""
    load(db, ["a"], [answer("f1", "a", "2024-02-01T02:00:00Z", 10),
                     answer("f2", "a", "2024-01-31T12:00:00Z", 0)])
    got = report(db, timezone="America/New_York")
    assert [(p["start"][:7], p["responses"], p["nps"]) for p in got["periods"]] == [
        ("2024-01", 1, -100.0), ("2024-02", 1, 100.0)]


def test_no_feedback_gives_no_nps_and_no_crash(db: sa.Engine) -> None:
    load(db, ["a"], [answer("x1", "a", "2024-01-15T00:00:00Z", None)])
    assert report(db, now="2024-06-01") == {
        "nps": None, "responses": 0, "promoters": 0, "passives": 0, "detractors": 0,
        "from": None, "to": None, "as_of": "2024-06-01T00:00:00Z",
        "latest_event": "2024-01-15T00:00:00Z", "notes": [], "period": "month", "periods": []}
    # With both bounds the periods are known even without answers. Both have ended: complete,
    # with a note that the latest event (01-15) is long before they end.
    got = report(db, "2024-01-01", "2024-03-01")
    assert trend(got) == [("2024-01-01", 0, 0, 0, 0, None, False),
                          ("2024-02-01", 0, 0, 0, 0, None, False)]
    assert got["notes"] == ["latest event 2024-01-15, 17 days before 2024-01 ends (and 1 "
                            "later): feedback after it is not in the data"]


# --- made-up random scores against pandas --------------------------------------------------------


def random_survey(seed: int = 7) -> list[dict[str, Any]]:
    """~600 made-up answers from 80 customers over 2023, a tenth of them not valid NPS answers."""
    rng = random.Random(seed)
    start = datetime(2023, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(600):
        when = start + timedelta(seconds=rng.randrange(365 * 86400))
        roll = rng.random()
        score: float | None = rng.randint(0, 10)
        if roll < 0.04:
            score = None
        elif roll < 0.08:
            score = rng.choice([-3, 11, 10.5, 100])
        elif roll < 0.10:
            score = rng.randint(0, 20) / 2  # fractional, some above 10
        rows.append(answer(f"r{i}", f"c{rng.randrange(80)}",
                           when.isoformat().replace("+00:00", "Z"), score))
    return rows


def pandas_nps(rows: list[dict[str, Any]], freq: str, start: str | None,
               end: str | None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every valid answer counts; groups by the 9 / 7 thresholds; periods by pandas' calendar."""
    df = pd.DataFrame({"at": pd.to_datetime([r["occurred_at"] for r in rows], utc=True),
                       "score": [r["properties"].get("score") for r in rows]})
    df = df[df["score"].notna() & df["score"].between(0, 10)]
    if start:
        df = df[df["at"] >= pd.Timestamp(start, tz="UTC")]
    if end:
        df = df[df["at"] < pd.Timestamp(end, tz="UTC")]
    df = df.assign(promoter=df["score"] >= 9, passive=(df["score"] >= 7) & (df["score"] < 9),
                   detractor=df["score"] < 7,
                   period=df["at"].dt.tz_localize(None).dt.to_period(freq).dt.start_time)
    per = df.groupby("period").agg(responses=("score", "size"), promoters=("promoter", "sum"),
                                   passives=("passive", "sum"), detractors=("detractor", "sum"))
    per["nps"] = 100 * (per["promoters"] - per["detractors"]) / per["responses"]
    total = {"responses": len(df), "promoters": int(df["promoter"].sum()),
             "passives": int(df["passive"].sum()), "detractors": int(df["detractor"].sum()),
             "nps": 100 * (df["promoter"].sum() - df["detractor"].sum()) / len(df)}
    return total, per


@pytest.mark.parametrize(("kind", "freq", "start", "end"), [
    (PeriodKind.MONTH, "M", None, None),
    (PeriodKind.WEEK, "W-SUN", None, None),
    (PeriodKind.QUARTER, "Q", "2023-02-15", "2023-11-20"),
])
def test_random_made_up_scores_match_pandas(db: sa.Engine, kind: PeriodKind, freq: str,
                                            start: str | None, end: str | None) -> None:
    rows = random_survey()
    load(db, [f"c{i}" for i in range(80)], rows)
    got = report(db, start, end, kind)
    total, per = pandas_nps(rows, freq, start, end)
    assert {k: got[k] for k in total} == pytest.approx(total, abs=1e-4)
    # pandas lists only periods with answers; the report lists every period, empty ones too.
    found = {p["start"][:10]: p for p in got["periods"] if p["responses"]}
    assert sorted(found) == [f"{day:%Y-%m-%d}" for day in per.index]
    for day, row in per.iterrows():
        mine = found[f"{day:%Y-%m-%d}"]
        assert (mine["responses"], mine["promoters"], mine["passives"], mine["detractors"]) == (
            row["responses"], row["promoters"], row["passives"], row["detractors"])
        assert mine["nps"] == pytest.approx(row["nps"], abs=1e-4)
    assert sum(p["responses"] for p in got["periods"]) == total["responses"]


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def survey(db: sa.Engine, db_url: str) -> str:
    load(db, ["a", "b", "c"], SURVEY)
    return db_url


def test_json_shape(cli: Cli, survey: str) -> None:
    code, out, err = cli(["--db", survey, "report", "nps", "--json", "--period", "quarter"])
    assert (code, err) == (0, "")
    got = json.loads(out)
    assert {"nps", "responses", "promoters", "passives", "detractors", "periods"} <= set(got)
    assert got["responses"] == 7
    assert set(got["periods"][0]) == {"start", "end", "responses", "promoters", "passives",
                                      "detractors", "nps", "partial"}


def test_text_shows_the_score_and_the_trend(cli: Cli, survey: str) -> None:
    code, out, _err = cli(["--db", survey, "report", "nps", "--from", "2024-01-01",
                           "--as-of", "2024-03-20"])
    assert code == 0
    for text in ("-14.3", "promoters (9-10)", "2 (28.6%)", "2024-01", "+25.0", "2024-03 *"):
        assert text in out
    code, out, _err = cli(["--db", survey, "report", "nps"])
    assert code == 0 and "2024-03 *" not in out
    assert "Note: latest event 2024-03-10, 22 days before 2024-03 ends" in " ".join(out.split())


def test_html_writes_a_page_with_charts(cli: Cli, survey: str, tmp_path: Path) -> None:
    page = tmp_path / "nps.html"
    code, _out, err = cli(["--db", survey, "report", "nps", "--html", str(page)])
    assert code == 0 and f"Wrote {page}" in err
    text = page.read_text(encoding="utf-8")
    assert text.count('img class="chart"') == 2
    assert "NPS per month" in text


@pytest.mark.parametrize("args", [["--from", "yesterday"], ["--to", "2024-02-30"],
                                  ["--from", "2024-02-01", "--to", "2024-01-01"],
                                  ["--period", "year"]])
def test_bad_options_are_usage_errors(cli: Cli, survey: str, args: list[str]) -> None:
    code, _out, err = cli(["--db", survey, "report", "nps", *args])
    assert code == 2
    assert "Invalid value" in err


def test_an_empty_database_says_there_is_no_feedback(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_store(url).dispose()
    code, out, _err = cli(["--db", url, "report", "nps", "--html", str(tmp_path / "n.html")])
    assert code == 0
    assert "No feedback with a 0-10 score" in out
    assert "No feedback with a 0-10 score" in (tmp_path / "n.html").read_text(encoding="utf-8")
    code, out, _err = cli(["--db", url, "report", "nps", "--json"])
    assert code == 0 and json.loads(out)["responses"] == 0
