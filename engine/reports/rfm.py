"""`retain report rfm`: RFM scores and named segments (DESIGN section 1), with counts and revenue.

Definitions (docs/REPORTS.md, "RFM", says the same; engine/store/facts.py holds the SQL):

- Over the customers with at least one purchase, R = `last_purchase_at`, F = `purchase_count` and
  M = `total_spent` (purchase revenue, returns not subtracted), the facts sync keeps. M is
  compared rounded to 4 decimals, so float summation noise never outranks the customer_id rule
  (`engine.store.facts.revenue_key`).
- Each is scored 1-5 by `NTILE(5) OVER (ORDER BY value ASC, customer_id ASC)`: 5 is the most
  recent / most frequent / highest. Equal values are split by customer_id compared byte by byte
  (`COLLATE "C"` on PostgreSQL), so both databases give every customer the same scores. NTILE puts
  n // 5 customers in each score and one more in the first n % 5 scores.
- The segment follows from R and F by `engine.sync.facts.RFM_SEGMENTS`.

The scores are computed live by the same query that sync uses for the `rfm_score` /
`rfm_segment` facts, so after a sync the report and the facts agree. Everything is aggregated in
the database, grouped by (R, F, M): at most 125 rows come back, whatever the number of customers;
only `--json` fetches the per-customer list, ordered by customer_id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.reports.html import HtmlPage, figure
from engine.reports.sheet import Sheet, columns
from engine.store.facts import (
    RFM_SEGMENT_ORDER,
    RFM_SEGMENTS,
    customer_id_order,
    customers,
    rfm_scores,
)

PLACES = 4  # rounding of shares and averages in JSON: removes float noise
CENTS = 2  # money is rounded to the cent everywhere, JSON included
SCORES = range(1, 6)


@dataclass(frozen=True)
class Cell:
    """The customers with one (R, F, M) score triple: how many, their revenue and value ranges."""

    r: int
    f: int
    m: int
    segment: str
    customers: int
    revenue: float
    purchases: int
    last_purchase: tuple[datetime, datetime]
    purchase_count: tuple[int, int]
    total_spent: tuple[float, float]


@dataclass(frozen=True)
class Group:
    """Cells summed: a segment, a score of one dimension, or a square of the R x F grid."""

    customers: int = 0
    revenue: float = 0.0
    purchases: int = 0
    last_purchase: tuple[datetime, datetime] | None = None
    purchase_count: tuple[int, int] | None = None
    total_spent: tuple[float, float] | None = None

    @classmethod
    def of(cls, cells: Iterable[Cell]) -> Group:
        """The sum of these cells (an empty group when there are none)."""
        chosen = list(cells)
        if not chosen:
            return cls()
        return cls(sum(c.customers for c in chosen), sum(c.revenue for c in chosen),
                   sum(c.purchases for c in chosen), _span(c.last_purchase for c in chosen),
                   _span(c.purchase_count for c in chosen), _span(c.total_spent for c in chosen))


@dataclass(frozen=True)
class RfmReport:
    """RFM over the customers with a purchase: cells of (R, F, M), and optionally each customer."""

    cells: list[Cell]
    without_purchase: int
    customer_rows: list[dict[str, Any]] | None = field(default=None)

    @property
    def scored(self) -> int:
        """Customers with at least one purchase (the ones RFM ranks)."""
        return sum(c.customers for c in self.cells)

    @property
    def revenue(self) -> float:
        """Their purchase revenue."""
        return sum(c.revenue for c in self.cells)

    def segment(self, name: str) -> Group:
        """The customers of one segment."""
        return Group.of(c for c in self.cells if c.segment == name)

    def score(self, dimension: str, value: int) -> Group:
        """The customers whose `dimension` ("r", "f" or "m") score is `value`."""
        return Group.of(c for c in self.cells if getattr(c, dimension) == value)

    def square(self, r: int, f: int) -> Group:
        """The customers with these R and F scores (one square of the segment grid)."""
        return Group.of(c for c in self.cells if (c.r, c.f) == (r, f))

    def to_json(self) -> dict[str, Any]:
        """The `--json` document: totals, segments, score ranges, the R x F grid, customers."""
        document: dict[str, Any] = {
            "customers_scored": self.scored,
            "customers_without_purchase": self.without_purchase,
            "revenue": _money(self.revenue),
            "segments": [self._segment_json(name) for name in RFM_SEGMENT_ORDER],
            "scores": {dimension: [self._score_json(dimension, s) for s in SCORES]
                       for dimension in ("r", "f", "m")},
            "grid": [{"r": r, "f": f, "segment": _segment_of(r, f),
                      "customers": self.square(r, f).customers}
                     for r in SCORES for f in SCORES],
        }
        if self.customer_rows is not None:
            document["customers"] = self.customer_rows
        return document

    def sheets(self) -> list[Sheet]:
        """Segments, what each score means, and the R x F grid; without purchases, a clear note.
        An 80-column terminal gets each segment's size and revenue; its rule and averages come
        with --wide (and in JSON and HTML)."""
        if not self.scored:
            return [Sheet("RFM", columns(["metric", "value"]), self._summary_rows(), _EMPTY)]
        return [
            Sheet("RFM segments", columns(_SEGMENT_COLUMNS, text=2, wide=(
                "R, F", "avg purchases", "avg revenue")), self._segment_rows(), self._caption()),
            Sheet("RFM scores: the values each score covers",
                  columns(_SCORE_COLUMNS, wide=("customers",), wrap=tuple(_SCORE_COLUMNS[2:])),
                  self._score_rows(), "NTILE(5): 5 is the most recent / frequent / highest. "
                  "R: the UTC day of the last purchase."),
            Sheet("Customers by R (rows) and F (columns) score", columns(_GRID_COLUMNS),
                  self._grid_rows(), "Each square's segment is in docs/REPORTS.md."),
        ]

    def html(self, page: HtmlPage) -> None:
        """Sections for `--html`: customers and revenue per segment as bars, the grid, tables."""
        page.heading("RFM segments")
        if not self.scored:
            page.table(["metric", "value"], self._summary_rows())
            page.note(_EMPTY)
            return
        page.note(self._caption())
        page.chart(self._segment_chart(), "Customers and revenue per RFM segment")
        page.table(_SEGMENT_COLUMNS, self._segment_rows())
        page.heading("Customers by R and F score")
        page.chart(self._grid_chart(), "Customers per R and F score, labelled with the segment")
        page.table(_GRID_COLUMNS, self._grid_rows())
        page.heading("What each score covers")
        page.table(_SCORE_COLUMNS, self._score_rows())
        page.note("Scores are NTILE(5) over the customers with a purchase, ordered by the value "
                  "then customer_id: 5 is the most recent / most frequent / highest.")

    # --- pieces -------------------------------------------------------------------------------

    def _segment_json(self, name: str) -> dict[str, Any]:
        group = self.segment(name)
        return {
            "segment": name, "rule": _rule(name), "customers": group.customers,
            "customers_pct": _pct(group.customers, self.scored),
            "revenue": _money(group.revenue), "revenue_pct": _pct(group.revenue, self.revenue),
            "avg_purchases": _avg(group.purchases, group.customers),
            "avg_revenue": _avg(group.revenue, group.customers, CENTS),
            "last_purchase_from": _iso_or_none(group.last_purchase, 0),
            "last_purchase_to": _iso_or_none(group.last_purchase, 1),
        }

    def _score_json(self, dimension: str, value: int) -> dict[str, Any]:
        group = self.score(dimension, value)
        span: Any = {"r": group.last_purchase, "f": group.purchase_count,
                     "m": group.total_spent}[dimension]
        low, high = (None, None) if span is None else span
        if dimension == "r":
            low, high = _iso_or_none(span, 0), _iso_or_none(span, 1)
        elif dimension == "m" and span is not None:
            low, high = _money(low), _money(high)
        return {"score": value, "customers": group.customers, "from": low, "to": high}

    def _summary_rows(self) -> list[list[Any]]:
        return [["customers scored (with a purchase)", self.scored],
                ["customers without a purchase", self.without_purchase]]

    def _caption(self) -> str:
        return (f"{self.scored:,} customers with a purchase; {self.without_purchase:,} without "
                "one are not scored. Revenue: returns not subtracted.")

    def _segment_rows(self) -> list[list[Any]]:
        rows = []
        for name in RFM_SEGMENT_ORDER:
            group = self.segment(name)
            rows.append([name, _rule(name), group.customers,
                         _pct_text(group.customers, self.scored), _amount(group.revenue),
                         _pct_text(group.revenue, self.revenue),
                         _avg_text(group.purchases, group.customers),
                         _avg_text(group.revenue, group.customers)])
        rows.append(["all", "", self.scored, "100.0%", _amount(self.revenue), "100.0%",
                     _avg_text(sum(c.purchases for c in self.cells), self.scored),
                     _avg_text(self.revenue, self.scored)])
        return rows

    def _score_rows(self) -> list[list[Any]]:
        rows = []
        for value in SCORES:
            r, f, m = (self.score(d, value) for d in ("r", "f", "m"))
            rows.append([value, r.customers, _range(r.last_purchase, _day),
                         _range(f.purchase_count, str), _range(m.total_spent, _amount)])
        return rows

    def _grid_rows(self) -> list[list[Any]]:
        return [[f"R {r}", *(self.square(r, f).customers for f in SCORES)]
                for r in reversed(SCORES)]

    def _segment_chart(self) -> Any:
        from matplotlib.ticker import FuncFormatter  # only when a page is drawn

        chart = figure(10, 4)
        left, right = chart.subplots(1, 2, sharey=True)
        names = list(reversed(RFM_SEGMENT_ORDER))  # the best segment on top
        groups = [self.segment(name) for name in names]
        left.barh(names, [g.customers for g in groups], color="#4c72b0")
        left.set_title("customers")
        right.barh(names, [g.revenue for g in groups], color="#55a868")
        right.set_title("revenue (purchases)")
        for axes in (left, right):
            axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _position: f"{x:,.0f}"))
            axes.tick_params(axis="x", labelrotation=30)
        chart.suptitle(f"RFM segments of {self.scored:,} customers with a purchase")
        return chart

    def _grid_chart(self) -> Any:
        chart = figure(7, 5)
        axes = chart.subplots()
        counts = [[self.square(r, f).customers for f in SCORES] for r in reversed(SCORES)]
        axes.imshow(counts, cmap="Blues", aspect="auto")
        axes.set_xticks(range(5), [f"F {f}" for f in SCORES])
        axes.set_yticks(range(5), [f"R {r}" for r in reversed(SCORES)])
        peak = max(max(row) for row in counts) or 1
        for y, r in enumerate(reversed(SCORES)):
            for x, f in enumerate(SCORES):
                count = counts[y][x]
                axes.text(x, y, f"{_segment_of(r, f)}\n{count:,}", ha="center", va="center",
                          fontsize=7, color="white" if count > peak / 2 else "black")
        axes.set_title("Customers per R and F score")
        return chart


_EMPTY = ("No customer has a purchase yet, so there is nothing to score: sync purchase events "
          "first (`retain sync events FILE`).")
_SEGMENT_COLUMNS = ["segment", "R, F", "customers", "cust %", "revenue", "rev %",
                    "avg purchases", "avg revenue"]
_SCORE_COLUMNS = ["score", "customers", "R: last purchase", "F: purchases", "M: revenue"]
_GRID_COLUMNS = ["R \\ F", *(f"F {f}" for f in SCORES)]


def build(connection: sa.Connection, *, with_customers: bool = True) -> RfmReport:
    """The RFM report; `with_customers` also fetches every scored customer (for `--json`)."""
    scored = rfm_scores()
    s = scored.c
    grouped = connection.execute(
        sa.select(s.r, s.f, s.m, s.segment, sa.func.count(), sa.func.sum(s.total_spent),
                  sa.func.sum(s.purchase_count), sa.func.min(s.last_purchase_at),
                  sa.func.max(s.last_purchase_at), sa.func.min(s.purchase_count),
                  sa.func.max(s.purchase_count), sa.func.min(s.total_spent),
                  sa.func.max(s.total_spent))
        .group_by(s.r, s.f, s.m, s.segment)
        .order_by(s.r, s.f, s.m)).all()
    cells = [Cell(r, f, m, segment, count, float(revenue), int(purchases), (first, last),
                  (fewest, most), (float(low), float(high)))
             for (r, f, m, segment, count, revenue, purchases, first, last, fewest, most, low,
                  high) in grouped]
    without = connection.execute(
        sa.select(sa.func.count()).where(~(customers.c.purchase_count > 0))).scalar_one()
    rows = _customer_rows(connection) if with_customers else None
    return RfmReport(cells, without, rows)


def _customer_rows(connection: sa.Connection) -> list[dict[str, Any]]:
    """Every scored customer, by customer_id in the byte order RFM breaks ties with."""
    scored = rfm_scores()
    s = scored.c
    result = connection.execute(
        sa.select(s.customer_id, s.r, s.f, s.m, s.score, s.segment, s.last_purchase_at,
                  s.purchase_count, s.total_spent)
        .order_by(customer_id_order(s.customer_id)))
    return [{"customer_id": customer_id, "r": r, "f": f, "m": m, "score": score,
             "segment": segment, "last_purchase_at": iso(last), "purchase_count": count,
             "total_spent": _money(spent)}
            for customer_id, r, f, m, score, segment, last, count, spent in result]


def _segment_of(r: int, f: int) -> str:
    return next(name for rs, fs, name in RFM_SEGMENTS
                if rs[0] <= r <= rs[1] and fs[0] <= f <= fs[1])


def _rule(name: str) -> str:
    """The R and F scores of a segment, as DESIGN section 1 writes them ("R 1-2, F 3-4")."""
    rows: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for rs, fs, segment in RFM_SEGMENTS:  # in R order: merge "R 3, F 4-5" and "R 4, F 4-5"
        if segment != name:
            continue
        if rows and rows[-1][1] == fs and rows[-1][0][1] + 1 == rs[0]:
            rows[-1] = ((rows[-1][0][0], rs[1]), fs)
        else:
            rows.append((rs, fs))
    return "; ".join(f"R {_interval(rs)}, F {_interval(fs)}" for rs, fs in rows)


def _interval(bounds: tuple[int, int]) -> str:
    return str(bounds[0]) if bounds[0] == bounds[1] else f"{bounds[0]}-{bounds[1]}"


def _span(spans: Iterable[tuple[Any, Any]]) -> tuple[Any, Any]:
    chosen = list(spans)
    return min(low for low, _ in chosen), max(high for _, high in chosen)


def _money(value: float) -> float:
    """Money as JSON shows it: to the cent, no float noise."""
    return round(float(value), CENTS)


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, PLACES) if whole else None


def _avg(total: float, count: int, places: int = PLACES) -> float | None:
    return round(total / count, places) if count else None


def _iso_or_none(span: tuple[datetime, datetime] | None, index: int) -> str | None:
    return None if span is None else iso(span[index])


def _pct_text(part: float, whole: float) -> str:
    return "-" if not whole else f"{100.0 * part / whole:.1f}%"


def _avg_text(total: float, count: int) -> str:
    return "-" if not count else f"{total / count:,.2f}"


def _amount(value: float) -> str:
    return f"{value:,.2f}"


def _day(moment: datetime) -> str:
    return iso(moment)[:10]


def _range(span: tuple[Any, Any] | None, show: Any) -> str:
    if span is None:
        return "-"
    low, high = show(span[0]), show(span[1])
    return low if low == high else f"{low} .. {high}"

