"""The vectorised fast path for large CSV customer files, with pyarrow (engine/sync/arrow.py reads).

`engine.sync.rows.customer_values` stays the definition of a customer row. This module computes,
column by column, the stored values of the rows it can vouch for exactly as that definition and
`engine.sync.ingest._new_customer` would give them for a new customer: printable-ASCII cells, a
non-empty id, an email the EMAIL pattern matches, created_at of the arrow path's time forms, a
birthday `YYYY-MM-DD` that is a date, a time zone and tags judged by the per-row functions
themselves (once per distinct value), every other column an attribute. Every other row goes
through `customer_values`, as the row dict `files._csv_rows` would build, so its messages are the
per-row path's. Whether a fast row is a new customer is the writer's question
(engine/sync/ingest.py): one that exists already is handed back as its row, per row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import compress
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from engine.sync import arrow
from engine.sync.arrow import (
    ODD,
    ParsedBatch,
    columnar_rows,
    kept_apart,
    text_object,
    utc_times,
)
from engine.sync.bulk import insert_new_customers
from engine.sync.files import BadLine, DataFile, Row
from engine.sync.report import SyncReport
from engine.sync.rows import (
    CUSTOMER_PARSERS,
    EMAIL,
    REASON_KEY,
    json_text,
    known_zone,
    split_tags,
)

STORED = ("customer_id", "email", "name", "created_at", "birthday", "timezone", "country",
          "segment", "tags", "attributes")
"""The columns of a fast row's values, in this order; the others are a new customer's defaults."""
BLOCK_BYTES = 1 << 20  # ~9,000 customer rows per block
_EMAIL = "^" + EMAIL.pattern.replace(r"\s", " ") + "$"  # \s: only the space is printable ASCII
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TEXT = ("name", "country", "segment")
_SKIPPED = frozenset((*CUSTOMER_PARSERS, "customer_id", REASON_KEY))


class CustomerBatch(ParsedBatch):
    """A block of customer rows: `fast` holds the values in STORED order of the rows read from
    `lines`; `repeats` whether some customer id comes more than once among them."""

    lines: list[int] | range
    repeats: bool


def _pa() -> tuple[Any, Any]:
    return arrow.pa, arrow.pc


def parse_customers(block: Any, header: list[str], first: int, clean: bool) -> CustomerBatch:
    """The rows of one block: the fast ones' stored values, the others as rows."""
    pa, pc = _pa()
    raw = block.columns
    size = block.num_rows
    column = {name: pc.ascii_trim(raw[index], " ") for index, name in enumerate(header)}
    ok = pa.array([True] * size)
    for array in () if clean else raw:
        ok = pc.and_(ok, pc.invert(pc.match_substring_regex(array, ODD)))
    ok = pc.and_(ok, pc.not_equal(column["customer_id"], ""))
    values: dict[str, Any] = {"customer_id": column["customer_id"]}
    for name in _TEXT:
        values[name] = _blank_null(column.get(name), size)
    checks = {"email": _email, "created_at": _created_at, "birthday": _birthday,
              "timezone": _timezone, "tags": _tag_lists}
    for name, check in checks.items():
        stored, good = check(column.get(name), size)
        values[name] = stored
        ok = pc.and_(ok, good)
    values["attributes"] = text_object(column, _SKIPPED, size)
    outputs = [values[name] for name in STORED]
    outputs, lines, slow = kept_apart(ok, outputs, raw, header, first)
    fast = list(zip(*(array.to_pylist() for array in outputs), strict=True))
    batch = CustomerBatch(fast, slow, first, header, raw)  # type: ignore[arg-type]
    batch.lines = lines
    batch.repeats = pc.count_distinct(outputs[0]).as_py() < len(fast)
    return batch


def _blank_null(text: Any, size: int) -> Any:
    """The text, None where empty (a blank cell sets no value); all None without the column."""
    pa, pc = _pa()
    if text is None:
        return pa.nulls(size, pa.string())
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _email(text: Any, size: int) -> tuple[Any, Any]:
    pa, pc = _pa()
    stored = _blank_null(text, size)
    if text is None:
        return stored, pa.array([True] * size)
    return stored, pc.or_(pc.equal(text, ""), pc.match_substring_regex(text, _EMAIL))


def _created_at(text: Any, size: int) -> tuple[Any, Any]:
    """As stored: utc_text of the time (engine/sync/arrow.py `utc_times`); None when empty."""
    pa, pc = _pa()
    if text is None:
        return pa.nulls(size, pa.string()), pa.array([True] * size)
    when, good = utc_times(text)
    empty = pc.equal(text, "")
    return (pc.if_else(empty, pa.scalar(None, pa.string()), when),
            pc.or_(empty, pc.fill_null(good, False)))


def _birthday(text: Any, size: int) -> tuple[Any, Any]:
    """As stored (ISO date text, which is the cell itself); a date's validity as `utc_times`
    judges the midnight of that day."""
    pa, pc = _pa()
    if text is None:
        return pa.nulls(size, pa.string()), pa.array([True] * size)
    shaped = pc.match_substring_regex(text, _DATE)
    _, valid = utc_times(pc.binary_join_element_wise(pc.if_else(shaped, text, "2000-01-01"),
                                                     "T00:00:00", ""))
    empty = pc.equal(text, "")
    return _blank_null(text, size), pc.or_(empty, pc.and_(shaped, pc.fill_null(valid, False)))


def _by_distinct(text: Any, judge: Any) -> tuple[Any, Any]:
    """(stored value, good) of each cell, from `judge(value) -> stored or None` run once per
    distinct value (time zones and tag lists repeat)."""
    pa, pc = _pa()
    distinct = pc.unique(text)
    judged = [judge(value) for value in distinct.to_pylist()]
    position = pc.index_in(text, value_set=distinct)
    stored = pc.take(pa.array(judged, pa.string()), position)
    return stored, pc.is_valid(stored)


def _timezone(text: Any, size: int) -> tuple[Any, Any]:
    pa, pc = _pa()
    if text is None:
        return pa.nulls(size, pa.string()), pa.array([True] * size)
    stored, good = _by_distinct(text, lambda name: name if known_zone(name) else None)
    empty = pc.equal(text, "")
    return pc.if_else(empty, pa.scalar(None, pa.string()), stored), pc.or_(empty, good)


def _tag_lists(text: Any, size: int) -> tuple[Any, Any]:
    """The tags as stored JSON (an empty cell: none, "[]"), as `rows._tags` splits them."""
    pa, pc = _pa()
    if text is None:
        return pa.array(["[]"] * size, pa.string()), pa.array([True] * size)
    return _by_distinct(text, lambda value: json_text(split_tags(value)))


PerRow = Callable[[sa.Connection, list[Row], SyncReport, datetime], tuple[set[str], set[str]]]


def write_customer_batch(connection: sa.Connection, batch: CustomerBatch, report: SyncReport,
                         now: datetime, per_row: PerRow) -> tuple[set[str], set[str]]:
    """Insert the batch's fast rows of new customers; every other row goes to `per_row`.

    Per row go the rows parsed per row, every row of a customer id that comes more than once in
    the batch (they fold in line order, as the per-row path folds them), and the fast rows
    whose customer exists (an update). Returns the ids inserted and the ids updated.
    """
    slow: list[Row] = list(batch.slow)
    new: list[tuple[Any, ...]] = batch.fast  # type: ignore[assignment]
    lines = batch.lines
    if slow or batch.repeats:  # (most blocks have neither)
        count = Counter(values[0] for values in new)
        count.update(row.get("customer_id", "") for _, row in slow if row.__class__ is not BadLine)
        kept = [count[values[0]] == 1 for values in new]
        slow.extend((line, batch.raw(line)) for line, keep in zip(lines, kept, strict=True)
                    if not keep)
        new = list(compress(new, kept))
        lines = list(compress(lines, kept))
    existed = insert_new_customers(connection, new, now)
    if existed:
        slow.extend((line, batch.raw(line)) for line, values in zip(lines, new, strict=True)
                    if values[0] in existed)
    report.read += len(new) - len(existed)
    report.inserted += len(new) - len(existed)
    inserted, updated = per_row(connection, sorted(slow, key=itemgetter(0)), report, now) \
        if slow else (set(), set())
    return inserted | ({values[0] for values in new} - existed), updated


def customer_rows(data: DataFile) -> Iterator[ParsedBatch | Row] | None:
    """Rows and parsed batches of a large plain CSV customer file; None when it is not one."""
    if data.header is None or "customer_id" not in data.header:
        return None
    return columnar_rows(data, parse_customers, BLOCK_BYTES, quotes=True)
