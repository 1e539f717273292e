"""The daemon's logs: JSON lines for machines, readable lines on a terminal.

One JSON object per line (`time`, `level`, `logger`, `message`, and `error` with the traceback
when there is one) is what log collectors ingest without a parser; a person running the daemon
in a terminal gets `time level message` instead. Nothing here adds secrets or message bodies:
the engine never logs them, and uvicorn's access log is off, since a request line can carry an
unsubscribe token.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonLines(logging.Formatter):
    """A record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(
                     timespec="milliseconds").replace("+00:00", "Z"),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: int = logging.INFO, *, json_lines: bool | None = None) -> None:
    """Send every logger's records to stderr: JSON lines unless stderr is a terminal."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx", "aiosmtplib", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
