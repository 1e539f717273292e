"""The one exception tree of Retain; the CLI maps it to exit codes in one place.

    RetainError
    ├── InputError            bad input from a user: exit 1
    │   ├── PlaybookError     a playbook (or its templates) is malformed; carries every issue found
    │   ├── DataFileError     a sync file cannot be read at all (rows with errors are reported, not raised)
    │   └── TemplateError     a template does not compile or render
    ├── StoreError            the database is unreachable or not at the expected schema
    │   └── NotLeader         a daemon replica lost its leader lease: its write is refused
    ├── LimitExceeded         a playbook's safety brake would be exceeded (later issue)
    └── ConnectorError        a connector failed (later issue)
        ├── TransientError    worth retrying
        └── PermanentError    dead-letter

Each input error carries `Location`s so messages name the file, line and column (or the customer
and action) instead of leaving the user to guess.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, order=True)
class Location:
    """Where a problem is: a file position (1-based line and column) or a customer and action."""

    file: str = ""
    line: int = 0
    column: int = 0
    customer: str = ""
    action: str = ""

    def __str__(self) -> str:
        if self.file:
            parts = [self.file]
            if self.line:
                parts.append(str(self.line))
                if self.column:
                    parts.append(str(self.column))
            return ":".join(parts)
        bits = [f"customer {self.customer}" if self.customer else "", self.action]
        return " ".join(b for b in bits if b)


@dataclass(frozen=True, order=True)
class Issue:
    """One problem found in an input, with its location and a JSON-path-like address."""

    location: Location
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: " if str(self.location) else ""
        what = f"{self.path}: " if self.path else ""
        return f"{where}{what}{self.message}"


@dataclass(frozen=True)
class Problem:
    """A problem inside one playbook value, addressed by its path before a file position is known.

    `path` is relative to the playbook document root (`("actions", 0, "email", "subject")`); the
    loader turns it into an `Issue` with file:line:col. `at="key"` points at the key, not the value.
    `line_offset` is a line inside a multi-line value (an inline template), 0 for the first.
    `location`, when set, is where the problem really is, outside the playbook (a line of a
    template file the value names); the path still says which value led there.
    """

    path: tuple[str | int, ...]
    message: str
    at: str = "value"
    line_offset: int = 0
    location: Location | None = None


class RetainError(Exception):
    """Base of every error Retain raises on purpose."""

    exit_code = 1


class InputError(RetainError):
    """The user's input is wrong; the message says where and why."""

    def __init__(self, message: str, issues: list[Issue] | None = None) -> None:
        super().__init__(message)
        self.issues: list[Issue] = sorted(issues or [])

    def __str__(self) -> str:
        if not self.issues:
            return super().__str__()
        return "\n".join(str(issue) for issue in self.issues)


class PlaybookError(InputError):
    """A playbook file, or a template it uses, is invalid."""


class DataFileError(InputError):
    """A data file for sync cannot be read at all (missing, unknown format, no header)."""


class TemplateError(InputError):
    """A template does not compile, uses an unknown variable, or renders unsafely."""


class StoreError(RetainError):
    """The database cannot be reached or is not in a usable state."""


class NotLeader(StoreError):
    """This replica is no longer the leader at the epoch it holds: what it was writing is
    rolled back, because another replica may be scheduling the same work (RELIABILITY 5)."""


class LimitExceeded(RetainError):
    """A playbook would enroll more customers than its `limits` allow."""

    def __init__(self, limit: str, selected: int, population: int) -> None:
        super().__init__(
            f"limit {limit} exceeded: {selected} selected of {population} customers; nothing done"
        )
        self.limit = limit
        self.selected = selected
        self.population = population


class ConnectorError(RetainError):
    """A connector could not do its action."""


class TransientError(ConnectorError):
    """A failure worth retrying later (timeouts, 4xx SMTP replies, HTTP 5xx/429).

    `retry_after`: the peer asked for at least this long (HTTP 429 `Retry-After`), else the
    backoff decides. `connection`: the server or the account failed (refused, timed out, a 535),
    not this message: the dispatcher stops sending through this connector for the cycle and puts
    the other claimed rows back without using up their attempts, so an SMTP outage never
    dead-letters the whole outbox at once.
    """

    def __init__(self, message: str, *, retry_after: timedelta | None = None,
                 connection: bool = False) -> None:
        super().__init__(message)
        self.retry_after, self.connection = retry_after, connection


class PermanentError(ConnectorError):
    """A failure that retrying will not fix; the action is dead-lettered.

    `suppress`: the reason to suppress the recipient's address too (`bounced`, for a 550-class
    recipient error), or None.
    """

    def __init__(self, message: str, *, suppress: str | None = None) -> None:
        super().__init__(message)
        self.suppress = suppress


def did_you_mean(name: str, choices: list[str] | set[str] | dict[str, object]) -> str:
    """` (did you mean 'x'?)` when a close choice exists, else an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
