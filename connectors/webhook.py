"""The `webhook` action: call an HTTP endpoint with a JSON body (a CRM, a chat channel).

Parameters and checks only; the HTTP call with its Idempotency-Key is a later issue. The url and
header values may name environment variables as `${VAR}`: secrets live in the environment, never
in YAML, and messages name the variable, never its value (RELIABILITY 30).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, Field, JsonValue, field_validator

from connectors.base import (
    Connector,
    ConnectorParams,
    PathKey,
    Render,
    RenderFile,
    env_problems,
    expect,
    inline_problems,
)
from engine import (
    ENV_REFERENCE,
    Problem,
    TemplateChecker,
    TemplateError,
    env_var_problems,
    expand_env,
    header_problem,
    render,
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field name
RESERVED_HEADERS = frozenset({"content-length", "host", "transfer-encoding", "connection",
                              "idempotency-key"})


class WebhookParams(ConnectorParams):
    """Where to send, how, with which headers, and a JSON body whose strings are templates."""

    url: str = Field(min_length=1, description="Templated; ${VAR} from the environment.")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="Values templated; ${VAR} from the environment.")
    body: JsonValue = Field(None, description="Any JSON; every string in it is a template.")

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"not a valid HTTP header name: got {name!r}")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"this header is set by Retain, not by playbooks: got {name!r}")
        return value


class WebhookConnector(Connector):
    """Call a webhook.

    ```yaml
    - webhook:
        url: "${CRM_WEBHOOK_URL}"
        headers: { Authorization: "Bearer ${CRM_TOKEN}" }
        body: { customer: "{{ customer.customer_id }}", play: winback }
    ```
    """

    kind = "webhook"
    Params = WebhookParams

    def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
        """Url and headers: variables set, single-line templates; body strings: templates."""
        hook = expect(params, WebhookParams)
        problems = _url_problems(templates, hook.url)
        for name, value in hook.headers.items():
            problems += env_problems(templates, ("headers", name), value)
            problems += inline_problems(templates, ("headers", name), value, header=True)
        return problems + _body_problems(templates, ("body",), hook.body)

    def plan(self, params: BaseModel, render: Render, render_file: RenderFile,
             due_at: datetime) -> dict[str, Any]:
        """Method, url and body rendered; `${VAR}`s stay as written (expanded only at send)."""
        hook = expect(params, WebhookParams)
        return {"method": hook.method, "url": render(hook.url, header=True),
                "body": _render_body(render, hook.body)}


def _render_body(render: Render, value: JsonValue) -> JsonValue:
    if isinstance(value, str):
        return render(value)
    if isinstance(value, dict):
        return {key: _render_body(render, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_body(render, item) for item in value]
    return value


def _url_problems(templates: TemplateChecker, url: str) -> list[Problem]:
    problems = env_problems(templates, ("url",), url)
    problems += inline_problems(templates, ("url",), url, header=True)
    if problems or url.startswith(("{{", "{%")):
        return problems
    # The scheme is checked on the expanded url, but only the variable names reach the message.
    if not re.match(r"https?://", expand_env(url, templates.env_vars), re.IGNORECASE):
        named = ", ".join(m.group(0) for m in ENV_REFERENCE.finditer(url))
        after = f" (after expanding {named})" if named else ""
        problems.append(Problem(("url",), f"url must start with https:// or http://{after}"))
    return problems


def _body_problems(templates: TemplateChecker, path: PathKey, value: JsonValue) -> list[Problem]:
    """Every string in the body, however deep, is a template."""
    if isinstance(value, str):
        problems = inline_problems(templates, path, value)
        for name in dict.fromkeys(ENV_REFERENCE.findall(value)):
            problems.append(Problem(path, f"${{{name}}} is not expanded in a webhook body (environment "
                                    "variables belong in url and headers)"))
        return problems
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _body_problems(templates, (*path, key), item)]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _body_problems(templates, (*path, i), item)]
    return []


def render_with_env(environment: jinja2.Environment, source: str, context: Mapping[str, Any],
                    env: Mapping[str, str], *, header: bool = False) -> str:
    """Render a url or header value that mixes Jinja and `${VAR}`.

    Variables are expanded only where the playbook author wrote them: customer data that happens
    to contain `${CRM_TOKEN}` stays literal, and a secret never passes through Jinja, whose error
    messages could otherwise quote it.
    """
    if problems := env_var_problems(source, env):
        raise TemplateError("; ".join(problems))
    marker = f"@@env{secrets.token_hex(8)}:"
    names: list[str] = []

    def mark(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"{marker}{len(names) - 1}@@"

    rendered = render(environment, ENV_REFERENCE.sub(mark, source), context)
    text = re.sub(re.escape(marker) + r"(\d+)@@", lambda m: env[names[int(m.group(1))]], rendered)
    if header and (problem := header_problem(text)):
        raise TemplateError(problem)
    return text
