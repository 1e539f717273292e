"""Connectors: found through entry points, strict params models, and their semantic checks.

Template files and plugin metadata are real files in the test's folder; nothing is mocked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import BaseModel, ValidationError

import engine.format.registry as registry
from connectors.base import Connector, ConnectorParams
from connectors.email import EmailConnector, EmailParams
from connectors.points import PointsConnector, PointsParams
from connectors.tags import TagConnector, TagParams
from connectors.tasks import TaskConnector, TaskParams
from connectors.webhook import WebhookConnector, WebhookParams, render_with_env
from engine.errors import Location, Problem, TemplateError
from engine.format.fields import CUSTOMER_FIELDS
from engine.format.registry import (
    ConnectorLoadError,
    connector_names,
    load_connectors,
    register_connector,
    unregister_connector,
)
from engine.format.template_checks import TemplateChecker
from engine.format.templates import make_environment

FIELDS = {name: str(kind) for name, kind in CUSTOMER_FIELDS.items()}
BUILT_INS = {"email": EmailConnector, "task": TaskConnector, "points": PointsConnector,
             "webhook": WebhookConnector, "tag": TagConnector}
ENV = {"CRM_WEBHOOK_URL": "https://crm.example/hook", "CRM_TOKEN": "s3cr3t"}


@pytest.fixture
def checker(templates: Path) -> TemplateChecker:
    return TemplateChecker(make_environment(templates), FIELDS, ENV)


def check(connector: type[Connector], params: dict[str, Any],
          checker: TemplateChecker) -> list[Problem]:
    return connector().check(connector.Params.model_validate(params), checker)


def errors(model: type[BaseModel], data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


# --- loading --------------------------------------------------------------------------------------


def test_built_ins_come_through_the_entry_points() -> None:
    assert {kind: load_connectors()[kind] for kind in BUILT_INS} == BUILT_INS
    assert set(BUILT_INS) <= set(connector_names())
    assert "wait" not in load_connectors()


def test_explicit_registration_without_installed_connectors() -> None:
    class SmsParams(ConnectorParams):
        text: str

    class SmsConnector(Connector):
        kind: ClassVar[str] = "sms"
        Params: ClassVar[type[BaseModel]] = SmsParams

        def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
            return []

    register_connector(SmsConnector)
    try:
        assert load_connectors(installed=False) == {"sms": SmsConnector}
        assert load_connectors()["sms"] is SmsConnector
    finally:
        unregister_connector("sms")
    assert load_connectors(installed=False) == {}


def test_registration_refuses_a_non_connector() -> None:
    with pytest.raises(ConnectorLoadError, match="is not a connector class"):
        register_connector(dict)  # type: ignore[arg-type]


def test_registration_refuses_a_connector_without_plan() -> None:
    """A class written to an older interface (check only) is refused at load, not at dry-run."""

    class OldParams(ConnectorParams):
        text: str

    class OldConnector:
        kind: ClassVar[str] = "old"
        Params: ClassVar[type[BaseModel]] = OldParams

        def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
            return []

    with pytest.raises(ConnectorLoadError, match="check, plan, blocked, preview"):
        register_connector(OldConnector)  # type: ignore[arg-type]


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path where a test installs a (broken) plugin distribution."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._installed.cache_clear()
    yield tmp_path
    registry._installed.cache_clear()


def install_plugin(folder: Path, entry: str, module: str = "") -> None:
    info = folder / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[retain.connectors]\n{entry}\n")
    if module:
        (folder / "broken_plugin_mod.py").write_text(module)


def test_broken_entry_point_says_which_and_why(plugin_dir: Path) -> None:
    install_plugin(plugin_dir, "sms = no_such_module_xyz:SmsConnector")
    with pytest.raises(ConnectorLoadError) as caught:
        load_connectors()
    assert str(caught.value) == (
        "connector entry point 'sms = no_such_module_xyz:SmsConnector' cannot be loaded: "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'")


def test_entry_point_name_must_match_the_kind(plugin_dir: Path) -> None:
    install_plugin(plugin_dir, "text = broken_plugin_mod:Sms", module=(
        "from connectors.base import Connector, ConnectorParams\n"
        "class Sms(Connector):\n"
        "    kind = 'sms'\n"
        "    Params = ConnectorParams\n"
        "    def check(self, params, templates):\n"
        "        return []\n"))
    with pytest.raises(ConnectorLoadError) as caught:
        load_connectors()
    assert str(caught.value) == ("connector entry point 'text = broken_plugin_mod:Sms': "
                                 "Sms.kind is 'sms', expected 'text'")


# --- docstring examples ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUILT_INS))
def test_docstring_example_is_valid(kind: str, checker: TemplateChecker, templates: Path) -> None:
    (templates / "winback.txt.j2").write_text("Hi {{ customer.name }}\n")
    cls = BUILT_INS[kind]
    block = re.search(r"```yaml\n(.*?)```", cls.__doc__ or "", re.DOTALL)
    assert block, f"{cls.__name__} has no ```yaml example"
    (action,) = yaml.safe_load(block.group(1))
    assert list(action) == [kind]
    assert check(cls, action[kind], checker) == []


# --- params models --------------------------------------------------------------------------------


@pytest.mark.parametrize("model, good", [
    (EmailParams, {"subject": "Hi", "body": "Hello"}),
    (TaskParams, {"title": "Call"}),
    (PointsParams, {"amount": 10}),
    (TagParams, {"add": ["vip"]}),
    (WebhookParams, {"url": "https://x.example"}),
])
def test_every_params_model_rejects_unknown_keys(model: type[BaseModel],
                                                 good: dict[str, Any]) -> None:
    model.model_validate(good)
    assert errors(model, {**good, "colour": "red"}) == [(("colour",),
                                                         "Extra inputs are not permitted")]


def test_points_amount_must_be_a_whole_number_other_than_zero() -> None:
    assert errors(PointsParams, {"amount": "ten"}) == [(("amount",),
                                                        "Input should be a valid integer")]
    assert errors(PointsParams, {"amount": "10"}) == [(("amount",),
                                                       "Input should be a valid integer")]
    assert errors(PointsParams, {"amount": 1.5}) == [(("amount",),
                                                      "Input should be a valid integer")]
    assert errors(PointsParams, {"amount": True}) == [(("amount",),
                                                       "Input should be a valid integer")]
    assert errors(PointsParams, {"amount": 0}) == [(("amount",), "Value error, amount must not be 0")]
    assert PointsParams.model_validate({"amount": -50, "reason": "correction"}).amount == -50


def test_email_needs_exactly_one_body() -> None:
    message = "Value error, email needs exactly one of template, body or html; got {}"
    assert errors(EmailParams, {"subject": "Hi"}) == [((), message.format("none"))]
    assert errors(EmailParams, {"subject": "Hi", "body": "a", "html": "b"}) == [
        ((), message.format("body and html"))]
    assert errors(EmailParams, {"body": "a"}) == [(("subject",), "Field required")]
    assert errors(EmailParams, {"subject": 5, "body": "a"}) == [
        (("subject",), "Input should be a valid string")]


def test_email_template_is_a_plain_name() -> None:
    assert errors(EmailParams, {"subject": "Hi", "template": "winback.html.j2"}) == [
        (("template",), "Value error, template is a name without extension, like 'winback' "
                        "(for templates/winback.html.j2); got 'winback.html.j2'")]
    assert errors(EmailParams, {"subject": "Hi", "template": "../secrets"}) == [
        (("template",), "Value error, template is a name like 'winback' or 'onboarding/day1' "
                        "(letters, digits, - and _); got '../secrets'")]
    assert EmailParams.model_validate({"subject": "Hi", "template": "onboarding/day1"})


def test_task_due_in_is_a_duration() -> None:
    assert TaskParams.model_validate({"title": "Call", "due_in": "2d"}).due_in == timedelta(days=2)
    assert errors(TaskParams, {"title": "Call", "due_in": "2x"}) == [
        (("due_in",), "Value error, malformed duration '2x': expected a whole number and a unit, "
                      "like 15m, 12h, 30d or 2w")]
    assert errors(TaskParams, {"title": "Call", "assignee": 7}) == [
        (("assignee",), "Input should be a valid string")]


def test_webhook_params() -> None:
    hook = WebhookParams.model_validate({"url": "https://x.example",
                                         "body": {"a": [1, {"b": None}], "c": True}})
    assert hook.method == "POST" and hook.headers == {}
    assert errors(WebhookParams, {"url": "https://x.example", "method": "GET"}) == [
        (("method",), "Input should be 'POST', 'PUT' or 'PATCH'")]
    assert errors(WebhookParams, {"url": "https://x.example", "headers": {"X-N": 1}}) == [
        (("headers", "X-N"), "Input should be a valid string")]
    assert errors(WebhookParams, {"url": "https://x.example", "headers": {"Bad Name": "x"}}) == [
        (("headers",), "Value error, not a valid HTTP header name: got 'Bad Name'")]
    assert errors(WebhookParams, {"url": "https://x.example",
                                  "headers": {"idempotency-key": "x"}}) == [
        (("headers",), "Value error, this header is set by Retain, not by playbooks: "
                       "got 'idempotency-key'")]


# --- email checks ---------------------------------------------------------------------------------


def test_email_subject_header_injection(checker: TemplateChecker) -> None:
    assert check(EmailConnector, {"subject": "Hi\r\nBcc: x@evil", "body": "b"}, checker) == [
        Problem(("subject",), "line break in a header template (header injection)")]
    assert check(EmailConnector, {"subject": "=?UTF-8?Q?=0A?=", "body": "b"}, checker) == [
        Problem(("subject",), "header value contains an encoded line break (header injection)")]


def test_email_inline_body_problem_has_its_line(checker: TemplateChecker) -> None:
    body = "Dear {{ customer.name }},\n\nthanks, {{ custmer.name }}\n"
    assert check(EmailConnector, {"subject": "Hi", "body": body}, checker) == [
        Problem(("body",), "unknown variable 'custmer' (did you mean 'customer'?)",
                line_offset=2)]
    assert check(EmailConnector, {"subject": "Hi", "html": "<p>{{ x }}</p>"}, checker) == [
        Problem(("html",), "unknown variable 'x'")]


def test_email_template_file_problem_is_located_in_the_file(checker: TemplateChecker,
                                                           templates: Path) -> None:
    (templates / "winback.txt.j2").write_text("Hi {{ customer.name }}\n")
    (templates / "winback.html.j2").write_text("<p>Hi</p>\n\n<p>{{ custmer.name }}</p>\n")
    assert check(EmailConnector, {"subject": "Hi", "template": "winback"}, checker) == [
        Problem(("template",), "unknown variable 'custmer' (did you mean 'customer'?)",
                location=Location(file=str(templates / "winback.html.j2"), line=3, column=7))]


def test_email_template_with_one_file_is_enough(checker: TemplateChecker,
                                                templates: Path) -> None:
    (templates / "winback.html.j2").write_text("<p>Hi {{ customer.name }}</p>\n")
    assert check(EmailConnector, {"subject": "Hi", "template": "winback"}, checker) == []


def test_email_template_without_files(checker: TemplateChecker, templates: Path) -> None:
    expected = f"{templates / 'winback.html.j2'} or {templates / 'winback.txt.j2'}"
    assert check(EmailConnector, {"subject": "Hi", "template": "winback"}, checker) == [
        Problem(("template",), f"no template file for 'winback': expected {expected}")]


def test_email_security_and_range_in_template_file(checker: TemplateChecker,
                                                   templates: Path) -> None:
    (templates / "evil.txt.j2").write_text("a\n{{ ''.__class__.__mro__ }}\n"
                                           "{% for i in range(10**6) %}{% endfor %}\n")
    location = Location(file=str(templates / "evil.txt.j2"), line=2, column=7)
    assert check(EmailConnector, {"subject": "Hi", "template": "evil"}, checker) == [
        Problem(("template",), "unsafe template: access to attribute '__class__' is unsafe",
                location=location)]


# --- task checks ----------------------------------------------------------------------------------


def test_task_title_and_note_are_templates(checker: TemplateChecker) -> None:
    params = {"title": "Call {{ customer.nme }}", "due_in": "1d",
              "note": "Spent {{ customer.total_spent }}\n{{ customer.last_active_at | dat }}"}
    assert check(TaskConnector, params, checker) == [
        Problem(("title",), "unknown customer field 'nme' (did you mean 'name'?)"),
        Problem(("note",), "unknown filter 'dat' (did you mean 'date'?)", line_offset=1)]


# --- webhook checks -------------------------------------------------------------------------------


def test_webhook_missing_env_var_is_named(templates: Path) -> None:
    bare = TemplateChecker(make_environment(templates), FIELDS, {})
    assert check(WebhookConnector, {"url": "${CRM_WEBHOOK_URL}",
                                    "headers": {"Authorization": "Bearer ${CRM_TOKEN}"}},
                 bare) == [
        Problem(("url",), "environment variable CRM_WEBHOOK_URL is not set"),
        Problem(("headers", "Authorization"), "environment variable CRM_TOKEN is not set")]


def test_webhook_url_scheme_is_checked_without_showing_the_secret(templates: Path) -> None:
    env = {"CRM_WEBHOOK_URL": "ftp://s3cr3t@crm.example"}
    problems = check(WebhookConnector, {"url": "${CRM_WEBHOOK_URL}"},
                     TemplateChecker(make_environment(templates), FIELDS, env))
    assert problems == [Problem(("url",), "url must start with https:// or http:// "
                                          "(after expanding ${CRM_WEBHOOK_URL})")]
    assert check(WebhookConnector, {"url": "crm.example/x"},
                 TemplateChecker(make_environment(templates), FIELDS, {})) == [
        Problem(("url",), "url must start with https:// or http://")]


def test_webhook_header_values_are_single_line_templates(checker: TemplateChecker) -> None:
    params = {"url": "https://crm.example/{{ customer.customer_id }}",
              "headers": {"X-Name": "{{ customer.name }}", "X-Evil": "a\nb",
                          "X-Typo": "{{ customer.emial }}"}}
    assert check(WebhookConnector, params, checker) == [
        Problem(("headers", "X-Evil"), "line break in a header template (header injection)"),
        Problem(("headers", "X-Typo"), "unknown customer field 'emial' (did you mean 'email'?)")]


def test_webhook_body_strings_are_templates_at_any_depth(checker: TemplateChecker) -> None:
    body = {"customer": "{{ customer.customer_id }}", "items": [1, {"note": "{{ custmer }}"}],
            "token": "${CRM_TOKEN}", "ok": True}
    assert check(WebhookConnector, {"url": "${CRM_WEBHOOK_URL}", "body": body}, checker) == [
        Problem(("body", "items", 1, "note"),
                "unknown variable 'custmer' (did you mean 'customer'?)"),
        Problem(("body", "token"), "${CRM_TOKEN} is not expanded in a webhook body "
                                   "(environment variables belong in url and headers)")]


def test_points_have_nothing_more_to_check(checker: TemplateChecker) -> None:
    assert check(PointsConnector, {"amount": 200, "reason": "winback bonus"}, checker) == []


def test_no_message_ever_contains_a_secret(checker: TemplateChecker) -> None:
    params = {"url": "${CRM_WEBHOOK_URL}/{{ custmer }}",
              "headers": {"Authorization": "Bearer ${CRM_TOKEN}\n"}}
    problems = check(WebhookConnector, params, checker)
    assert problems and all("s3cr3t" not in p.message for p in problems)


# --- rendering url and header values ---------------------------------------------------------

CONTEXT = {"customer": {"customer_id": "C1", "name": "Ana"}}


def test_render_with_env_expands_only_what_the_author_wrote() -> None:
    environment = make_environment(None)
    env = {"CRM_URL": "https://crm.example", "CRM_TOKEN": "s3cr3t"}
    context = {"customer": {**CONTEXT["customer"], "name": "${CRM_TOKEN}"}}
    text = render_with_env(environment, "${CRM_URL}/c/{{ customer.name }}", context, env)
    assert text == "https://crm.example/c/${CRM_TOKEN}"


def test_render_with_env_refuses_a_secret_with_a_line_break_without_showing_it() -> None:
    with pytest.raises(TemplateError) as caught:
        render_with_env(make_environment(None), "Bearer ${TOKEN}", CONTEXT,
                        {"TOKEN": "s3cr3t\r\nX-Evil: 1"}, header=True)
    assert str(caught.value) == "header value contains a line break (header injection)"


def test_render_with_env_missing_variable() -> None:
    with pytest.raises(TemplateError) as caught:
        render_with_env(make_environment(None), "${CRM_WEBHOOK_URL}", CONTEXT, {})
    assert str(caught.value) == "environment variable CRM_WEBHOOK_URL is not set"
