"""The connector extension point: what an action kind must provide, and how kinds are found.

Built-ins (`email`, `task`, `points`, `webhook`) are declared in our own pyproject.toml under the
`retain.connectors` entry-point group and loaded exactly like a third party's (CONVENTIONS 12), so
the plugin door is the one we use every day. Loading lives in `engine.format.registry` (the
engine finds connectors only through entry points, never by importing this package). A
connector owns everything about its action: the params model (its schema), a docstring with a
YAML example, its semantic `check`, `plan` (what the action would do for one customer, every
template it would send rendered, so a template that fails for a customer fails in the dry-run)
and `preview` (the whole message, unsent). Sending is the next issue and will join them here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from engine import Location, Problem, TemplateChecker

PathKey = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class ConnectorParams(BaseModel):
    """Base of every params model: unknown keys are errors and YAML values are taken as typed.

    `strict` keeps `amount: "10"` from quietly becoming 10: a playbook says what it means.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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

    def preview(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str | None, customer: Mapping[str, Any],
                unsubscribe_url: str) -> dict[str, Any] | EmailMessage:
        """Everything this action would send for one customer, without sending (`retain
        preview`): the planned fields by default; an email connector builds the whole message.
        `key` is the action's idempotency key (an email's Message-ID derives from it), None when
        no run would make one (the customer would not enter); `customer` the record templates
        see."""
        return self.plan(params, render, render_file, due_at)


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
