"""The `email` action: a templated subject and a body from a template file or inline text.

Only parameters and their checks live here for now; sending (SMTP, List-Unsubscribe, Message-ID)
is a later issue. The subject is a header, so it may never carry a line break (RELIABILITY 14).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from connectors.base import (
    Connector,
    ConnectorParams,
    Render,
    expect,
    file_problems,
    inline_problems,
)
from engine import Problem, TemplateChecker

TEMPLATE_SUFFIXES = (".html.j2", ".txt.j2")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


class EmailParams(ConnectorParams):
    """`subject` plus exactly one of `template`, `body` (plain text) or `html`."""

    subject: str = Field(min_length=1, description="Templated; a header, so one line only.")
    template: str | None = Field(None, description="NAME: templates/NAME.html.j2 and/or .txt.j2",
                                 json_schema_extra={"pattern": f"^{_TEMPLATE_NAME.pattern}$"})
    body: str | None = Field(None, description="Inline plain-text body (templated).")
    html: str | None = Field(None, description="Inline HTML body (templated, autoescaped).")

    @field_validator("template")
    @classmethod
    def _template_name(cls, value: str | None) -> str | None:
        if value is None or _TEMPLATE_NAME.fullmatch(value):
            return value
        if value.endswith((".j2", ".html", ".txt")):
            raise ValueError("template is a name without extension, like 'winback' "
                             f"(for templates/winback.html.j2); got {value!r}")
        raise ValueError("template is a name like 'winback' or 'onboarding/day1' (letters, "
                         f"digits, - and _); got {value!r}")

    @model_validator(mode="after")
    def _one_body(self) -> EmailParams:
        given = [key for key in ("template", "body", "html") if getattr(self, key) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"email needs exactly one of template, body or html; got {got}")
        return self


class EmailConnector(Connector):
    """Send an email to the customer.

    ```yaml
    - email:
        subject: "We miss you, {{ customer.name }}"
        template: winback
    ```

    `template: winback` uses `templates/winback.html.j2` and/or `templates/winback.txt.j2` (at
    least one must exist); `body:` (plain text) and `html:` are inline alternatives.
    """

    kind = "email"
    Params = EmailParams
    needs_email = True

    def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
        """Subject as a header template; the body inline or in its template files."""
        email = expect(params, EmailParams)
        problems = inline_problems(templates, ("subject",), email.subject, header=True)
        if email.body is not None:
            problems += inline_problems(templates, ("body",), email.body)
        if email.html is not None:
            problems += inline_problems(templates, ("html",), email.html)
        if email.template is not None:
            problems += _template_problems(templates, email.template)
        return problems

    def plan(self, params: BaseModel, render: Render, due_at: datetime) -> dict[str, Any]:
        """The rendered subject and where the body comes from (rendered when it is sent)."""
        email = expect(params, EmailParams)
        body = {"template": email.template} if email.template else {
            "body": "inline text" if email.body is not None else "inline html"}
        return {"subject": render(email.subject, header=True), **body}

    def blocked(self, address: str, suppressions: Mapping[str, str]) -> str | None:
        """A suppressed address (unsubscribed, bounced) gets no mail, whatever its letter case:
        `Ann@Example.COM` is blocked by a suppression of `ann@example.com`."""
        reason = suppressions.get(address.strip().lower())
        return None if reason is None else f"address is suppressed ({reason})"


def _template_problems(templates: TemplateChecker, name: str) -> list[Problem]:
    files = [f"{name}{suffix}" for suffix in TEMPLATE_SUFFIXES]
    present = [file for file in files if templates.template_path(file).is_file()]
    if not present:
        expected = " or ".join(str(templates.template_path(file)) for file in files)
        return [Problem(("template",), f"no template file for {name!r}: expected {expected}")]
    return [problem for file in present for problem in file_problems(templates, ("template",), file)]
