"""The connector extension point: what an action kind must provide, and how kinds are found.

Built-ins (`email`, `task`, `points`, `webhook`) are declared in our own pyproject.toml under the
`retain.connectors` entry-point group and loaded exactly like a third party's (CONVENTIONS 12), so
the plugin door is the one we use every day. Loading lives in `engine.format.registry` (the
engine finds connectors only through entry points, never by importing this package). A
connector owns everything about its action: the params model (its schema), a docstring with a
YAML example, its semantic `check`, `plan` (what the action would do for one customer, every
template it would send rendered, so a template that fails for a customer fails in the dry-run)
`preview` (the whole message, unsent), `payload` (what the outbox freezes at commit: everything
the send needs, so a re-send after a crash is byte-identical), and the send side: `open` with
the settings, `send` one `Delivery` with its idempotency key, `close`.

A `send` that succeeds returns `Sent`; one that fails raises `TransientError` (retried with
backoff) or `PermanentError` (dead-lettered). An in-database connector (task, points, tag) sends
nothing itself: it returns `Sent(writes=...)`, the rows to write, and the dispatcher writes them
in the same transaction as the outcome, so exactly-once rests on one unique key in one
transaction (DESIGN 3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from engine import Location, PermanentError, Problem, TemplateChecker

PathKey = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class ConnectorParams(BaseModel):
    """Base of every params model: unknown keys are errors and YAML values are taken as typed.

    `strict` keeps `amount: "10"` from quietly becoming 10: a playbook says what it means.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True)
class Delivery:
    """One outbox row handed to `send`: its frozen payload and its idempotency key."""

    action_id: int
    key: str  # the idempotency key: Message-ID, webhook-id and ledger keys derive from it
    customer_id: str
    playbook_id: str
    payload: Mapping[str, Any]  # frozen at commit: what `payload` returned
    as_of: datetime  # the business time of this dispatch (--as-of, or now)
    attempt: int  # 1 on the first try


@dataclass(frozen=True)
class Write:
    """A row an in-database connector asks the dispatcher to write with the outcome.

    `kind` is one the dispatcher knows (engine/outbox/writes.py): `task`, `points`, `tags`, or
    `event` (an event the engine records, like `points_awarded`); `values` its columns.
    """

    kind: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Sent:
    """A delivered action: what the peer said (`detail`, for `outbox show`) and rows to write."""

    detail: str | None = None
    writes: tuple[Write, ...] = field(default=())


class Render(Protocol):
    """Renders one inline template for the customer being planned (header: one line only; html:
    autoescaped like an `.html.j2` file). Raises `TemplateError`."""

    def __call__(self, source: str, *, header: bool = False, html: bool = False) -> str: ...


class RenderFile(Protocol):
    """Renders a template file (by name, in templates/) for one customer; None if it is absent.
    Raises `TemplateError` located in the file."""

    def __call__(self, name: str) -> str | None: ...


class Connector(ABC):
    """One action kind. Subclasses set `kind` and `Params` and check the parsed params.

    The docstring of each subclass carries a YAML example of the action in a ```yaml block, which
    the documentation and schema tests read.
    """

    kind: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    needs_email: ClassVar[bool] = False  # skipped without an address, or when it is suppressed
    local: ClassVar[bool] = False
    """Sends nothing beyond the database (its `Sent` carries only writes): `retain test` runs
    it as it is, where it records what any other connector would send."""
    concurrency: ClassVar[int] = 1  # sends the dispatcher runs at once (open() may change it)
    retry: ClassVar[tuple[int, float, float]] = (8, 120.0, 2.8)
    """(attempts, first delay in seconds, growth): the backoff before dead-letter (RELIABILITY:
    email 8 attempts over about 24 h, the first retry within a couple of minutes)."""

    @abstractmethod
    def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
        """Semantic problems in already-parsed params, with paths relative to the params.

        The caller prefixes `("actions", i, kind)`. An inline multi-line template reports its line
        through `Problem.line_offset`; a problem inside a template file carries `Problem.location`.
        """

    @abstractmethod
    def plan(self, params: BaseModel, render: Render, render_file: RenderFile,
             due_at: datetime) -> dict[str, Any]:
        """What this action would do for one customer, as plain data: the fields a person checks
        in a dry-run (subject, title, amount, url), rendered. Secrets (`${VAR}`) stay unexpanded.

        Render every template the action would send, also those it does not return (an email's
        body): a `TemplateError` here marks this customer's action `error` in the plan, where a
        person sees it before a send fails.
        """

    def blocked(self, address: str, suppressions: Mapping[str, str]) -> str | None:
        """Why this action may not go to `address`, or None. Pure, so the planner calls it for
        dry-run and the dispatcher again at send time; `suppressions` maps lower-cased addresses
        to their reason. Only a connector that sends to the address blocks anything."""
        return None

    def recipient_problem(self, customer: Mapping[str, Any]) -> str | None:
        """Why this customer's address or name cannot be written into what this action sends
        (a header it cannot carry), or None. Pure: the planner asks in dry-run and live alike,
        so both mark that action dead with the same reason."""
        return None

    def preview(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str | None, customer: Mapping[str, Any],
                unsubscribe_url: str) -> dict[str, Any] | EmailMessage:
        """Everything this action would send for one customer, without sending (`retain
        preview`): the planned fields by default; an email connector builds the whole message.
        `key` is the action's idempotency key (an email's Message-ID derives from it), None when
        no run would make one (the customer would not enter); `customer` the record templates
        see."""
        return self.plan(params, render, render_file, due_at)


    def payload(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str, customer: Mapping[str, Any],
                unsubscribe_url: str) -> dict[str, Any]:
        """What a live run freezes in the outbox for this action: plain JSON data holding
        everything `send` needs, rendered once (the planned fields by default)."""
        return self.plan(params, render, render_file, due_at)

    def payload_template(self, params: BaseModel, due_at: datetime) -> dict[str, Any] | None:
        """`payload` for every customer at once, when it is only constants and inline
        templates: the same keys, with `Inline(source, header=...)` where `payload` has the
        rendered text. A live run then builds the payloads in SQL (engine/plan/set_plan.py)
        instead of calling `payload` per customer. Return one only when, for every customer,
        rendering it gives exactly `payload` and nothing blocks the action (no address to check,
        no `recipient_problem`); None (the default) keeps the per-customer path."""
        return None

    def configure(self, settings: Any) -> None:
        """Take what planning needs from the settings (the email sender for Message-IDs): called
        on every instance the engine makes when it has settings, before `payload`."""
        return None

    async def open(self, settings: Any) -> None:
        """Get ready to send (connections, clients) with the engine's settings; once per
        dispatch cycle, before the first `send`. Raise `TransientError(connection=True)` when
        the peer cannot be reached at all."""
        return None

    async def send(self, delivery: Delivery) -> Sent:
        """Deliver one action at least once, keyed by `delivery.key`. Raise `TransientError`
        or `PermanentError` on failure. A connector that cannot send says so permanently."""
        raise PermanentError(f"the {self.kind} connector cannot send")

    async def close(self) -> None:
        """Release what `open` took; called once the cycle is over, also after an error."""
        return None


def expect(params: BaseModel, model: type[M]) -> M:
    """`params` as the connector's own model; another model here is a programming error."""
    if not isinstance(params, model):
        raise TypeError(f"expected {model.__name__}, got {type(params).__name__}")
    return params


def inline_problems(templates: TemplateChecker, path: PathKey, source: str, *,
                    header: bool = False) -> list[Problem]:
    """Template problems of one inline value, placed on that value's lines."""
    return [Problem(path, message, line_offset=offset)
            for offset, message in templates.check_string(source, header=header)]


def file_problems(templates: TemplateChecker, path: PathKey, name: str) -> list[Problem]:
    """Problems inside a template file, located in that file (the path names the using value)."""
    file = str(templates.template_path(name))
    return [Problem(path, message, location=Location(file=file, line=line, column=column))
            for line, column, message in templates.check_file(name)]


def env_problems(templates: TemplateChecker, path: PathKey, text: str) -> list[Problem]:
    """Missing or empty `${VAR}`s in one value, named but never shown."""
    return [Problem(path, message) for message in templates.env_var_problems(text)]
