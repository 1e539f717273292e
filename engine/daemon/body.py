"""Reading a request body safely: a size bound before anything is buffered or decompressed.

A body is read from the stream until it passes its limit, and gzip (`Content-Encoding: gzip`,
which Segment's SDKs send) is undone with `zlib`'s `max_length`, so a few kilobytes that expand
to gigabytes (a zip bomb) stop at the limit plus one byte: the limit always applies to the JSON
as it will be parsed. JSON is parsed strictly (no NaN or Infinity) and text that no database
can store (lone surrogates, NUL characters) is refused with the parse errors, as not JSON
Retain can accept.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

GZIP_WINDOW = 16 + zlib.MAX_WBITS  # zlib reads the gzip header and trailer with this
GZIP_SLACK = 64 * 1024  # incompressible data grows a little when gzipped; the raw bound allows it


class BodyTooLarge(Exception):  # noqa: N818  (an outcome, answered with 413)
    """The body, after gzip is undone, is larger than the endpoint's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class NotJson(Exception):  # noqa: N818  (an outcome, answered with 400)
    """The body cannot be read as JSON (or gzip was announced and the data is not gzip)."""


async def read_body(chunks: AsyncIterator[bytes], encoding: str | None, limit: int) -> bytes:
    """The whole body, decompressed when `encoding` is gzip; BodyTooLarge past `limit` bytes."""
    gzipped = (encoding or "").strip().lower() in ("gzip", "x-gzip")
    inflater = zlib.decompressobj(GZIP_WINDOW) if gzipped else None
    out = bytearray()
    raw = 0
    async for chunk in chunks:
        raw += len(chunk)
        if raw > limit + GZIP_SLACK:  # data after the gzip end is not decompressed, only held
            raise BodyTooLarge(limit)
        if inflater is None:
            out += chunk
        else:
            out += _inflate(inflater, chunk, limit - len(out) + 1)
        if len(out) > limit:
            raise BodyTooLarge(limit)
    if inflater is not None:
        out += _inflate(inflater, b"", limit - len(out) + 1, final=True)
        if len(out) > limit:
            raise BodyTooLarge(limit)
        if not inflater.eof:
            raise NotJson("the gzip data is truncated")
    elif encoding and encoding.strip().lower() not in ("identity", ""):
        raise NotJson(f"unsupported Content-Encoding {encoding!r}: send gzip or nothing")
    return bytes(out)


def _inflate(inflater: Any, data: bytes, room: int, final: bool = False) -> bytes:
    """At most `room` bytes out of `data` (zlib keeps the rest unread): never the whole bomb."""
    try:
        out = inflater.decompress(data, room) if not final else inflater.flush(room)
    except zlib.error as exc:
        raise NotJson(f"Content-Encoding gzip, but the body is not gzip data ({exc})") from None
    return out  # `room` bytes: one past the limit, and the caller answers 413


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """The JSON value of `body` (UTF-8), or NotJson saying why not."""
    try:
        value = json.loads(body, parse_constant=_no_constant)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # lone surrogates raise here
        nul = _has_nul(value)
    except RecursionError:
        raise NotJson("the JSON is nested too deeply") from None
    except (ValueError, UnicodeError) as exc:
        raise NotJson(f"the body is not JSON: {exc}") from None
    if nul:
        raise NotJson("the JSON holds a NUL character (\\u0000), which cannot be stored")
    return value


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string or key (PostgreSQL text cannot hold one)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False
