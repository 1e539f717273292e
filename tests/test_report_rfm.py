"""RFM (DESIGN section 1) on real SQLite and PostgreSQL: scores, segments, the kept facts, the CLI.

The expected scores here never come from Retain's code: small hand-made sets spell every score
out, the segment table below is copied from DESIGN section 1, and a sample of the real Online
Retail data is checked against NTILE implemented by its SQL definition in numpy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import PG_URL, Cli, require_postgres

from engine.reports import rfm
from engine.store.facts import customers
from engine.store.open import normalize_url, open_store
from engine.sync.datasets import DATASETS, load_dataset
from engine.sync.facts import refresh_rfm
from engine.sync.ingest import ingest_customers, ingest_events

NOW = datetime(2025, 1, 1, tzinfo=UTC)
BASE = datetime(2024, 1, 1, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# DESIGN section 1, word for word: "R 1-2: F 1-2 hibernating, F 3-4 at_risk, F 5 cant_lose; R 3:
# F 1-2 about_to_sleep, F 3 need_attention, F 4-5 loyal; R 4: F 1 promising, F 2-3
# potential_loyalist, F 4-5 loyal; R 5: F 1 new_customer, F 2-3 potential_loyalist, F 4-5 champion."
SEGMENT = {
    **{(r, f): name for r in (1, 2) for f, name in [
        (1, "hibernating"), (2, "hibernating"), (3, "at_risk"), (4, "at_risk"), (5, "cant_lose")]},
    **{(3, f): name for f, name in [
        (1, "about_to_sleep"), (2, "about_to_sleep"), (3, "need_attention"), (4, "loyal"),
        (5, "loyal")]},
    **{(4, f): name for f, name in [
        (1, "promising"), (2, "potential_loyalist"), (3, "potential_loyalist"), (4, "loyal"),
        (5, "loyal")]},
    **{(5, f): name for f, name in [
        (1, "new_customer"), (2, "potential_loyalist"), (3, "potential_loyalist"),
        (4, "champion"), (5, "champion")]},
}


def day(n: float) -> datetime:
    return BASE + timedelta(days=n)


# --- a scratch database per backend, shared by the module: each test rolls its data back -------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def scratch(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """A migrated engine per backend for the many small cases (a fresh schema each costs ~1 s)."""
    if request.param == "sqlite":
        engine = open_store(f"sqlite:///{tmp_path_factory.mktemp('rfm') / 'retain.db'}")
        yield engine
        engine.dispose()
        return
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(PG_URL))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"create schema {schema}")
    engine = open_store(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.exec_driver_sql(f"drop schema {schema} cascade")
        admin.dispose()


@pytest.fixture
def conn(scratch: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that is rolled back: the next test starts empty."""
    with scratch.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


def put(connection: sa.Connection, rows: list[tuple[str, float | None, int, float]]) -> None:
    """Customers with their purchase facts as sync keeps them: (id, last purchase day, count,
    spent); day None and count 0 for a customer without purchases."""
    connection.execute(sa.insert(customers), [
        {"customer_id": cid, "tags": [], "attributes": {}, "created_at": BASE,
         "last_purchase_at": None if last is None else day(last), "purchase_count": count,
         "total_spent": spent, "points_balance": 0} for cid, last, count, spent in rows])


def scores(connection: sa.Connection) -> dict[str, tuple[str | None, str | None]]:
    """Refresh RFM and read back customer_id -> (rfm_score, rfm_segment); the report must agree."""
    refresh_rfm(connection)
    kept = {cid: (score, segment) for cid, score, segment in connection.execute(
        sa.select(customers.c.customer_id, customers.c.rfm_score, customers.c.rfm_segment))}
    reported = rfm.build(connection).to_json()["customers"]
    assert {c["customer_id"]: (c["score"], c["segment"]) for c in reported} == {
        cid: kept[cid] for cid, (score, _) in kept.items() if score is not None}
    for c in reported:
        assert c["score"] == f"{c['r']}{c['f']}{c['m']}"
    return kept


# --- hand-made data with known scores --------------------------------------------------------------


def test_ten_customers_with_distinct_values(conn: sa.Connection) -> None:
    # n = 10: NTILE(5) puts 2 customers in each score, in ascending order of the value.
    # R: days 30..39 in id order        -> c0 c1 = 1, c2 c3 = 2, ..., c8 c9 = 5
    # F: counts 10..1 in id order       -> c9 c8 = 1, c7 c6 = 2, c5 c4 = 3, c3 c2 = 4, c1 c0 = 5
    # M: ascending c3 10, c1 20, c5 30, c8 40, c0 50, c7 60, c4 70, c9 80, c2 90, c6 100
    #                                   -> c3 c1 = 1, c5 c8 = 2, c0 c7 = 3, c4 c9 = 4, c2 c6 = 5
    spent = [50, 20, 90, 10, 70, 30, 100, 60, 40, 80]
    put(conn, [(f"c{i}", 30 + i, 10 - i, spent[i]) for i in range(10)])
    assert scores(conn) == {
        "c0": ("153", "cant_lose"), "c1": ("151", "cant_lose"),
        "c2": ("245", "at_risk"), "c3": ("241", "at_risk"),
        "c4": ("334", "need_attention"), "c5": ("332", "need_attention"),
        "c6": ("425", "potential_loyalist"), "c7": ("423", "potential_loyalist"),
        "c8": ("512", "new_customer"), "c9": ("514", "new_customer"),
    }


@pytest.mark.parametrize(("n", "expected"), [
    (1, [1]), (3, [1, 2, 3]), (5, [1, 2, 3, 4, 5]),
    (7, [1, 1, 2, 2, 3, 4, 5]),  # 7 = 5 + 2: the first 2 scores get one more customer
    (13, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5, 5]),
])
def test_uneven_counts_give_the_extra_customers_to_the_low_scores(
        conn: sa.Connection, n: int, expected: list[int]) -> None:
    put(conn, [(f"k{i:02d}", i, i + 1, float(i)) for i in range(n)])
    got = scores(conn)
    assert [got[f"k{i:02d}"][0] for i in range(n)] == [f"{s}{s}{s}" for s in expected]


@pytest.mark.parametrize(("r", "f"), sorted(SEGMENT), ids=[f"R{r}F{f}" for r, f in sorted(SEGMENT)])
def test_every_square_of_the_segment_table(conn: sa.Connection, r: int, f: int) -> None:
    # Five customers, one per score: customer k has the k-th latest purchase (R = k), and counts
    # are shifted so customer r has the f-th smallest count (F = f).
    put(conn, [(f"p{k}", k, (k - r + f - 1) % 5 + 1, 10.0 * k) for k in range(1, 6)])
    score, segment = scores(conn)[f"p{r}"]
    assert (score, segment) == (f"{r}{f}{r}", SEGMENT[(r, f)])


def test_ties_are_broken_by_customer_id_byte_order(conn: sa.Connection) -> None:
    # Six customers with identical facts: only customer_id orders them, byte by byte (UTF-8):
    # "B" (0x42) < "a" (0x61) < "a10" < "a2" < "b" < "é" (0xC3 0xA9). n = 6: scores 1,1,2,3,4,5.
    if conn.dialect.name == "postgresql":
        if conn.exec_driver_sql(
                "select 1 from pg_collation where collname = 'und-x-icu'").first() is None:
            pytest.skip("PostgreSQL without ICU: cannot give customer_id a linguistic collation")
        # A linguistic collation would sort a, a10, a2, b, B, é; COLLATE "C" must win over it.
        conn.exec_driver_sql(
            'alter table customers alter column customer_id type varchar collate "und-x-icu"')
    ids = ["b", "é", "a2", "B", "a10", "a"]
    put(conn, [(cid, 5, 3, 42.0) for cid in ids])
    got = scores(conn)
    assert {cid: got[cid][0] for cid in ids} == {
        "B": "111", "a": "111", "a10": "222", "a2": "333", "b": "444", "é": "555"}
    listed = [c["customer_id"] for c in rfm.build(conn).to_json()["customers"]]
    assert listed == ["B", "a", "a10", "a2", "b", "é"]


def test_equal_last_purchase_times_split_by_customer_id(conn: sa.Connection) -> None:
    # R ties only: x1..x5 bought last at the same instant; F and M differ so only R is tied.
    put(conn, [(f"x{k}", 7, 6 - k, 10.0 * k) for k in range(1, 6)])
    got = scores(conn)
    assert [got[f"x{k}"][0] for k in range(1, 6)] == ["151", "242", "333", "424", "515"]


def test_equal_revenues_tie_whatever_their_float_noise(conn: sa.Connection) -> None:
    # 0.1 + 0.2 is 0.30000000000000004 as a float sum: the same revenue as 0.3, so M is a tie
    # broken by customer_id (t0 first), not by the noise (which would put t1 first).
    # n = 2, scores 1 and 2. R: t0 (day 1), t1 (day 2). F: t1 (1 purchase), t0 (2).
    put(conn, [("t0", 1, 2, 0.1 + 0.2), ("t1", 2, 1, 0.3)])
    assert scores(conn) == {"t0": ("121", "hibernating"), "t1": ("212", "hibernating")}


def test_customers_without_purchases_have_no_score(conn: sa.Connection) -> None:
    put(conn, [("buyer1", 1, 1, 5.0), ("buyer2", 2, 2, 9.0), ("window-shopper", None, 0, 0.0)])
    conn.execute(sa.update(customers).where(customers.c.customer_id == "window-shopper")
                 .values(rfm_score="555", rfm_segment="champion"))  # stale: must be cleared
    got = scores(conn)
    assert got["window-shopper"] == (None, None)
    assert got["buyer1"] == ("111", "hibernating") and got["buyer2"] == ("222", "hibernating")
    report = rfm.build(conn).to_json()
    assert (report["customers_scored"], report["customers_without_purchase"]) == (2, 1)


def test_segment_totals_and_score_ranges(conn: sa.Connection) -> None:
    spent = [50, 20, 90, 10, 70, 30, 100, 60, 40, 80]  # the ten customers of the first test
    put(conn, [(f"c{i}", 30 + i, 10 - i, spent[i]) for i in range(10)])
    report = rfm.build(conn).to_json()
    segments = {s["segment"]: s for s in report["segments"]}
    assert [s["segment"] for s in report["segments"]] == [
        "champion", "loyal", "potential_loyalist", "new_customer", "promising",
        "need_attention", "about_to_sleep", "at_risk", "cant_lose", "hibernating"]
    assert {name: (s["customers"], s["revenue"]) for name, s in segments.items()
            if s["customers"]} == {
        "cant_lose": (2, 70.0), "at_risk": (2, 100.0), "need_attention": (2, 100.0),
        "potential_loyalist": (2, 160.0), "new_customer": (2, 120.0)}
    assert segments["cant_lose"]["avg_purchases"] == 9.5  # c0 10, c1 9
    assert segments["cant_lose"]["customers_pct"] == 20.0
    assert segments["champion"] == {
        "segment": "champion", "rule": "R 5, F 4-5", "customers": 0, "customers_pct": 0.0,
        "revenue": 0.0, "revenue_pct": 0.0, "avg_purchases": None, "avg_revenue": None,
        "last_purchase_from": None, "last_purchase_to": None}
    assert segments["loyal"]["rule"] == "R 3-4, F 4-5"
    assert report["revenue"] == 550.0
    assert report["scores"]["f"][0] == {"score": 1, "customers": 2, "from": 1, "to": 2}
    assert report["scores"]["m"][4] == {"score": 5, "customers": 2, "from": 90.0, "to": 100.0}
    assert report["scores"]["r"][0]["from"] == "2024-01-31T00:00:00Z"
    assert sum(square["customers"] for square in report["grid"]) == 10
    assert {(s["r"], s["f"]): s["segment"] for s in report["grid"]} == SEGMENT


# --- the kept facts, refreshed by sync -------------------------------------------------------------


def purchases(customer_id: str, count: int, first_day: int, amount: float,
              prefix: str = "") -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}{customer_id}-{n}", "customer_id": customer_id,
             "type": "purchase", "occurred_at": day(first_day + n).isoformat(),
             "properties": {"amount": amount}} for n in range(count)]


def kept(engine: sa.Engine) -> dict[str, tuple[str | None, str | None]]:
    with engine.connect() as connection:
        return {cid: (score, segment) for cid, score, segment in connection.execute(
            sa.select(customers.c.customer_id, customers.c.rfm_score, customers.c.rfm_segment))}


def sync(engine: sa.Engine, happenings: list[dict[str, Any]]) -> None:
    ingest_events(engine, list(enumerate(happenings, 2)), "events")


def test_sync_keeps_scores_and_reranks_customers_it_did_not_touch(db: sa.Engine) -> None:
    ids = ["a", "b", "c", "d", "e", "idle"]
    ingest_customers(db, list(enumerate(({"customer_id": c} for c in ids), 2)), "c", now=NOW)
    # a..e: 1..5 purchases of 10 each, the k-th customer's last one on day 10k: R = F = M = k.
    sync(db, [e for k, cid in enumerate("abcde", 1) for e in purchases(cid, k, 10 * k - k + 1, 10)]
         + [{"event_id": "login", "customer_id": "idle", "type": "login",
             "occurred_at": day(3).isoformat(), "properties": {}}])
    assert kept(db) == {"a": ("111", "hibernating"), "b": ("222", "hibernating"),
                        "c": ("333", "need_attention"), "d": ("444", "loyal"),
                        "e": ("555", "champion"), "idle": (None, None)}
    # Six more purchases by a alone, the latest of all: a becomes R 5, F 5, M 5 and everyone
    # else moves down one score, although this sync never touched them.
    sync(db, purchases("a", 6, 100, 10, prefix="more-"))
    assert kept(db) == {"a": ("555", "champion"), "b": ("111", "hibernating"),
                        "c": ("222", "hibernating"), "d": ("333", "need_attention"),
                        "e": ("444", "loyal"), "idle": (None, None)}
    with db.connect() as connection:
        reported = rfm.build(connection).to_json()["customers"]
    assert {c["customer_id"]: (c["score"], c["segment"]) for c in reported} == {
        cid: value for cid, value in kept(db).items() if cid != "idle"}
    before = kept(db)
    sync(db, purchases("a", 6, 100, 10, prefix="more-"))  # the same file again: duplicates only
    ingest_customers(db, [(2, {"customer_id": "b", "name": "Bea"})], "c", now=NOW)
    assert kept(db) == before


def test_a_sync_only_of_non_purchases_keeps_the_scores_right(db: sa.Engine) -> None:
    ingest_customers(db, [(2, {"customer_id": "x"}), (3, {"customer_id": "y"})], "c", now=NOW)
    sync(db, purchases("x", 1, 5, 20.0))
    assert kept(db) == {"x": ("111", "hibernating"), "y": (None, None)}
    sync(db, [{"event_id": "fb", "customer_id": "y", "type": "feedback",
               "occurred_at": day(9).isoformat(), "properties": {"score": 9}}])
    assert kept(db) == {"x": ("111", "hibernating"), "y": (None, None)}


# --- a sample of the real Online Retail data against pandas -----------------------------------------


def ntile(n: int, buckets: int = 5) -> np.ndarray:
    """SQL NTILE for rows 1..n in order: q = n // buckets rows per bucket, and the first
    n % buckets buckets take one more (row k goes to the bucket its position falls in)."""
    q, extra = divmod(n, buckets)
    big = extra * (q + 1)  # rows in the larger, leading buckets
    rows = np.arange(n)  # row_number() - 1
    return np.where(rows < big, rows // max(q + 1, 1) + 1,
                    extra + (rows - big) // max(q, 1) + 1)


def test_ntile_by_definition() -> None:
    assert ntile(7).tolist() == [1, 1, 2, 2, 3, 4, 5]
    assert ntile(13).tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5, 5]
    assert ntile(3).tolist() == [1, 2, 3]
    assert ntile(10).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def pandas_rfm(path: Path, chosen: set[str]) -> pd.DataFrame:
    """R, F, M scores and segment per customer, straight from the raw file (README's mapping):
    invoices not starting with C are purchases at their earliest line's time, worth the sum of
    Quantity x UnitPrice (kept in exact thousandths, so equal revenues tie exactly)."""
    raw = pd.read_csv(path, dtype={"InvoiceNo": str, "StockCode": str})
    raw = raw[raw["CustomerID"].notna()].copy()
    raw["cid"] = raw["CustomerID"].astype("int64").astype(str)
    raw = raw[raw["cid"].isin(chosen) & ~raw["InvoiceNo"].str.startswith("C")]
    raw["milli"] = raw["Quantity"] * (raw["UnitPrice"] * 1000).round().astype("int64")
    invoices = raw.groupby("InvoiceNo").agg(cid=("cid", "first"), at=("InvoiceDate", "min"),
                                            milli=("milli", "sum"))
    per = invoices.groupby("cid").agg(last=("at", "max"), count=("at", "size"),
                                      milli=("milli", "sum")).reset_index()
    per["last"] = pd.to_datetime(per["last"])
    for letter, column in (("r", "last"), ("f", "count"), ("m", "milli")):
        ordered = per.sort_values([column, "cid"], kind="stable").index  # cid: digits, ASCII
        per.loc[ordered, letter] = ntile(len(per))
    per[["r", "f", "m"]] = per[["r", "f", "m"]].astype(int)
    per["segment"] = [SEGMENT[(r, f)] for r, f in zip(per["r"], per["f"], strict=True)]
    return per.set_index("cid")


def test_online_retail_sample_matches_ntile_by_hand(db: sa.Engine) -> None:
    path = DATA / DATASETS["online_retail"]
    if not path.is_file():
        pytest.skip(f"real dataset {path} is absent")
    load_dataset(db, "online_retail", path)  # all 4,372 customers: a few seconds
    with db.connect() as connection:
        chosen = set(connection.execute(sa.select(customers.c.customer_id)).scalars())
        report = rfm.build(connection).to_json()
    want = pandas_rfm(path, chosen)
    got = {c["customer_id"]: c for c in report["customers"]}
    assert len(got) == len(want) == 4339  # customers with a purchase (33 only returned)
    wrong = [cid for cid, row in want.iterrows()
             if (got[cid]["r"], got[cid]["f"], got[cid]["m"], got[cid]["segment"])
             != (row["r"], row["f"], row["m"], row["segment"])]
    assert wrong == []
    assert kept(db) == {cid: (f"{row['r']}{row['f']}{row['m']}", row["segment"])
                        for cid, row in want.iterrows()} | {
        cid: (None, None) for cid in chosen - set(want.index)}
    totals = want.groupby("segment").agg(customers=("r", "size"), milli=("milli", "sum"))
    for segment in report["segments"]:
        name = segment["segment"]
        count, milli = (totals.loc[name].tolist() if name in totals.index else (0, 0))
        assert segment["customers"] == count, name
        assert segment["revenue"] == pytest.approx(milli / 1000, abs=5e-3 + 1e-6), name  # to the cent
    assert report["customers_without_purchase"] == len(chosen) - len(want)


# --- the command -------------------------------------------------------------------------------------


@pytest.fixture
def shop(db: sa.Engine, db_url: str) -> str:
    ingest_customers(db, list(enumerate(({"customer_id": c} for c in "abcdef"), 2)), "c", now=NOW)
    sync(db, [e for k, cid in enumerate("abcde", 1) for e in purchases(cid, k, 10 * k, 10)])
    return db_url


def test_json_lists_segments_and_every_scored_customer(cli: Cli, shop: str) -> None:
    code, out, err = cli(["--db", shop, "report", "rfm", "--json"])
    assert (code, err) == (0, "")
    got = json.loads(out)
    assert {"segments", "customers", "scores", "grid"} <= set(got)
    assert {"segment", "customers", "revenue"} <= set(got["segments"][0])
    assert got["customers"][0] == {
        "customer_id": "a", "r": 1, "f": 1, "m": 1, "score": "111", "segment": "hibernating",
        "last_purchase_at": "2024-01-11T00:00:00Z", "purchase_count": 1, "total_spent": 10.0}
    assert [c["customer_id"] for c in got["customers"]] == ["a", "b", "c", "d", "e"]
    assert got["customers_without_purchase"] == 1


def test_text_shows_the_segment_table(cli: Cli, shop: str) -> None:
    code, out, _err = cli(["--db", shop, "report", "rfm"])
    assert code == 0
    assert "RFM segments" in out and "champion" in out and "hibernating" in out
    assert "customer_id" not in out  # the per-customer list is for --json only


def test_html_writes_a_page_with_the_segment_chart(cli: Cli, shop: str, tmp_path: Path) -> None:
    page = tmp_path / "rfm.html"
    code, _out, err = cli(["--db", shop, "report", "rfm", "--html", str(page)])
    assert code == 0 and "Wrote" in err
    text = page.read_text(encoding="utf-8")
    assert text.count('img class="chart"') == 2
    assert "Customers and revenue per RFM segment" in text and "need_attention" in text


def test_an_empty_database_says_there_is_nothing_to_score(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_store(url).dispose()
    code, out, err = cli(["--db", url, "report", "rfm", "--html", str(tmp_path / "r.html")])
    assert (code, err.startswith("Wrote")) == (0, True)
    assert "No customer has a purchase yet" in out
    assert "No customer has a purchase yet" in (tmp_path / "r.html").read_text(encoding="utf-8")
    code, out, _err = cli(["--db", url, "report", "rfm", "--json"])
    got = json.loads(out)
    assert code == 0 and (got["customers_scored"], got["customers"]) == (0, [])
    assert all(s["customers"] == 0 for s in got["segments"])
