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
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from engine.errors import DataFileError
from engine.sync.rows import REASON_KEY

FORMATS = ("csv", "jsonl")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (csv.Error, OSError, EOFError)
BOM = b"\xef\xbb\xbf"  # as Excel writes at the start of a UTF-8 file
NOT_UTF8 = "not UTF-8 text (invalid bytes shown as \ufffd)"
HAS_NUL = "contains a NUL character"

Row = tuple[int, dict[str, Any]]


class BadLine(dict[str, Any]):
    """A line that could not become a row: it carries why, and its text for `--rejects`."""

    def __init__(self, reason: str, raw: dict[str, str] | str) -> None:
        super().__init__()
        self.reason = reason
        self.raw = raw


class Rejected(Protocol):
    """What `write_rejects` needs of a rejected row (engine.sync.ingest.RowError has it)."""

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
        if binary.peek(2)[:2] == GZIP_MAGIC:
            stream = gzip.GzipFile(fileobj=binary, mode="rb")
        lines = Lines(stream)
        if fmt == "csv":
            reader = csv.reader(lines)
            header = _read_header(path, reader, lines)
            yield DataFile(path, fmt, header, _csv_rows(path, reader, header, lines), binary)
        else:
            yield DataFile(path, fmt, None, _jsonl_rows(path, lines), binary)


def read_rows(path: Path, fmt: str | None = None) -> Iterator[Row]:
    """(1-based line, row) for each row of a CSV or JSONL file; the CSV header is line 1."""
    with open_data_file(path, fmt) as data:
        yield from data.rows


class Lines:
    """A binary stream's lines as text, decoded one by one, with the lines no row can come from.

    A line that is not UTF-8 is decoded with replacement characters, and one with a NUL
    character (which PostgreSQL cannot store) is kept as it is; both are remembered with the
    reason, so that only their row is rejected, not the whole file.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        for number, raw in enumerate(self.stream, 1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                self.bad[number] = NOT_UTF8
                text = raw.decode(errors="replace")
            if "\x00" in text:
                self.bad[number] = HAS_NUL
            yield text

    def problem(self, first: int, last: int) -> str | None:
        """Why a row from lines first..last (inclusive) cannot be used, if it cannot."""
        if self.bad:
            for number in range(first, last + 1):
                if number in self.bad:
                    return self.bad[number]
        return None


def _read_header(path: Path, reader: Iterator[list[str]], lines: Lines) -> list[str]:
    try:
        header = next(reader, None)
    except _READ_ERRORS as exc:
        raise DataFileError(f"{path}:1: cannot read the header: {exc}") from exc
    if not header:
        raise DataFileError(f"{path}: empty file; a CSV file starts with a header line")
    problem = lines.problem(1, reader.line_num)  # type: ignore[attr-defined]
    if problem:
        raise DataFileError(f"{path}:1: the header is not usable: {problem}")
    header = [name.strip() for name in header]
    for index, name in enumerate(header):
        if not name:
            raise DataFileError(f"{path}:1: column {index + 1} of the header has no name")
        if name in header[:index]:
            raise DataFileError(f"{path}:1: column {name!r} appears twice in the header")
    return header


def _csv_rows(path: Path, reader: Any, header: list[str], lines: Lines) -> Iterator[Row]:
    width = len(header)
    bad = lines.bad  # (empty, hence false, for most files)
    start = reader.line_num + 1  # the line the next record starts on (cells may span lines)
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            problem = bad and lines.problem(line, start - 1)
            if len(cells) == width and not problem:
                yield line, dict(zip(header, map(str.strip, cells), strict=False))  # width checked
            elif problem:
                yield line, BadLine(problem, dict(zip(header, cells, strict=False)))
            elif cells:  # (an empty list is a blank line)
                yield line, BadLine(f"expected {width} fields as in the header, found {len(cells)}",
                                    dict(zip(header, cells, strict=False)))
    except _READ_ERRORS as exc:
        raise _unreadable(path, start - 1, exc) from exc


def _jsonl_rows(path: Path, lines: Lines) -> Iterator[Row]:
    line = 0
    try:
        for line, content in enumerate(lines, 1):  # noqa: B007  (line is used after the loop)
            if content.isspace() or not content:
                continue
            if line in lines.bad or "\\u0000" in content:
                yield line, BadLine(lines.bad.get(line, HAS_NUL), content.rstrip("\r\n"))
                continue
            try:
                value = json.loads(content)
            except json.JSONDecodeError as exc:
                text = content.rstrip("\r\n")
                column = min(exc.pos, len(text)) + 1
                yield line, BadLine(f"not valid JSON: {exc.msg} at column {column}", text)
                continue
            if isinstance(value, dict):
                yield line, value
            else:
                yield line, BadLine("not a JSON object", content.rstrip("\r\n"))
    except _READ_ERRORS as exc:
        raise _unreadable(path, line, exc) from exc


def _unreadable(path: Path, line: int, exc: Exception) -> DataFileError:
    """A failure to read further: a broken or truncated gzip file, a malformed CSV quote."""
    return DataFileError(f"{path}: cannot read after line {line}: {exc}")


def write_rejects(rejected: Sequence[Rejected], path: Path, fmt: str) -> None:
    """Write rejected rows so they can be fixed and synced again, with why each was rejected.

    CSV gets the input's columns plus a `_reason` column, JSONL each row with a `_reason` key;
    sync ignores that column, so the fixed file syncs back as it is.
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
    columns.pop(REASON_KEY, None)  # a rejects file that was rejected again
    writer = csv.writer(handle)
    writer.writerow([*columns, REASON_KEY])
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
