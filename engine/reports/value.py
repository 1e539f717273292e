"""`retain report value`: revenue, orders, repeat purchases, historical CLV and value tiers.

Definitions (docs/REPORTS.md, "Value", says the same). The window is `[start, end)` on the events'
`occurred_at`; without `--from` / `--to` it is all of the data. Nothing at or after now (the
clock, or `--as-of`) is seen: the window ends at now at the latest, and customers created after
it do not exist yet. When `--to` or `--as-of` ends the window more than a week after the latest
event, the report says so (`notes`).

- **customers**: every customer that existed by the end of the window (`created_at < end`, or any
  `created_at` without `--to`; a customer with no `created_at` always counts). Customers who did
  not buy in the window count with revenue 0: they are part of every cohort's size.
- **orders**: `purchase` events in the window. **revenue**: the sum of their `amount` (a missing
  amount counts 0, the order still counts). Returns are NOT subtracted, the same rule as the RFM
  M score and `total_spent` (DESIGN section 1); they are shown on their own: `return` events in the
  window and the sum of their absolute amounts (Online Retail stores them negative; a source that
  stores them positive gives the same number).
- **average order value** (AOV) = revenue / orders.
- **buyers**: customers with >= 1 order in the window; **repeat buyers**: >= 2 orders.
  **repeat-purchase rate** = repeat buyers / buyers, in percent.
- **historical CLV of a customer** = that customer's revenue in the window. Its distribution is
  over all customers above (so mean = revenue / customers, the same ratio as a cohort's CLV);
  median and p90 interpolate linearly between ranks, as pandas' and PostgreSQL's
  `percentile_cont` do. The top list holds the `top` buyers by revenue (ties: customer_id).
- **cohort**: the calendar month (UTC) of `customers.created_at`, "unknown" when it is empty. Per
  cohort: customers, buyers, orders, revenue and CLV = revenue / customers of the cohort.
- **value tiers**: buyers ranked by `NTILE(10) OVER (ORDER BY revenue DESC, customer_id ASC)`;
  deciles 1-2 are `high` (the top 20 %), 3-5 `mid` (the next 30 %), 6-10 `low` (the rest), and
  customers without an order are `none`. NTILE gives the first deciles one more buyer when the
  count does not divide by 10, so with fewer than 10 buyers `high` is the top 2, `mid` the next 3.
  Each tier shows its customers, revenue, share of all revenue and revenue range.
- Money (revenue, AOV, CLV, amounts) is rounded to the cent, in JSON too; ratios to 4 places.

Everything is computed in SQL (one aggregate of events per customer, then aggregates and window
functions over it); Python only shapes the few result rows. Works on SQLite >= 3.25 and PostgreSQL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.reports.html import HtmlPage, figure
from engine.reports.periods import quiet_note, report_now
from engine.reports.sheet import Sheet, columns
from engine.store.facts import PURCHASE, customers, events

RETURN = "return"
"""The event type of a returned order (engine/sync/datasets.py maps `C` invoices to it)."""

DEFAULT_TOP = 10
TIERS: tuple[tuple[str, int], ...] = (("high", 2), ("mid", 5), ("low", 10))
"""(tier, last decile in it): deciles 1-2 high, 3-5 mid, 6-10 low."""
NO_ORDER_TIER = "none"
UNKNOWN_COHORT = "unknown"
PLACES = 4  # rounding of ratios and percentages in the JSON: no float noise
CENTS = 2  # money is rounded to the cent everywhere, JSON included


@dataclass(frozen=True)
class ValueReport:
    """The value report's numbers, already aggregated; see the module docstring for definitions."""

    start: datetime | None
    end: datetime | None
    now: datetime
    latest: datetime | None  # the latest event of any type before now
    summary: dict[str, Any]
    clv: dict[str, Any]
    cohorts: list[dict[str, Any]]
    tiers: list[dict[str, Any]]
    as_of_given: bool = False

    @property
    def notes(self) -> list[str]:
        """Said when `--to` or `--as-of` ends the window a week or more after the latest event."""
        if self.end is None and not self.as_of_given:
            return []
        stop = self.now if self.end is None else min(self.end, self.now)
        note = quiet_note(self.latest, [("the window ends", stop)],
                          "purchases after it are not in the data")
        return [] if note is None else [note]

    def to_json(self) -> dict[str, Any]:
        """The `--json` document."""
        return {
            "from": None if self.start is None else iso(self.start),
            "to": None if self.end is None else iso(self.end),
            "as_of": iso(self.now),
            "latest_event": None if self.latest is None else iso(self.latest),
            "notes": self.notes,
            "summary": self.summary,
            "clv": self.clv,
            "cohorts": self.cohorts,
            "tiers": self.tiers,
        }

    def sheets(self) -> list[Sheet]:
        """The tables for a terminal (tier ranges with --wide); with no order in the window,
        the summary says so."""
        result = [self._summary_sheet()]
        if self.summary["orders"] == 0:
            return result
        result.append(Sheet("Historical CLV per customer (revenue)",
                            columns(["statistic", "value"]), self._clv_rows()))
        names, rows = self._top()
        result.append(Sheet(f"Top {len(self.clv['top'])} customers by revenue",
                            columns(names, text=2 if "name" in names else 1, wrap=("name",)),
                            rows))
        result.append(Sheet("Signup cohorts (month of created_at, UTC)",
                            columns(_COHORT_COLUMNS), self._cohort_rows()))
        result.append(Sheet("Value tiers (buyers by revenue deciles)",
                            columns(_TIER_COLUMNS, wide=("revenue range",)), self._tier_rows()))
        return result

    def html(self, page: HtmlPage) -> None:
        """Sections for `--html`: summary, cohort and tier charts, and their tables."""
        page.heading("Summary")
        page.note(f"Events: {_window_text(self.start, self.end)}.")
        for note in self.notes:
            page.note(f"Note: {note}.")
        page.table(["metric", "value"], self._summary_rows())
        page.note("Revenue is the sum of purchase amounts; returns are not subtracted and are "
                  "shown separately. Repeat-purchase rate = buyers with 2 or more orders / buyers.")
        if self.summary["orders"] == 0:
            page.note("No purchases in this window: there is no revenue, CLV or tier to show.")
            return
        page.heading("Revenue and CLV per signup cohort")
        page.chart(self._cohort_chart(), "Revenue and CLV per signup cohort")
        page.table(_COHORT_COLUMNS, self._cohort_rows())
        page.note("Cohort: the month (UTC) the customer was created. CLV = cohort revenue / "
                  "customers in the cohort, buyers or not.")
        page.heading("Value tiers")
        page.chart(self._tier_chart(), "Customers and revenue share per value tier")
        page.table(_TIER_COLUMNS, self._tier_rows())
        page.note("Buyers ranked by NTILE(10) over revenue (highest first): deciles 1-2 high, "
                  "3-5 mid, 6-10 low; none: customers without an order in the window.")
        page.heading("Historical CLV per customer")
        page.table(["statistic", "value"], self._clv_rows())
        page.table(*self._top())

    # --- rows, shared by the terminal and the page -------------------------------------------

    def _summary_rows(self) -> list[list[Any]]:
        s = self.summary
        return [
            ["customers", s["customers"]],
            ["buyers (1+ orders)", s["buyers"]],
            ["repeat buyers (2+ orders)", s["repeat_buyers"]],
            ["repeat-purchase rate", _percent(s["repeat_purchase_rate_pct"])],
            ["orders", s["orders"]],
            ["revenue (returns not subtracted)", _money(s["revenue"])],
            ["average order value", _money(s["average_order_value"])],
            ["returns (shown apart)", s["returns"]["count"]],
            ["returned amount", _money(s["returns"]["amount"])],
        ]

    def _summary_sheet(self) -> Sheet:
        caption = None
        if self.summary["orders"] == 0:
            caption = "No purchases in this window: no revenue, CLV or tiers to show."
        return Sheet(f"Value: {_window_text(self.start, self.end)}", columns(["metric", "value"]),
                     self._summary_rows(), caption, self.notes)

    def _clv_rows(self) -> list[list[Any]]:
        c = self.clv
        return [["customers", c["customers"]], ["mean", _money(c["mean"])],
                ["median", _money(c["median"])], ["p90", _money(c["p90"])]]

    def _top(self) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of the top customers; a name column only when some have a name."""
        named = any(t["name"] for t in self.clv["top"])
        columns = ["customer", *(["name"] if named else []), "orders", "revenue", "share"]
        return columns, [[t["customer_id"], *([t["name"]] if named else []), t["orders"],
                          _money(t["revenue"]), _percent(t["revenue_share_pct"])]
                         for t in self.clv["top"]]

    def _cohort_rows(self) -> list[list[Any]]:
        return [[c["cohort"], c["customers"], c["buyers"], c["orders"], _money(c["revenue"]),
                 _money(c["clv"])] for c in self.cohorts]

    def _tier_rows(self) -> list[list[Any]]:
        return [[t["tier"], t["customers"], _money(t["revenue"]), _percent(t["revenue_share_pct"]),
                 _range(t["min_revenue"], t["max_revenue"])] for t in self.tiers]

    # --- charts ------------------------------------------------------------------------------

    def _cohort_chart(self) -> Any:
        chart = figure(max(6.0, 0.35 * len(self.cohorts) + 2), 3.8)
        axes = chart.subplots()
        labels = [c["cohort"] for c in self.cohorts]
        axes.bar(labels, [c["revenue"] for c in self.cohorts], color="#4c72b0", label="revenue")
        axes.set_ylabel("revenue")
        axes.tick_params(axis="x", labelrotation=60)
        clv_axes = axes.twinx()
        clv_axes.plot(labels, [c["clv"] for c in self.cohorts], color="#dd8452", marker="o",
                      label="CLV per customer")
        clv_axes.set_ylabel("CLV per customer")
        handles = axes.get_legend_handles_labels()[0] + clv_axes.get_legend_handles_labels()[0]
        clv_axes.legend(handles=handles, loc="upper right")
        axes.set_title("Revenue (bars) and CLV (line) per signup cohort")
        return chart

    def _tier_chart(self) -> Any:
        chart = figure(8, 3.2)
        left, right = chart.subplots(1, 2)
        labels = [t["tier"] for t in self.tiers]
        colors = ["#55a868", "#4c72b0", "#8172b2", "#bbbbbb"][: len(labels)]
        left.bar(labels, [t["customers"] for t in self.tiers], color=colors)
        left.set_title("customers per tier")
        right.bar(labels, [t["revenue_share_pct"] for t in self.tiers], color=colors)
        right.set_title("share of revenue (%)")
        return chart


_COHORT_COLUMNS = ["cohort", "customers", "buyers", "orders", "revenue", "CLV"]
_TIER_COLUMNS = ["tier", "customers", "revenue", "share", "revenue range"]


def build(connection: sa.Connection, start: datetime | None = None, end: datetime | None = None,
          top: int = DEFAULT_TOP, now: datetime | None = None) -> ValueReport:
    """The value report over events in `[start, end)` (None: unbounded), `top` customers listed;
    `now` is `--as-of` (None: the clock), before which everything is seen."""
    as_of = report_now(now)
    upto = as_of if end is None else min(end, as_of)
    per_customer = _per_customer(connection.dialect.name, start, upto)
    summary = _summary(connection, per_customer)
    latest = connection.execute(sa.select(sa.func.max(events.c.occurred_at))
                                .where(events.c.occurred_at < as_of)).scalar()
    return ValueReport(
        start=start, end=end, now=as_of, latest=latest, as_of_given=now is not None,
        summary=summary,
        clv=_clv(connection, per_customer, summary, top),
        cohorts=_cohorts(connection, per_customer),
        tiers=_tiers(connection, per_customer, summary),
    )


# --- SQL -----------------------------------------------------------------------------------------


def _month(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[str]:
    """`YYYY-MM` of a stored UTC time. PostgreSQL's to_char would use the session's zone, so the
    time is first turned into UTC; SQLite stores UTC text already. Constants are literal so the
    expression is the same text wherever it appears."""
    if dialect == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), column)
        return sa.func.to_char(utc, sa.literal_column("'YYYY-MM'"))
    return sa.func.strftime(sa.literal_column("'%Y-%m'"), column)


def _per_customer(dialect: str, start: datetime | None, end: datetime | None) -> sa.Subquery:
    """One row per customer counted: cohort, orders, revenue, returns and returned amount."""
    c, e = customers.c, events.c
    joined = e.customer_id == c.customer_id
    joined &= e.type.in_([PURCHASE, RETURN])
    if start is not None:
        joined &= e.occurred_at >= start
    if end is not None:
        joined &= e.occurred_at < end
    purchase, returned = e.type == PURCHASE, e.type == RETURN
    query = (
        sa.select(
            c.customer_id,
            c.name,
            _month(c.created_at, dialect).label("cohort"),
            sa.func.count(sa.case((purchase, 1))).label("orders"),
            sa.func.coalesce(sa.func.sum(sa.case((purchase, e.amount))), 0.0).label("revenue"),
            sa.func.count(sa.case((returned, 1))).label("returns"),
            sa.func.coalesce(sa.func.sum(sa.case((returned, sa.func.abs(e.amount)))),
                             0.0).label("returned"),
        )
        .select_from(customers.outerjoin(events, joined))
        .group_by(c.customer_id, c.name, c.created_at)
    )
    if end is not None:
        query = query.where(sa.or_(c.created_at.is_(None), c.created_at < end))
    return query.subquery("per_customer")


def _summary(connection: sa.Connection, pc: sa.Subquery) -> dict[str, Any]:
    row = connection.execute(sa.select(
        sa.func.count(),
        sa.func.count(sa.case((pc.c.orders >= 1, 1))),
        sa.func.count(sa.case((pc.c.orders >= 2, 1))),
        sa.func.sum(pc.c.orders),
        sa.func.sum(pc.c.revenue),
        sa.func.sum(pc.c.returns),
        sa.func.sum(pc.c.returned),
    )).one()
    count, buyers, repeat, orders, revenue, returns, returned = row
    orders, revenue = int(orders or 0), float(revenue or 0.0)
    return {
        "customers": count,
        "buyers": buyers,
        "repeat_buyers": repeat,
        "orders": orders,
        "revenue": _cents(revenue),
        "average_order_value": _ratio(revenue, orders, CENTS),
        "repeat_purchase_rate_pct": _ratio(100.0 * repeat, buyers),
        "returns": {"count": int(returns or 0), "amount": _cents(float(returned or 0.0))},
    }


def _clv(connection: sa.Connection, pc: sa.Subquery, summary: dict[str, Any],
         top: int) -> dict[str, Any]:
    count = summary["customers"]
    ranked = sa.select(
        pc.c.revenue,
        sa.func.row_number().over(order_by=(pc.c.revenue, pc.c.customer_id)).label("rank"),
    ).subquery("ranked")
    wanted = {q: (count - 1) * q for q in (0.5, 0.9)}
    ranks = sorted({math.floor(h) + 1 for h in wanted.values()}
                   | {math.ceil(h) + 1 for h in wanted.values()})
    at = dict(connection.execute(
        sa.select(ranked.c.rank, ranked.c.revenue).where(ranked.c.rank.in_(ranks))).all())

    def quantile(q: float) -> float | None:
        if count == 0:
            return None
        h = wanted[q]
        low, high = float(at[math.floor(h) + 1]), float(at[math.ceil(h) + 1])
        return _cents(low + (h - math.floor(h)) * (high - low))

    total = float(summary["revenue"])
    rows = connection.execute(
        sa.select(pc.c.customer_id, pc.c.name, pc.c.orders, pc.c.revenue)
        .where(pc.c.orders >= 1)
        .order_by(pc.c.revenue.desc(), pc.c.customer_id)
        .limit(top)).all()
    return {
        "customers": count,
        "mean": _ratio(total, count, CENTS),
        "median": quantile(0.5),
        "p90": quantile(0.9),
        "top": [{"customer_id": r.customer_id, "name": r.name, "orders": r.orders,
                 "revenue": _cents(float(r.revenue)),
                 "revenue_share_pct": _ratio(100.0 * float(r.revenue), total)} for r in rows],
    }


def _cohorts(connection: sa.Connection, pc: sa.Subquery) -> list[dict[str, Any]]:
    rows = connection.execute(
        sa.select(pc.c.cohort, sa.func.count(), sa.func.count(sa.case((pc.c.orders >= 1, 1))),
                  sa.func.sum(pc.c.orders), sa.func.sum(pc.c.revenue))
        .group_by(pc.c.cohort)).all()
    # NULL sorts first on SQLite and last on PostgreSQL: order the few cohort rows here.
    rows.sort(key=lambda r: (r[0] is None, r[0] or ""))
    return [{"cohort": cohort or UNKNOWN_COHORT, "customers": size, "buyers": buyers,
             "orders": int(orders), "revenue": _cents(float(revenue)),
             "clv": _ratio(float(revenue), size, CENTS)}
            for cohort, size, buyers, orders, revenue in rows]


def _tiers(connection: sa.Connection, pc: sa.Subquery,
           summary: dict[str, Any]) -> list[dict[str, Any]]:
    deciles = (
        sa.select(pc.c.revenue, sa.func.ntile(10).over(
            order_by=(pc.c.revenue.desc(), pc.c.customer_id)).label("decile"))
        .where(pc.c.orders >= 1)
        .subquery("deciles")
    )
    tier = sa.case(*((deciles.c.decile <= last, sa.literal_column(f"'{name}'"))
                     for name, last in TIERS[:-1]), else_=sa.literal_column(f"'{TIERS[-1][0]}'"))
    # The tier is computed in a subquery and grouped by name: PostgreSQL would not see the same
    # CASE in SELECT and GROUP BY as one expression.
    tiered = sa.select(tier.label("tier"), deciles.c.revenue).subquery("tiered")
    found = {row.tier: row for row in connection.execute(
        sa.select(tiered.c.tier, sa.func.count().label("customers"),
                  sa.func.sum(tiered.c.revenue).label("revenue"),
                  sa.func.min(tiered.c.revenue).label("low"),
                  sa.func.max(tiered.c.revenue).label("high"))
        .group_by(tiered.c.tier))}
    total = float(summary["revenue"])
    result = []
    for name, _last in TIERS:
        row = found.get(name)
        revenue = float(row.revenue) if row else 0.0
        result.append({"tier": name, "customers": row.customers if row else 0,
                       "revenue": _cents(revenue),
                       "revenue_share_pct": _ratio(100.0 * revenue, total),
                       "min_revenue": _cents(float(row.low)) if row else None,
                       "max_revenue": _cents(float(row.high)) if row else None})
    result.append({"tier": NO_ORDER_TIER, "customers": summary["customers"] - summary["buyers"],
                   "revenue": 0.0, "revenue_share_pct": 0.0 if total else None,
                   "min_revenue": None, "max_revenue": None})
    return result


# --- formatting ----------------------------------------------------------------------------------


def _cents(value: float) -> float:
    """Money as JSON shows it: to the cent, no float noise (155.68, not 155.67999999999998)."""
    return round(value, CENTS)


def _ratio(numerator: float, denominator: float, places: int = PLACES) -> float | None:
    """numerator / denominator, rounded; None (not 0) when there is nothing to divide by."""
    return None if not denominator else round(numerator / denominator, places)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _range(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{_money(low)} - {_money(high)}"


def _window_text(start: datetime | None, end: datetime | None) -> str:
    """`all data`, `from 2011-01-01T00:00:00Z`, `from ... to ... (exclusive)`."""
    if start is None and end is None:
        return "all data"
    parts = ([] if start is None else [f"from {iso(start)}"]) + (
        [] if end is None else [f"to {iso(end)} (exclusive)"])
    return " ".join(parts)

