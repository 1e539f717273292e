"""The `webhook` action: call an HTTP endpoint with a JSON body (a CRM, a chat channel).

The url and header values may name environment variables as `${VAR}`: secrets live in the
environment, never in YAML nor in the database, and messages name the variable, never its value
(RELIABILITY 30). A live run freezes the action at commit (`payload`): method, url, headers and
body rendered for the customer, `${VAR}` left as written. The dispatcher's `send` expands the
variables from the environment of the sending process, signs the request (Standard Webhooks)
and judges the answer; that side lives in connectors/webhook_send.py, imported only when a
dispatch opens the connector, so `retain validate` never loads httpx.

Frozen url and header values are *env templates*: `${NAME}` is a variable the playbook author
wrote, `$$` a literal `$`. Every `$` that rendering produced (customer data, literal text) is
doubled at commit, so a customer named `${RETAIN_WEBHOOK_SECRET}` is sent as that text and
never expanded into the secret.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

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
    PermanentError,
    Problem,
    TemplateChecker,
    TemplateError,
    env_var_problems,
    expand_env,
    header_problem,
    render,
)

if TYPE_CHECKING:
    from connectors.base import Delivery, Sent
    from connectors.webhook_send import Sender

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field name
RESERVED_HEADERS = frozenset({"content-length", "host", "transfer-encoding", "connection",
                              "idempotency-key", "webhook-id", "webhook-timestamp",
                              "webhook-signature"})


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
    concurrency: ClassVar[int] = 8  # requests in flight at once, over as many connections
    retry: ClassVar[tuple[int, float, float]] = (6, 30.0, 3.0)
    """6 attempts over about an hour (RELIABILITY): retries after about 30 s, 90 s, 4.5 min,
    13.5 min and 40 min, jittered by the dispatcher."""
    timeout: float = 5.0
    """Seconds allowed to connect, to write and between reads (httpx's default): a slow
    endpoint is retried, not waited for."""

    def __init__(self) -> None:
        self._sender: Sender | None = None
        self.transport: Any = None
        """An httpx transport to send through instead of the network (`retain test` sets one
        that records each request and answers 200): signing and judging run as they are."""

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
        """Method, url and body rendered; `${VAR}`s stay as written (expanded only at send).

        Header values are rendered too, though not shown, so that one failing for a customer
        fails in the dry-run rather than at commit."""
        hook = expect(params, WebhookParams)
        for value in hook.headers.values():
            render(value, header=True)
        return {"method": hook.method, "url": render(hook.url, header=True),
                "body": _render_body(render, hook.body)}

    def payload(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str, customer: Mapping[str, Any],
                unsubscribe_url: str) -> dict[str, Any]:
        """The request frozen at commit: url and header values as env templates (`${VAR}`
        unexpanded, every other `$` doubled), the body as rendered JSON."""
        hook = expect(params, WebhookParams)
        return {"method": hook.method, "url": freeze_env_template(render, hook.url),
                "headers": {name: freeze_env_template(render, value)
                            for name, value in hook.headers.items()},
                "body": _render_body(render, hook.body)}

    async def open(self, settings: Any) -> None:
        """One HTTP client for the cycle, and the signing key from `settings.webhook_secret`."""
        from connectors.webhook_send import Sender

        await self.close()
        self._sender = Sender.start(settings, connections=self.concurrency, timeout=self.timeout,
                                    transport=self.transport)

    async def send(self, delivery: Delivery) -> Sent:
        """Expand `${VAR}`s from this process's environment, sign, POST, judge the answer."""
        if self._sender is None:
            raise PermanentError("the webhook connector was not opened before sending")
        return await self._sender.send(delivery, os.environ)

    async def close(self) -> None:
        """Close the HTTP client (its pooled connections)."""
        sender, self._sender = self._sender, None
        if sender is not None:
            await sender.close()


def freeze_env_template(render: Render, source: str) -> str:
    """`source` rendered as one line, with the author's `${VAR}`s kept and every other `$`
    doubled, so `expand_env_template` expands exactly what the author wrote."""
    marked, names, unmark = _mark_env(source)
    rendered = render(marked, header=True).replace("$", "$$")
    return unmark(rendered, lambda index: "${" + names[index] + "}")


def expand_env_template(text: str, env: Mapping[str, str]) -> str:
    """A frozen env template with its variables from `env` and `$$` read as `$`.

    Raises `TemplateError` naming a missing or empty variable, never a value.
    """
    return "$".join(expand_env(part, env) for part in text.split("$$"))


def env_template_names(text: str) -> list[str]:
    """The variables a frozen env template expands, in order, once each."""
    return list(dict.fromkeys(name for part in text.split("$$")
                              for name in ENV_REFERENCE.findall(part)))


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
    marked, names, unmark = _mark_env(source)
    text = unmark(render(environment, marked, context), lambda index: env[names[index]])
    if header and (problem := header_problem(text)):
        raise TemplateError(problem)
    return text


def _mark_env(source: str) -> tuple[str, list[str], Callable[[str, Callable[[int], str]], str]]:
    """`source` with each `${VAR}` replaced by a random marker that Jinja leaves alone, the
    names in order, and the function that puts something (the reference, the value) back."""
    marker = f"@@env{secrets.token_hex(8)}:"
    names: list[str] = []

    def mark(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"{marker}{len(names) - 1}@@"

    pattern = re.compile(re.escape(marker) + r"(\d+)@@")

    def unmark(text: str, put: Callable[[int], str]) -> str:
        return pattern.sub(lambda m: put(int(m.group(1))), text)

    return ENV_REFERENCE.sub(mark, source), names, unmark
