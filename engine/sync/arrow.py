"""A vectorised fast path for large CSV event files, with pyarrow.

`engine.sync.rows` stays the definition of an event row: its columns (EVENT_IDENTIFIERS,
EVENT_NUMBERS) and its per-type rules (TYPE_RULES) are read from there, not restated. This module
reads a plain CSV file in blocks with `pyarrow.csv` and computes, column by column, the values of
the rows it can handle exactly as `event_values` would: printable-ASCII cells, non-empty ids,
times of the form `YYYY-MM-DD[T ]HH:MM:SS[.fff|.ffffff][Z|+HH:MM]`, plain decimal numbers, no
broken type rule. Every other row goes through `event_values` itself, as a row dict built exactly
as `files._csv_rows` does, so its messages are the per-row path's.

Line numbers must stay exact, so only files where every physical line is one record take this
path: uncompressed UTF-8 without a byte-order mark, quotes, carriage returns, NUL characters or
blank lines (checked by a scan of the whole file first). A line with the wrong number of fields
stops pyarrow; the rest of the file is then read by the per-row reader from that block on.
"""

from __future__ import annotations

import codecs
import queue
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

from engine.sync.files import BOM, GZIP_MAGIC, DataFile, Row, open_data_file
from engine.sync.rows import (
    EVENT_COLUMNS,
    EVENT_IDENTIFIERS,
    EVENT_NUMBERS,
    REASON_KEY,
    TYPE_RULES,
    EventValues,
    json_text,
)

MIN_BYTES = 8 * 1024 * 1024  # smaller files keep the per-row reader
BLOCK_BYTES = 1 << 18  # ~4,500 event rows per block: less memory than larger blocks
SCAN_BYTES = 1 << 20
AHEAD = 2  # parsed blocks waiting at most: memory stays bounded
ODD = r'[^ !#-\[\]-~]'  # anything but printable ASCII without `"` and `\`: per-row path
_TIME = (r"^(?P<d>\d{4}-\d{2}-\d{2})[T ](?P<h>\d{2}:\d{2}:\d{2})(?P<f>(?:\.\d{3}|\.\d{6})?)"
         r"(?P<tz>(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?)$")
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_CLEAN = bytes(byte for byte in range(32, 127) if byte not in b'"\\') + b"\n"
_EDGE_YEARS = ["0000", "0001", "9999"]  # outside datetime's range, or near it: per row
_NOT_PROPERTIES = frozenset((*EVENT_COLUMNS, *EVENT_NUMBERS, "properties", REASON_KEY))


class ParsedBatch:
    """A block of rows: the ones parsed here (line, None, values), the others as plain rows."""

    def __init__(self, fast: list[tuple[int, None, EventValues]], slow: list[Row], first: int,
                 header: list[str], columns: list[pa.Array]) -> None:
        self.fast, self.slow, self.first = fast, slow, first
        self.header, self.columns = header, columns

    def __len__(self) -> int:
        return len(self.fast) + len(self.slow)

    def merge(self, parsed: list[tuple[int, Any, EventValues]]) -> list[tuple[int, Any, Any]]:
        """The fast rows and the parsed slow rows, in line order."""
        return sorted(self.fast + parsed, key=itemgetter(0)) if parsed else self.fast

    def raw(self, line: int) -> dict[str, str]:
        """The row of `line` as the per-row reader gives it."""
        index = line - self.first
        return {name: column[index].as_py().strip()
                for name, column in zip(self.header, self.columns, strict=True)}


Parse = Callable[[Any, list[str], int, bool], ParsedBatch]
"""A block's parser: (record batch, header, its first line, whether the file is clean)."""


def event_rows(data: DataFile) -> Iterator[ParsedBatch | Row] | None:
    """Rows and parsed batches of a large plain CSV event file; None when it is not one."""
    if data.header is None or "properties" in data.header:
        return None
    return columnar_rows(data, _parse)


def columnar_rows(data: DataFile, parse: Parse, block_bytes: int | None = None,
                  quotes: bool = False) -> Iterator[ParsedBatch | Row] | None:
    """Rows and batches that `parse` made of a large plain CSV file; None when it is not one.

    `quotes`: fields may be quoted as `_scan` allows (the customer file's tags are)."""
    header = data.header
    if data.fmt != "csv" or header is None or data.path.stat().st_size < MIN_BYTES:
        return None
    clean = _scan(data.path, quotes)
    if clean is None:
        return None
    load_pyarrow()
    return _read(data, header, clean, parse, block_bytes or BLOCK_BYTES, quotes)


pa: Any = None
pc: Any = None
pcsv: Any = None


def load_pyarrow() -> None:
    """Import pyarrow only when a file takes this path: the import alone costs ~80 MB."""
    global pa, pc, pcsv  # noqa: PLW0603
    import pyarrow
    import pyarrow.compute
    import pyarrow.csv

    pa, pc, pcsv = pyarrow, pyarrow.compute, pyarrow.csv


def _scan(path: Path, quotes: bool = False) -> bool | None:
    """None unless every line of the file is one record (see the module's docstring); else
    whether the file is all printable ASCII (then no row needs checking for other characters).

    `quotes`: a line may quote whole fields, each without a quote or line end inside
    (`QUOTED_LINE`), which the csv module and pyarrow read alike; any other quote: None.
    """
    clean = True
    decoder = codecs.getincrementaldecoder("utf-8")()
    previous = tail = b""
    allowed = _CLEAN + b'"' if quotes else _CLEAN
    with path.open("rb") as handle:
        start = handle.read(3)
        if start[:2] == GZIP_MAGIC or start == BOM:
            return None
        handle.seek(0)
        while chunk := handle.read(SCAN_BYTES):
            if b"\r" in chunk:  # CRLF line ends are fine, as for the csv module
                chunk = chunk.replace(b"\r\n", b"\n")
            if (b"\r" in chunk or b"\x00" in chunk or b"\n\n" in chunk
                    or (previous.endswith(b"\n") and chunk.startswith(b"\n"))):
                return None
            if b'"' in chunk or b'"' in tail:
                if not quotes:
                    return None
                tail = _quoted_lines_simple(tail + chunk)
                if tail is None:
                    return None
            else:
                tail = b""
            clean = clean and not chunk.translate(None, allowed)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                return None
            previous = chunk
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return None
    if tail and _quoted_lines_simple(tail + b"\n") is None:
        return None
    return clean


QUOTED_LINE = re.compile(rb'(?:[^",\n]*|"[^"\n]*")(?:,(?:[^",\n]*|"[^"\n]*"))*')
"""A line whose every field is either unquoted without quotes or wholly quoted without one."""


def _quoted_lines_simple(text: bytes) -> bytes | None:
    """None unless every whole line of `text` with a quote is a QUOTED_LINE; else the text
    after its last line end (the start of a line the next chunk completes)."""
    end = text.rfind(b"\n")
    at = text.find(b'"', 0, end)
    while at != -1:
        first = text.rfind(b"\n", 0, at) + 1
        last = text.find(b"\n", at)
        if not QUOTED_LINE.fullmatch(text, first, last):
            return None
        at = text.find(b'"', last, end)
    return text[end + 1:]


def _read(data: DataFile, header: list[str], clean: bool, parse: Parse,
          block_bytes: int, quotes: bool) -> Iterator[ParsedBatch | Row]:
    """The blocks, parsed in a thread (pyarrow releases the GIL) while the caller writes."""
    done: queue.Queue[ParsedBatch | BaseException | int] = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()
    worker = threading.Thread(target=_produce,
                              args=(data, header, clean, done, stop, parse, block_bytes,
                                    quotes),
                              daemon=True, name="retain-syncarrow")
    worker.start()
    try:
        while True:
            item = done.get()
            if isinstance(item, ParsedBatch):
                yield item
            elif isinstance(item, BaseException):
                raise item
            else:
                break
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting to put
            with suppress(queue.Empty):
                done.get(timeout=0.05)
    line = item  # type: ignore[assignment]
    if line:  # a line with the wrong number of fields from `line` on: the per-row reader
        with open_data_file(data.path, "csv") as again:
            for row in again.rows:
                if row[0] >= line:
                    yield row


def _produce(data: DataFile, header: list[str], clean: bool, done: queue.Queue[Any],
             stop: threading.Event, parse: Parse, block_bytes: int, quotes: bool) -> None:
    """Put each parsed block, then 0 at the end, or the line to go on from per row."""
    names = [f"c{index}" for index in range(len(header))]
    line = 2  # the header is line 1
    try:
        reader = pcsv.open_csv(
            data.binary,  # just after the header: progress still follows data.position()
            read_options=pcsv.ReadOptions(column_names=names, block_size=block_bytes),
            parse_options=pcsv.ParseOptions(quote_char='"' if quotes else False,
                                            double_quote=False),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False))
        for block in reader:
            if stop.is_set():
                return
            done.put(parse(block, header, line, clean))
            line += block.num_rows
        done.put(0)
    except pa.ArrowInvalid:
        done.put(line)
    except BaseException as exc:  # noqa: BLE001  (handed to the reading thread)
        done.put(exc)


def _parse(block: pa.RecordBatch, header: list[str], first: int, clean: bool) -> ParsedBatch:
    raw = block.columns
    column = {name: pc.ascii_trim(raw[index], " ") for index, name in enumerate(header)}
    ok = pa.array([True] * block.num_rows)
    for array in () if clean else raw:
        ok = pc.and_(ok, pc.invert(pc.match_substring_regex(array, ODD)))
    for name in EVENT_IDENTIFIERS:
        ok = pc.and_(ok, pc.not_equal(column[name], ""))
    when, good = utc_times(column["occurred_at"])
    ok = pc.and_(ok, good)
    numbers = []
    for name in EVENT_NUMBERS:
        values, good = _numbers(column.get(name), block.num_rows)
        numbers.append(values)
        ok = pc.and_(ok, good)
    ok = pc.and_(ok, _type_rules_kept(column["type"], dict(zip(EVENT_NUMBERS, numbers,
                                                                 strict=True))))
    outputs = [column["event_id"], column["customer_id"], column["type"], when, *numbers,
               text_object(column, _NOT_PROPERTIES, block.num_rows)]
    outputs, lines, slow = kept_apart(ok, outputs, raw, header, first)
    values = zip(*(array.to_pylist() for array in outputs), strict=True)
    fast = list(zip(lines, repeat(None), values, strict=False))
    return ParsedBatch(fast, slow, first, header, raw)


def _type_rules_kept(kind: pa.Array, numbers: dict[str, pa.Array]) -> pa.Array:
    """Where no rejecting rule of engine.sync.rows.TYPE_RULES is broken; other rows go per row,
    which rejects them with the rule's message."""
    kept = pa.array([True] * len(kind))
    for rule in TYPE_RULES:
        if rule.warn:
            continue  # kept: engine.sync.ingest lists the warning, whichever path read the row
        value = numbers[rule.column]
        broken = pc.is_null(value) if rule.required else pa.array([False] * len(kind))
        if rule.low is not None:
            broken = pc.or_(broken, pc.fill_null(pc.less(value, rule.low), False))
        if rule.high is not None:
            broken = pc.or_(broken, pc.fill_null(pc.greater(value, rule.high), False))
        kept = pc.and_(kept, pc.invert(pc.and_(pc.equal(kind, rule.type), broken)))
    return kept


def utc_times(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """utc_text of each time, and where it is exact (elsewhere the text is meaningless)."""
    parts = pc.extract_regex(text, _TIME)
    good = pc.is_valid(parts)
    day, clock, fraction, zone = (parts.field(name) for name in ("d", "h", "f", "tz"))
    local = pc.binary_join_element_wise(day, clock, "T")
    moment = pc.strptime(local, format="%Y-%m-%dT%H:%M:%S", unit="s", error_is_null=True)
    digits = pc.replace_substring_regex(pc.if_else(good, local, "0"), "[-T:]", "")
    same = pc.equal(_digits(moment), pc.cast(digits, pa.int64()))  # no Feb 30, no 24:00
    good = pc.and_(good, pc.fill_null(same, False))
    good = pc.and_(good, pc.invert(pc.is_in(pc.utf8_slice_codeunits(day, 0, 4), pa.array(_EDGE_YEARS))))
    micro = pc.utf8_rpad(pc.if_else(pc.equal(fraction, ""), ".", fraction), 7, "0")
    offset = pc.and_(pc.not_equal(zone, ""), pc.not_equal(zone, "Z"))
    if pc.any(pc.and_(offset, good)).as_py():
        hours = pc.cast(pc.if_else(offset, pc.utf8_slice_codeunits(zone, 1, 3), "0"), pa.int64())
        minutes = pc.cast(pc.if_else(offset, pc.utf8_slice_codeunits(zone, 4, 6), "0"),
                          pa.int64())
        seconds = pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60))
        seconds = pc.if_else(pc.equal(pc.utf8_slice_codeunits(zone, 0, 1), "-"),
                             pc.negate(seconds), seconds)
        utc = pc.subtract(moment, pc.cast(seconds, pa.duration("s")))
        whole = pc.strftime(utc, format="%Y-%m-%d %H:%M:%S")
    else:
        whole = pc.binary_join_element_wise(day, clock, " ")
    return pc.binary_join_element_wise(whole, micro, ""), good


def _digits(moment: pa.Array) -> pa.Array:
    """YYYYMMDDhhmmss of each time, as an integer."""
    total = pc.year(moment)
    for part, scale in ((pc.month, 100), (pc.day, 100), (pc.hour, 100), (pc.minute, 100),
                        (pc.second, 100)):
        total = pc.add(pc.multiply(total, scale), part(moment))
    return total


def _numbers(text: pa.Array | None, size: int) -> tuple[pa.Array, pa.Array]:
    """Each cell as a float (None when empty), and where that is exact."""
    if text is None:
        return pa.nulls(size, pa.float64()), pa.array([True] * size)
    present = pc.not_equal(text, "")
    plain = pc.match_substring_regex(text, _NUMBER)
    number = pc.cast(pc.if_else(plain, text, "0"), pa.float64())
    good = pc.or_(pc.invert(present), pc.and_(plain, pc.is_finite(number)))
    return pc.if_else(present, number, pa.scalar(None, pa.float64())), good


def kept_apart(ok: pa.Array, outputs: list[pa.Array], raw: list[pa.Array], header: list[str],
               first: int) -> tuple[list[pa.Array], range | list[int], list[Row]]:
    """The block's computed columns and lines where `ok`; the other rows as read (line, dict
    of stripped cells), for the per-row code to judge."""
    lines: range | list[int] = range(first, first + len(ok))
    if pc.all(ok).as_py():
        return outputs, lines, []
    bad = pc.indices_nonzero(pc.invert(ok))
    cells = [pc.take(array, bad).to_pylist() for array in raw]
    slow = [(first + index, dict(zip(header, map(str.strip, row), strict=True)))
            for index, row in zip(bad.to_pylist(), zip(*cells, strict=True), strict=True)]
    kept = [pc.filter(array, ok) for array in outputs]
    return kept, pc.filter(pa.array(lines), ok).to_pylist(), slow  # type: ignore[return-value]


def text_object(column: dict[str, pa.Array], skipped: frozenset[str] | set[str],
                size: int) -> pa.Array:
    """A JSON object per row of every non-empty column but `skipped`, as text, in the
    header's order: an event's properties, a customer's attributes."""
    pieces = []
    for name, text in column.items():
        if name not in skipped:
            piece = pc.binary_join_element_wise(f",{json_text(name)}:\"", text, '"', "")
            pieces.append(pc.if_else(pc.equal(text, ""), "", piece))
    if not pieces:
        return pa.array(["{}"] * size, pa.string())
    joined = pc.binary_join_element_wise(*pieces, "")  # each piece starts with a comma
    wrapped = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 1), "}", "")
    return pc.if_else(pc.equal(joined, ""), "{}", wrapped)
