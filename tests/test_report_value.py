"""`retain report value` on real SQLite and PostgreSQL.

Hand-made histories pin every number of the report (revenue, AOV, repeat rate, CLV distribution,
cohorts, tiers, the window's edges). A sample of the real Online Retail data is then checked
against an independent pandas computation straight from the raw file, not against the loader's
or the report's own code.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import SHARED_DATA, Cli

from engine.reports import value
from engine.store.open import open_store
from engine.sync.datasets import DATASETS, dataset_rows
from engine.sync.ingest import ingest_customers, ingest_events

NOW = datetime(2025, 1, 1, tzinfo=UTC)
RETAIL = SHARED_DATA / DATASETS["online_retail"]
SAMPLE = 200  # the smallest customer ids of Online Retail: ~1,000 invoices, quick on both backends


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def load(engine: sa.Engine, people: list[dict[str, Any]], happenings: list[dict[str, Any]]) -> None:
    """Customers then events, through the same ingest path as `retain sync`."""
    ingest_customers(engine, list(enumerate(people, 2)), "test", now=NOW)
    ingest_events(engine, list(enumerate(happenings, 2)), "test")


def purchase(event_id: str, customer_id: str, when: str, amount: float | None,
             kind: str = "purchase") -> dict[str, Any]:
    properties = {} if amount is None else {"amount": amount}
    return {"event_id": event_id, "customer_id": customer_id, "type": kind,
            "occurred_at": when, "properties": properties}


def report(engine: sa.Engine, start: str | None = None, end: str | None = None,
           top: int = value.DEFAULT_TOP, timezone: str | None = None) -> dict[str, Any]:
    with engine.connect() as connection:
        if timezone and connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SET TIME ZONE '{timezone}'")
        result = value.build(connection, None if start is None else utc(start),
                             None if end is None else utc(end), top=top)
    return result.to_json()


# --- hand-made data with known answers ---------------------------------------------------------

SHOP = [
    {"customer_id": "a", "name": "Ada", "created_at": "2024-01-05T00:00:00Z"},
    {"customer_id": "b", "name": "Bo", "created_at": "2024-01-20T00:00:00Z"},
    {"customer_id": "c", "name": "Cy", "created_at": "2024-02-10T00:00:00Z"},
    {"customer_id": "d", "name": "Di", "created_at": "2024-02-15T00:00:00Z"},
    {"customer_id": "e", "name": "Ed", "created_at": "2024-03-01T00:00:00Z"},
]
SHOP_EVENTS = [
    purchase("a1", "a", "2024-01-10T10:00:00Z", 100),
    purchase("a2", "a", "2024-02-01T00:00:00Z", 50),  # exactly --from in the window test
    purchase("a3", "a", "2024-02-05T00:00:00Z", -30, kind="return"),
    purchase("b1", "b", "2024-03-01T00:00:00Z", 200),  # exactly --to: outside
    purchase("c1", "c", "2024-02-11T00:00:00Z", 10),
    purchase("c2", "c", "2024-02-12T00:00:00Z", 20),
    purchase("c3", "c", "2024-04-01T00:00:00Z", 30),
    {"event_id": "d1", "customer_id": "d", "type": "page_view",
     "occurred_at": "2024-02-16T00:00:00Z"},
    purchase("e1", "e", "2024-03-02T00:00:00Z", None),  # an order without an amount: counts, 0
    purchase("e2", "e", "2024-03-05T00:00:00Z", 40),
]


def test_every_number_of_a_small_shop(db: sa.Engine) -> None:
    """a: 100+50 (a return of 30 apart), b: 200, c: 10+20+30, d: nothing, e: 0 (no amount)+40."""
    load(db, SHOP, SHOP_EVENTS)
    got = report(db, top=2)
    assert got["from"] is None and got["to"] is None
    assert got["summary"] == {
        "customers": 5, "buyers": 4, "repeat_buyers": 3, "orders": 8, "revenue": 450.0,
        "average_order_value": 56.25, "repeat_purchase_rate_pct": 75.0,
        "returns": {"count": 1, "amount": 30.0},
    }
    # Revenues 0, 40, 60, 150, 200: median the middle, p90 at rank 3.6 -> 150 + 0.6 x 50.
    assert got["clv"] == {
        "customers": 5, "mean": 90.0, "median": 60.0, "p90": 180.0,
        "top": [
            {"customer_id": "b", "name": "Bo", "orders": 1, "revenue": 200.0,
             "revenue_share_pct": pytest.approx(44.4444)},
            {"customer_id": "a", "name": "Ada", "orders": 2, "revenue": 150.0,
             "revenue_share_pct": pytest.approx(33.3333)},
        ],
    }
    assert got["cohorts"] == [
        {"cohort": "2024-01", "customers": 2, "buyers": 2, "orders": 3, "revenue": 350.0,
         "clv": 175.0},
        {"cohort": "2024-02", "customers": 2, "buyers": 1, "orders": 3, "revenue": 60.0,
         "clv": 30.0},
        {"cohort": "2024-03", "customers": 1, "buyers": 1, "orders": 2, "revenue": 40.0,
         "clv": 40.0},
    ]
    # 4 buyers: NTILE(10) gives deciles 1-4, so high = b, a and mid = c, e; d has no order.
    assert got["tiers"] == [
        {"tier": "high", "customers": 2, "revenue": 350.0,
         "revenue_share_pct": pytest.approx(77.7778), "min_revenue": 150.0, "max_revenue": 200.0},
        {"tier": "mid", "customers": 2, "revenue": 100.0,
         "revenue_share_pct": pytest.approx(22.2222), "min_revenue": 40.0, "max_revenue": 60.0},
        {"tier": "low", "customers": 0, "revenue": 0.0, "revenue_share_pct": 0.0,
         "min_revenue": None, "max_revenue": None},
        {"tier": "none", "customers": 1, "revenue": 0.0, "revenue_share_pct": 0.0,
         "min_revenue": None, "max_revenue": None},
    ]


def test_the_window_includes_from_excludes_to_and_counts_customers_created_before_to(
        db: sa.Engine) -> None:
    """[2024-02-01, 2024-03-01): a's 50 (at --from) and c's 10+20; b's 200 at --to is out, and
    e, created at --to, is not yet a customer. a's return on 02-05 is in the window."""
    load(db, SHOP, SHOP_EVENTS)
    got = report(db, "2024-02-01", "2024-03-01")
    assert (got["from"], got["to"]) == ("2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z")
    assert got["summary"] == {
        "customers": 4, "buyers": 2, "repeat_buyers": 1, "orders": 3, "revenue": 80.0,
        "average_order_value": 26.67, "repeat_purchase_rate_pct": 50.0,  # money: to the cent
        "returns": {"count": 1, "amount": 30.0},
    }
    assert got["cohorts"] == [
        {"cohort": "2024-01", "customers": 2, "buyers": 1, "orders": 1, "revenue": 50.0,
         "clv": 25.0},
        {"cohort": "2024-02", "customers": 2, "buyers": 1, "orders": 2, "revenue": 30.0,
         "clv": 15.0},
    ]
    # Revenues 0 (b), 0 (d), 30 (c), 50 (a).
    assert (got["clv"]["mean"], got["clv"]["median"], got["clv"]["p90"]) == (20.0, 15.0, 44.0)
    assert [t["customer_id"] for t in got["clv"]["top"]] == ["a", "c"]


def test_tiers_are_deciles_of_buyers_with_ties_broken_by_customer_id(db: sa.Engine) -> None:
    """12 buyers: NTILE(10) puts 2, 2, 1, 1, ... in deciles 1, 2, 3, ...; k10 and k11 tie at 10
    and k10 ranks first. High = 12, 10, 10, 9; mid = 8, 7, 6; low = 5, 4, 3, 2, 1."""
    revenues = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 12]
    people = [{"customer_id": f"k{i:02d}", "created_at": "2024-05-01T00:00:00Z"}
              for i in range(1, 13)]
    happenings = [purchase(f"p{i}", f"k{i:02d}", "2024-05-02T00:00:00Z", amount)
                  for i, amount in enumerate(revenues, 1)]
    load(db, people, happenings)
    got = report(db, top=3)
    tiers = {t["tier"]: (t["customers"], t["revenue"], t["min_revenue"], t["max_revenue"])
             for t in got["tiers"]}
    assert tiers == {"high": (4, 41.0, 9.0, 12.0), "mid": (3, 21.0, 6.0, 8.0),
                     "low": (5, 15.0, 1.0, 5.0), "none": (0, 0.0, None, None)}
    assert [t["revenue_share_pct"] for t in got["tiers"]] == pytest.approx(
        [100 * 41 / 77, 100 * 21 / 77, 100 * 15 / 77, 0.0], abs=1e-4)
    assert [t["customer_id"] for t in got["clv"]["top"]] == ["k12", "k10", "k11"]


def test_cohorts_are_utc_months_whatever_the_session_time_zone(db: sa.Engine) -> None:
    """Created 2024-02-01T02:00Z is February in UTC but still January in New York: a PostgreSQL
    session in another zone must not move the customer to January."""
    load(db, [{"customer_id": "x", "created_at": "2024-01-31T21:00:00-05:00"}],
         [purchase("x1", "x", "2024-02-03T00:00:00Z", 5)])
    got = report(db, timezone="America/New_York")
    assert [(c["cohort"], c["customers"], c["revenue"]) for c in got["cohorts"]] == [
        ("2024-02", 1, 5.0)]


def test_customers_without_purchases_say_so_and_nothing_divides_by_zero(db: sa.Engine) -> None:
    load(db, SHOP[:2], [purchase("r1", "a", "2024-02-01T00:00:00Z", -5, kind="return")])
    got = report(db)
    assert got["summary"] == {
        "customers": 2, "buyers": 0, "repeat_buyers": 0, "orders": 0, "revenue": 0.0,
        "average_order_value": None, "repeat_purchase_rate_pct": None,
        "returns": {"count": 1, "amount": 5.0},
    }
    assert got["clv"] == {"customers": 2, "mean": 0.0, "median": 0.0, "p90": 0.0, "top": []}
    assert [(t["tier"], t["customers"], t["revenue_share_pct"]) for t in got["tiers"]] == [
        ("high", 0, None), ("mid", 0, None), ("low", 0, None), ("none", 2, None)]


def test_an_empty_database_gives_an_empty_report(db: sa.Engine) -> None:
    got = report(db)
    assert got["summary"]["customers"] == 0 and got["summary"]["orders"] == 0
    assert got["clv"] == {"customers": 0, "mean": None, "median": None, "p90": None, "top": []}
    assert got["cohorts"] == []
    assert [t["customers"] for t in got["tiers"]] == [0, 0, 0, 0]


# --- a sample of the real Online Retail data against pandas --------------------------------------


@pytest.fixture(scope="module")
def retail_rows() -> tuple[list[Any], list[Any]]:
    """Retain rows of the SAMPLE smallest customer ids, read once for both backends."""
    if not RETAIL.is_file():
        pytest.skip(f"real dataset {RETAIL} is absent")
    return dataset_rows("online_retail", RETAIL, limit_customers=SAMPLE)


@pytest.fixture(scope="module")
def invoices() -> pd.DataFrame:
    """One row per invoice of the same customers, computed with pandas from the raw file."""
    if not RETAIL.is_file():
        pytest.skip(f"real dataset {RETAIL} is absent")
    df = pd.read_csv(RETAIL, dtype={"InvoiceNo": str, "StockCode": str})
    df = df[df["CustomerID"].notna()].copy()
    df["cid"] = df["CustomerID"].astype("int64")
    df = df[df["cid"].isin(sorted(df["cid"].unique())[:SAMPLE])]
    df["cid"] = df["cid"].astype(str)
    df["line_amount"] = df["Quantity"] * df["UnitPrice"]
    out = df.groupby("InvoiceNo").agg(cid=("cid", "first"), at=("InvoiceDate", "min"),
                                      amount=("line_amount", "sum")).reset_index()
    out["at"] = pd.to_datetime(out["at"])
    out["purchase"] = ~out["InvoiceNo"].str.startswith("C")
    return out


def expected(invoices: pd.DataFrame, start: str | None, end: str | None) -> dict[str, Any]:
    """The report's definitions, written independently with pandas."""
    # A customer is created at its first invoice of any kind (the dataset has no signup date).
    created = invoices.groupby("cid")["at"].min()
    people = created[created < pd.Timestamp(end)] if end else created
    window = invoices[invoices["cid"].isin(people.index)]
    if start:
        window = window[window["at"] >= pd.Timestamp(start)]
    if end:
        window = window[window["at"] < pd.Timestamp(end)]
    bought = window[window["purchase"]]
    per = pd.DataFrame({"cohort": people.dt.strftime("%Y-%m")})
    per["orders"] = bought.groupby("cid").size().reindex(per.index, fill_value=0)
    per["revenue"] = bought.groupby("cid")["amount"].sum().reindex(per.index, fill_value=0.0)
    buyers = per[per["orders"] >= 1].copy()
    returned = window[~window["purchase"]]
    revenue = per["revenue"].sum()
    cohorts = per.groupby("cohort").agg(customers=("orders", "size"),
                                        buyers=("orders", lambda s: int((s >= 1).sum())),
                                        orders=("orders", "sum"), revenue=("revenue", "sum"))
    cohorts["clv"] = cohorts["revenue"] / cohorts["customers"]
    # NTILE(10) by hand: the first n % 10 deciles get one more buyer.
    buyers = buyers.reset_index(names="cid").sort_values(["revenue", "cid"],
                                                          ascending=[False, True])
    size, extra = divmod(len(buyers), 10)
    buyers["decile"] = np.repeat(np.arange(1, 11), [size + (i < extra) for i in range(10)])
    buyers["tier"] = pd.cut(buyers["decile"], [0, 2, 5, 10], labels=["high", "mid", "low"])
    tiers = buyers.groupby("tier", observed=False)["revenue"].agg(["size", "sum"])
    return {
        "summary": {"customers": len(per), "buyers": len(buyers),
                    "repeat_buyers": int((per["orders"] >= 2).sum()),
                    "orders": int(per["orders"].sum()), "revenue": revenue,
                    "average_order_value": revenue / per["orders"].sum(),
                    "repeat_purchase_rate_pct": 100 * (per["orders"] >= 2).sum() / len(buyers),
                    "returns": {"count": len(returned), "amount": -returned["amount"].sum()}},
        "clv": {"mean": per["revenue"].mean(), "median": per["revenue"].median(),
                "p90": per["revenue"].quantile(0.9),
                "top": buyers["cid"].head(value.DEFAULT_TOP).tolist()},
        "cohorts": cohorts.reset_index().to_dict("records"),
        "tiers": {tier: (int(row["size"]), row["sum"]) for tier, row in tiers.iterrows()},
        "none": len(per) - len(buyers),
    }


def close(got: Any, want: Any) -> bool:
    """Equal up to the report's rounding: money to the cent, ratios to 4 decimals (pandas sums
    floats in another order)."""
    return bool(got == pytest.approx(want, abs=5e-3 + 1e-9, rel=1e-9))


@pytest.mark.parametrize(("start", "end"), [(None, None), ("2011-03-01", "2011-09-01")])
def test_online_retail_sample_matches_pandas(db: sa.Engine, retail_rows: tuple[list[Any], list[Any]],
                                             invoices: pd.DataFrame, start: str | None,
                                             end: str | None) -> None:
    """Revenue, AOV, repeat rate, CLV, cohorts and tiers of 200 real customers, whole history and
    a window that cuts customers (created later) and cohorts (earlier purchases left out)."""
    people, happenings = retail_rows
    ingest_customers(db, people, "online_retail", now=NOW)
    ingest_events(db, happenings, "online_retail")
    got, want = report(db, start, end), expected(invoices, start, end)
    summary = want["summary"]
    assert {k: v for k, v in got["summary"].items() if k not in ("revenue", "returns",
            "average_order_value", "repeat_purchase_rate_pct")} == {
        k: summary[k] for k in ("customers", "buyers", "repeat_buyers", "orders")}
    for key in ("revenue", "average_order_value", "repeat_purchase_rate_pct"):
        assert close(got["summary"][key], summary[key]), key
    assert got["summary"]["returns"]["count"] == summary["returns"]["count"]
    assert close(got["summary"]["returns"]["amount"], summary["returns"]["amount"])
    for key in ("mean", "median", "p90"):
        assert close(got["clv"][key], want["clv"][key]), key
    assert [t["customer_id"] for t in got["clv"]["top"]] == want["clv"]["top"]
    assert [c["cohort"] for c in got["cohorts"]] == [c["cohort"] for c in want["cohorts"]]
    for mine, theirs in zip(got["cohorts"], want["cohorts"], strict=True):
        assert (mine["customers"], mine["buyers"], mine["orders"]) == (
            theirs["customers"], theirs["buyers"], theirs["orders"])
        assert close(mine["revenue"], theirs["revenue"]) and close(mine["clv"], theirs["clv"])
    tiers = {t["tier"]: t for t in got["tiers"]}
    for name, (count, revenue) in want["tiers"].items():
        assert tiers[name]["customers"] == count, name
        assert close(tiers[name]["revenue"], revenue), name
        assert close(tiers[name]["revenue_share_pct"], 100 * revenue / summary["revenue"]), name
    assert tiers["none"]["customers"] == want["none"]
    assert len(got["cohorts"]) > 3 and tiers["high"]["customers"] > 10  # the sample is not trivial


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def shop(db: sa.Engine, db_url: str) -> str:
    load(db, SHOP, SHOP_EVENTS)
    return db_url


def test_json_has_every_section(cli: Cli, shop: str) -> None:
    code, out, err = cli(["--db", shop, "report", "value", "--json", "--top", "1"])
    assert (code, err) == (0, "")
    got = json.loads(out)
    assert set(got) == {"from", "to", "as_of", "latest_event", "notes", "summary", "clv",
                        "cohorts", "tiers"}
    assert got["latest_event"] == "2024-04-01T00:00:00Z" and got["notes"] == []
    assert got["as_of"].endswith("Z") and "." not in got["as_of"]  # seconds, no microseconds
    assert got["summary"]["revenue"] == 450.0
    assert [t["customer_id"] for t in got["clv"]["top"]] == ["b"]
    assert [t["tier"] for t in got["tiers"]] == ["high", "mid", "low", "none"]


def test_as_of_sees_nothing_later_and_a_far_end_says_so(cli: Cli, shop: str) -> None:
    """--as-of 2024-03-01: b's 200 at that instant and every later order are unseen, and e,
    created then, is not a customer yet. A --to weeks after the latest event gets the note."""
    code, out, _err = cli(["--db", shop, "report", "value", "--json", "--as-of", "2024-03-01"])
    assert code == 0
    got = json.loads(out)
    assert (got["summary"]["revenue"], got["summary"]["customers"]) == (180.0, 4)
    assert (got["as_of"], got["latest_event"]) == ("2024-03-01T00:00:00Z", "2024-02-16T00:00:00Z")
    assert got["notes"] == ["latest event 2024-02-16, 14 days before the window ends: purchases "
                            "after it are not in the data"]
    code, out, _err = cli(["--db", shop, "report", "value", "--to", "2024-04-02"])
    assert code == 0 and "Note: " not in out  # the latest event (04-01) is a day before --to
    code, out, _err = cli(["--db", shop, "report", "value", "--to", "2024-05-01"])
    assert code == 0
    assert "latest event 2024-04-01, 30 days before the window ends" in " ".join(out.split())


def test_money_is_rounded_to_the_cent_in_json_and_text(cli: Cli, db: sa.Engine,
                                                       db_url: str) -> None:
    """Orders of 10, 10 and 13.37: the average order value 11.123333... is 11.12 in JSON and
    text (4 places gave 11.1233), and no float noise of the sums shows anywhere."""
    amounts = [10.0, 10.0, 13.37]
    load(db, [{"customer_id": "m", "created_at": "2024-01-01T00:00:00Z"}],
         [purchase(f"m{i}", "m", f"2024-01-0{i + 2}T00:00:00Z", a) for i, a in enumerate(amounts)])
    code, out, _err = cli(["--db", db_url, "report", "value", "--json"])
    assert code == 0
    got = json.loads(out)
    assert (got["summary"]["revenue"], got["summary"]["average_order_value"]) == (33.37, 11.12)
    assert (got["clv"]["mean"], got["clv"]["median"], got["clv"]["top"][0]["revenue"],
            got["cohorts"][0]["clv"], got["tiers"][0]["max_revenue"]) == (33.37,) * 5
    assert not re.search(r"\d\.\d{3}", out.replace(got["as_of"], ""))  # no 3rd decimal
    code, out, _err = cli(["--db", db_url, "report", "value"])
    assert code == 0 and "11.12 " in out and "11.123" not in out


def test_from_and_to_reach_the_report(cli: Cli, shop: str) -> None:
    code, out, _err = cli(["--db", shop, "report", "value", "--json", "--from", "2024-02-01",
                           "--to", "2024-03-01"])
    assert code == 0
    assert json.loads(out)["summary"]["revenue"] == 80.0


def test_text_shows_the_tables(cli: Cli, shop: str) -> None:
    code, out, _err = cli(["--db", shop, "report", "value"])
    assert code == 0
    for text in ("450.00", "56.25", "75.0%", "2024-02", "high", "Ada", "Top 4 customers by revenue"):
        assert text in out


def test_html_writes_a_page_with_charts(cli: Cli, shop: str, tmp_path: Path) -> None:
    page = tmp_path / "value.html"
    code, _out, err = cli(["--db", shop, "report", "value", "--html", str(page)])
    assert code == 0 and f"Wrote {page}" in err
    text = page.read_text(encoding="utf-8")
    assert text.count('img class="chart"') == 2
    assert "Revenue and CLV per signup cohort" in text and "Value tiers" in text


@pytest.mark.parametrize("args", [["--from", "2024-13-01"], ["--to", "soon"],
                                  ["--from", "2024-03-01", "--to", "2024-02-01"], ["--top", "0"]])
def test_bad_options_are_usage_errors(cli: Cli, shop: str, args: list[str]) -> None:
    code, _out, err = cli(["--db", shop, "report", "value", *args])
    assert code == 2
    assert "Invalid value" in err


def test_an_empty_database_says_there_are_no_purchases(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_store(url).dispose()
    code, out, err = cli(["--db", url, "report", "value", "--html", str(tmp_path / "v.html")])
    assert code == 0
    assert "No purchases in this window" in out
    assert "No purchases in this window" in (tmp_path / "v.html").read_text(encoding="utf-8")
    code, out, _err = cli(["--db", url, "report", "value", "--json"])
    assert code == 0 and json.loads(out)["summary"]["orders"] == 0
