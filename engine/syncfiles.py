"""Reading sync data files (CSV or JSONL, optionally gzip) row by row, and writing rejected rows.

Files are streamed, never loaded whole, so a sync of millions of rows runs in constant memory.
Text is UTF-8; a byte-order mark (as Excel writes) is skipped. Compression is recognised by its
magic bytes, so `events.csv.gz` and a gzip file without the suffix both work. A line that cannot
become a row (broken JSON, the wrong number of CSV fields) is handed on as a `BadLine`, so it is
reported with its line number like any other bad row and the rest of the file is still read.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from engine.errors import DataFileError

FORMATS = ("csv", "jsonl")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
GZIP_MAGIC = b"\x1f\x8b"
REASON_COLUMN = "reason"
REASON_KEY = "_reason"

Row = tuple[int, dict[str, Any]]


class BadLine(dict[str, Any]):
    """A line that could not become a row: it carries why, and its text for `--rejects`."""

    def __init__(self, reason: str, raw: dict[str, str] | str) -> None:
        super().__init__()
        self.reason = reason
        self.raw = raw


class Rejected(Protocol):
    """What `write_rejects` needs of a rejected row (engine.sync.RowError has it)."""

    line: int
    reason: str
    raw: dict[str, str] | str


def detect_format(path: Path, fmt: str | None = None) -> str:
    """`csv` or `jsonl`: the one asked for, else from the file name (a `.gz` suffix is skipped)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataFileError(f"{path}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    found = SUFFIXES.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise DataFileError(f"{path}: unknown file format; name it .csv or .jsonl (optionally .gz)"
                            " or pass --format csv|jsonl")
    return found


@dataclass
class DataFile:
    """An open data file: its rows, its CSV header (None for JSONL), and the bytes read so far."""

    path: Path
    fmt: str
    header: list[str] | None
    rows: Iterator[Row]
    binary: IO[bytes]

    def position(self) -> int:
        """Bytes of the file (compressed, for gzip) consumed so far: progress against its size."""
        return self.binary.tell()


@contextmanager
def open_data_file(path: Path, fmt: str | None = None) -> Iterator[DataFile]:
    """Open `path` for streaming; DataFileError when it is missing or cannot be read at all."""
    fmt = detect_format(path, fmt)
    try:
        binary = path.open("rb")
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise DataFileError(f"{path}: {reason}") from exc
    with binary:
        stream: IO[bytes] = binary
        if binary.peek(2)[:2] == GZIP_MAGIC:  # type: ignore[attr-defined]
            stream = gzip.GzipFile(fileobj=binary, mode="rb")
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="" if fmt == "csv" else None)
        if fmt == "csv":
            header = _read_header(path, text)
            yield DataFile(path, fmt, header, _guard(path, _csv_rows(text, header)), binary)
        else:
            yield DataFile(path, fmt, None, _guard(path, _jsonl_rows(text)), binary)


def read_rows(path: Path, fmt: str | None = None) -> Iterator[Row]:
    """(1-based line, row) for each row of a CSV or JSONL file; the CSV header is line 1."""
    with open_data_file(path, fmt) as data:
        yield from data.rows


def _read_header(path: Path, text: io.TextIOWrapper) -> list[str]:
    try:
        header = next(csv.reader(text), None)
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataFileError(f"{path}:1: cannot read the header: {exc}") from exc
    if not header:
        raise DataFileError(f"{path}: empty file; a CSV file starts with a header line")
    header = [name.strip() for name in header]
    for index, name in enumerate(header):
        if not name:
            raise DataFileError(f"{path}:1: column {index + 1} of the header has no name")
        if name in header[:index]:
            raise DataFileError(f"{path}:1: column {name!r} appears twice in the header")
    return header


def _csv_rows(text: io.TextIOWrapper, header: list[str]) -> Iterator[Row]:
    reader = csv.reader(text)
    width = len(header)
    done = 1  # lines consumed so far; a quoted cell may span lines, so track the start
    for cells in reader:
        line, done = done + 1, reader.line_num + 1
        if not cells:
            continue  # a blank line
        if len(cells) != width:
            yield line, BadLine(f"expected {width} fields as in the header, found {len(cells)}",
                                dict(zip(header, cells, strict=False)))
            continue
        yield line, dict(zip(header, [cell.strip() for cell in cells], strict=True))


def _jsonl_rows(text: io.TextIOWrapper) -> Iterator[Row]:
    for line, content in enumerate(text, 1):
        if not content.strip():
            continue
        try:
            value = json.loads(content)
        except json.JSONDecodeError as exc:
            yield line, BadLine(f"not valid JSON: {exc.msg} at column {exc.colno}",
                                content.rstrip("\r\n"))
            continue
        if not isinstance(value, dict):
            yield line, BadLine("not a JSON object", content.rstrip("\r\n"))
            continue
        yield line, value


def _guard(path: Path, rows: Iterator[Row]) -> Iterator[Row]:
    """Turn a failure to read further (bad encoding, broken gzip) into a DataFileError."""
    line = 1
    try:
        for line, row in rows:  # noqa: B007  (line is used after the loop)
            yield line, row
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text after line {line}: {exc.reason}") from exc
    except (csv.Error, OSError, EOFError) as exc:
        raise DataFileError(f"{path}: cannot read after line {line}: {exc}") from exc


def write_rejects(rejected: Sequence[Rejected], path: Path, fmt: str) -> None:
    """Write rejected rows so they can be fixed and synced again, with why each was rejected.

    CSV gets the input's columns plus a `reason` column; JSONL gets each row with a `_reason` key.
    """
    with path.open("w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            _write_csv(rejected, handle)
        else:
            for item in rejected:
                handle.write(json.dumps({**_as_object(item.raw), REASON_KEY: item.reason},
                                        ensure_ascii=False, default=str) + "\n")


def _write_csv(rejected: Sequence[Rejected], handle: IO[str]) -> None:
    columns: dict[str, None] = {}
    for item in rejected:
        columns.update(dict.fromkeys(_as_object(item.raw)))
    reason = REASON_COLUMN if REASON_COLUMN not in columns else REASON_KEY
    writer = csv.writer(handle)
    writer.writerow([*columns, reason])
    for item in rejected:
        raw = _as_object(item.raw)
        writer.writerow([_cell(raw.get(name)) for name in columns] + [item.reason])


def _as_object(raw: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
