"""Templates: the sandbox, strict variables, header injection, the output cap, `${VAR}`.

Covers RELIABILITY tests 14, 18 and 30 at the template layer, with the exact message a user reads.
Template files are real files in the test's folder.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from engine.errors import TemplateError
from engine.format.fields import CUSTOMER_FIELDS
from engine.format.template_checks import TemplateChecker
from engine.format.templates import (
    CONTEXT_NAMES,
    MAX_OUTPUT_BYTES,
    date_filter,
    env_var_problems,
    expand_env,
    header_problem,
    make_environment,
    reads_nothing,
    render,
    render_file,
)

FIELDS = {name: str(kind) for name, kind in CUSTOMER_FIELDS.items()}
CUSTOMER = {"customer_id": "C1", "name": "Ana", "email": "ana@example.com", "tags": ["vip"],
            "last_active_at": datetime(2024, 5, 1, 8, 0, tzinfo=UTC), "attributes": {"plan": "pro"}}
CONTEXT = {"customer": CUSTOMER, "playbook": {"id": "winback", "name": "Win back"},
           "unsubscribe_url": "https://example.com/u/1"}


@pytest.fixture
def checker(templates: Path) -> TemplateChecker:
    return TemplateChecker(make_environment(templates), FIELDS, {"CRM_TOKEN": "s3cr3t"})


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


# --- validate: static checks ---------------------------------------------------------------------


def test_context_names_are_the_design_ones() -> None:
    assert {"customer", "event", "playbook", "unsubscribe_url"} == CONTEXT_NAMES


def test_good_template_has_no_problems(checker: TemplateChecker) -> None:
    source = ("Hi {{ customer.name }}, since {{ customer.last_active_at | date }} "
              "{{ customer.attributes.anything }} {{ event.properties.amount }} "
              "{{ playbook.name }} {{ unsubscribe_url }}{% for t in customer.tags %}{{ t }}"
              "{{ loop.index }}{% endfor %}{% set n = 2 %}{{ n }}{{ range(3) | list }}")
    assert checker.check_string(source) == []


def test_misspelt_variable_names_the_variable_with_a_suggestion(checker: TemplateChecker) -> None:
    assert checker.check_string("Hi {{ custmer.name }}") == [
        (0, "unknown variable 'custmer' (did you mean 'customer'?)")]


def test_unknown_variable_without_close_match(checker: TemplateChecker) -> None:
    assert checker.check_string("{{ order }}") == [(0, "unknown variable 'order'")]


def test_unknown_customer_field_suggests_a_field(checker: TemplateChecker) -> None:
    assert checker.check_string("line one\n{{ customer.nme }}") == [
        (1, "unknown customer field 'nme' (did you mean 'name'?)")]
    assert checker.check_string("{{ customer['emial'] }}") == [
        (0, "unknown customer field 'emial' (did you mean 'email'?)")]


def test_unknown_customer_field_suggests_an_attribute(checker: TemplateChecker) -> None:
    assert checker.check_string("{{ customer.plan }}") == [
        (0, "unknown customer field 'plan' (did you mean 'customer.attributes.plan'?)")]


def test_unknown_filter_and_test(checker: TemplateChecker) -> None:
    assert checker.check_string("{{ customer.name | upperr }}") == [
        (0, "unknown filter 'upperr' (did you mean 'upper'?)")]
    assert checker.check_string("a\n{% if customer.purchase_count is oddd %}x{% endif %}") == [
        (1, "unknown test 'oddd' (did you mean 'odd'?)")]


def test_unknown_filter_does_not_hide_an_unknown_variable(checker: TemplateChecker) -> None:
    assert checker.check_string("{{ custmer | upperr }}") == [  # in reading order
        (0, "unknown variable 'custmer' (did you mean 'customer'?)"),
        (0, "unknown filter 'upperr' (did you mean 'upper'?)")]


def test_syntax_error_names_its_line(checker: TemplateChecker) -> None:
    assert checker.check_string("one\ntwo\n{% if %}") == [
        (2, "template syntax error: Expected an expression, got 'end of statement block'")]


# --- validate: trial render -----------------------------------------------------------------------


def test_sandbox_escape_is_an_error_at_validate(checker: TemplateChecker) -> None:
    assert checker.check_string("{{ ''.__class__.__mro__ }}") == [  # one chain, one problem
        (0, "unsafe template: access to attribute '__class__' is unsafe")]


def test_context_cannot_be_modified(checker: TemplateChecker) -> None:
    assert checker.check_string("{{ customer.tags.append('x') }}") == [
        (0, "unsafe template: access to attribute 'append' of 'list' object is unsafe")]


def test_huge_range_is_an_error(checker: TemplateChecker) -> None:
    assert checker.check_string("a\n{% for i in range(10**6) %}{{ i }}{% endfor %}") == [
        (1, "range() too big: the sandbox allows at most 100000 items")]


def test_huge_output_is_an_error(checker: TemplateChecker) -> None:
    source = "{% for i in range(100000) %}{{ customer.name }}{{ customer.name }}{% endfor %}"
    assert checker.check_string(source) == [(0, "rendered output is larger than 256 KiB")]


def test_huge_repetition_and_power_are_refused_before_being_built(
        checker: TemplateChecker) -> None:
    assert checker.check_string("{{ 'x' * 10**9 }}") == [
        (0, "unsafe template: repetition too large: the result would exceed 256 KiB")]
    assert checker.check_string("{{ 2 ** 100000 }}") == [
        (0, "unsafe template: number too large: powers beyond 4096 bits")]
    assert checker.check_string("{{ 'ab' * 3 }} {{ 10 ** 6 }}") == []


def test_other_render_errors(checker: TemplateChecker) -> None:
    assert checker.check_string("a\nb\n{{ 1 / 0 }}") == [(2, "cannot render: division by zero")]
    assert checker.check_string("{{ playbook.nam }}") == [
        (0, "undefined variable 'playbook.nam'")]


@pytest.mark.parametrize("source, message", [
    ("Hi\r\nBcc: x@evil", "line break in a header template (header injection)"),
    ("Hi {{ customer.name }}\n", "line break in a header template (header injection)"),
    ("=?UTF-8?Q?=0A?=", "header value contains an encoded line break (header injection)"),
    ("Hi =?UTF-8?B?QQ0KQmNjOiB4?=", "header value contains an encoded line break "
                                    "(header injection)"),
    ('Hi{{ "\\r\\nBcc: x@evil" }}', "header value contains a line break (header injection)"),
])
def test_header_templates_refuse_line_breaks(checker: TemplateChecker, source: str,
                                             message: str) -> None:
    assert checker.check_string(source, header=True) == [(0, message)]


def test_line_breaks_are_fine_outside_headers(checker: TemplateChecker) -> None:
    assert checker.check_string("Hi\r\nthere =?UTF-8?Q?=0A?=") == []
    assert checker.check_string("Hi =?UTF-8?Q?caf=C3=A9?= {{ customer.name }}", header=True) == []


# --- validate: template files ---------------------------------------------------------------------


def test_template_file_problem_has_its_one_based_line(checker: TemplateChecker,
                                                      templates: Path) -> None:
    write(templates, "winback.html.j2", "<p>Hello</p>\n<p>again</p>\n{{ custmer.name }}\n")
    assert checker.check_file("winback.html.j2") == [
        (3, 4, "unknown variable 'custmer' (did you mean 'customer'?)")]
    assert checker.template_path("winback.html.j2") == templates / "winback.html.j2"


def test_template_file_trial_render_line(checker: TemplateChecker, templates: Path) -> None:
    write(templates, "bad.txt.j2", "one\n{% for i in range(10**6) %}{% endfor %}\n")
    assert checker.check_file("bad.txt.j2") == [
        (2, 1, "range() too big: the sandbox allows at most 100000 items")]


def test_missing_template_file(checker: TemplateChecker, templates: Path) -> None:
    assert checker.check_file("nope.txt.j2") == [
        (0, 0, f"template file {templates / 'nope.txt.j2'} does not exist")]


def test_good_template_file_with_include(checker: TemplateChecker, templates: Path) -> None:
    write(templates, "footer.txt.j2", "Unsubscribe: {{ unsubscribe_url }}\n")
    write(templates, "welcome.txt.j2", "Hi {{ customer.name }}\n{% include 'footer.txt.j2' %}")
    assert checker.check_file("welcome.txt.j2") == []


# --- render ---------------------------------------------------------------------------------------


def test_render_inline() -> None:
    environment = make_environment(None)
    text = render(environment, "Hi {{ customer.name }} ({{ customer.attributes.plan }})", CONTEXT)
    assert text == "Hi Ana (pro)"


@pytest.mark.parametrize("source, message", [
    ("{{ custmer.name }}", "undefined variable 'custmer'"),
    ("{{ customer.nme }}", "undefined variable 'customer.nme'"),
    ("{{ customer.attributes.tier }}", "undefined variable 'customer.attributes.tier'"),
    ("{{ event.type }}", "undefined variable 'event'"),
    ("{{ ''.__class__ }}", "unsafe template: access to attribute '__class__' of 'str' object "
                           "is unsafe"),
    ("one\n{{ 1 / 0 }}", "line 2: cannot render: division by zero"),
    ("{% if %}", "template syntax error: Expected an expression, got 'end of statement block'"),
])
def test_render_errors_name_the_problem(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(make_environment(None), source, CONTEXT)
    assert str(caught.value) == message


def test_default_filter_covers_a_missing_attribute() -> None:
    text = render(make_environment(None), "{{ customer.attributes.tier | default('basic') }}",
                  CONTEXT)
    assert text == "basic"


def test_render_header_refuses_customer_data_with_line_breaks() -> None:
    environment = make_environment(None)
    for name in ("Ana\r\nBcc: x@evil", "=?UTF-8?Q?Ana=0D=0ABcc:_x?="):
        context = {"customer": {**CUSTOMER, "name": name}}
        with pytest.raises(TemplateError, match="line break"):
            render(environment, "Hi {{ customer.name }}", context, header=True)
        # Outside a header the same text is kept as it is: nothing is stripped silently.
        assert render(environment, "Hi {{ customer.name }}", context) == f"Hi {name}"


def test_render_output_cap() -> None:
    environment = make_environment(None)
    context = {"customer": {**CUSTOMER, "name": "x" * 1024}}
    fits = "{% for i in range(256) %}{{ customer.name }}{% endfor %}"
    assert len(render(environment, fits, context)) == MAX_OUTPUT_BYTES
    with pytest.raises(TemplateError) as caught:
        render(environment, fits + "!", context)
    assert str(caught.value) == "rendered output is larger than 256 KiB"


def test_html_files_are_autoescaped_text_files_are_not(templates: Path) -> None:
    write(templates, "w.html.j2", "<p>{{ customer.name }}</p>")
    write(templates, "w.txt.j2", "{{ customer.name }}")
    environment = make_environment(templates)
    context = {"customer": {**CUSTOMER, "name": "<b>Ana & co</b>"}}
    assert render_file(environment, "w.html.j2", context) == "<p>&lt;b&gt;Ana &amp; co&lt;/b&gt;</p>"
    assert render_file(environment, "w.txt.j2", context) == "<b>Ana & co</b>"
    assert render(environment, "{{ customer.name }}", context) == "<b>Ana & co</b>"
    assert render(environment, "<i>{{ customer.name }}</i>", context,
                  html=True) == "<i>&lt;b&gt;Ana &amp; co&lt;/b&gt;</i>"


def test_text_templates_leave_no_blank_lines_for_tags(templates: Path) -> None:
    write(templates, "t.txt.j2", "Hi\n{% if customer.name %}\nyou\n{% endif %}\nbye\n")
    assert render_file(make_environment(templates), "t.txt.j2", CONTEXT) == "Hi\nyou\nbye\n"


def test_render_file_error_carries_file_and_line(templates: Path) -> None:
    write(templates, "w.txt.j2", "Hello\n{{ customer.nme }}\n")
    with pytest.raises(TemplateError) as caught:
        render_file(make_environment(templates), "w.txt.j2", CONTEXT)
    path = str(templates / "w.txt.j2")
    assert str(caught.value) == f"{path}:2: undefined variable 'customer.nme'"
    assert [(i.location.file, i.location.line) for i in caught.value.issues] == [(path, 2)]


def test_render_file_missing(templates: Path) -> None:
    with pytest.raises(TemplateError) as caught:
        render_file(make_environment(templates), "gone.txt.j2", CONTEXT)
    assert str(caught.value) == f"{templates / 'gone.txt.j2'}: template file 'gone.txt.j2' not found"


# --- the date filter ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (datetime(2024, 5, 1, 23, 59, tzinfo=UTC), "2024-05-01"),
    (date(2024, 5, 1), "2024-05-01"),
    ("2024-05-01T10:00:00Z", "2024-05-01"),
    ("2024-05-01", "2024-05-01"),
    (None, ""),
    # An instant is printed as its UTC date, wherever it was written:
    ("2024-05-01T23:00-05:00", "2024-05-02"),
    (datetime(2024, 5, 2, 1, 0, tzinfo=timezone(timedelta(hours=5))), "2024-05-01"),
    ("2024-05-01T23:00:00", "2024-05-01"),  # naive means UTC
])
def test_date_filter(value: object, expected: str) -> None:
    assert date_filter(value) == expected


def test_date_filter_in_a_template_with_a_format() -> None:
    text = render(make_environment(None), "{{ customer.last_active_at | date }} / "
                  "{{ customer.last_active_at | date('%d %B %Y') }}", CONTEXT)
    assert text == "2024-05-01 / 01 May 2024"


def test_date_filter_formats_the_utc_time_too() -> None:
    when = {"customer": {"last_active_at": "2024-05-01T23:30:00-05:00"}}
    text = render(make_environment(None), "{{ customer.last_active_at | date('%Y-%m-%d %H:%M %Z') }}",
                  when)
    assert text == "2024-05-02 04:30 UTC"


def test_date_filter_rejects_what_is_not_a_date() -> None:
    with pytest.raises(TemplateError) as caught:
        render(make_environment(None), "{{ 'soon' | date }}", CONTEXT)
    assert str(caught.value) == "cannot render: date filter cannot read 'soon' as an ISO 8601 date"
    with pytest.raises(TemplateError, match="expects a date or time, got int"):
        render(make_environment(None), "{{ 5 | date }}", CONTEXT)


# --- headers and ${VAR} ---------------------------------------------------------------------------


def test_header_problem_accepts_ordinary_values() -> None:
    assert header_problem("Bearer abc.def") is None
    assert header_problem("Caf=?UTF-8?B?w6k=?=") is None


def test_header_problem_refuses_an_undecodable_encoded_word() -> None:
    # Mail clients differ in how they repair it, so what they would show is unknown: refuse.
    assert header_problem("Hi =?UTF-8?B?Q?=") == (
        "header value contains an encoded word that cannot be decoded")


def test_expand_env() -> None:
    env = {"CRM_WEBHOOK_URL": "https://crm.example/hook", "CRM_TOKEN": "s3cr3t"}
    assert expand_env("${CRM_WEBHOOK_URL}?t=${CRM_TOKEN}", env) == (
        "https://crm.example/hook?t=s3cr3t")


def test_expand_env_missing_variable_is_named() -> None:
    with pytest.raises(TemplateError) as caught:
        expand_env("${CRM_WEBHOOK_URL}", {})
    assert str(caught.value) == "environment variable CRM_WEBHOOK_URL is not set"


def test_env_var_problems_name_variables_never_values() -> None:
    env = {"EMPTY": "", "SET": "s3cr3t"}
    problems = env_var_problems("${MISSING}/${EMPTY}/${SET}/${MISSING}/${bad-name}", env)
    assert problems == ["malformed environment reference: write ${NAME} (letters, digits, _)",
                        "environment variable MISSING is not set",
                        "environment variable EMPTY is empty"]
    assert env_var_problems("no variables here, $HOME stays", env) == []


def test_a_template_that_reads_nothing_is_rendered_once_and_any_other_every_time() -> None:
    """A constant subject is every customer's text, so the plan renders it once; a template
    that reads the customer, calls a global or draws at random is rendered for each."""
    env = make_environment()
    assert reads_nothing(env, "A thank-you for {{ 'our' ~ ' best' }} customers", False)
    for varying in ("Hi {{ customer.name }}", "{{ range(3) | list }}", "{{ lipsum(1) }}",
                    "{{ [1, 2, 3] | random }}", "{{ unsubscribe_url }}",
                    "{% for i in [1] %}{{ i }}{% endfor %}", "{% include 'x.j2' %}"):
        assert not reads_nothing(env, varying, False), varying
    first = render(env, "Hello", {"customer": {"name": "Ann"}})
    assert render(env, "Hello", {}) is first  # the kept text, not a second render
    assert render(env, "Hi {{ customer.name }}", {"customer": {"name": "Ann"}}) == "Hi Ann"
    assert render(env, "Hi {{ customer.name }}", {"customer": {"name": "Bo"}}) == "Hi Bo"


def test_a_constant_template_that_fails_fails_every_time() -> None:
    """A failure is not kept as a text: every customer's render fails with its message."""
    env = make_environment()
    for _ in range(2):
        with pytest.raises(TemplateError, match="division by zero"):
            render(env, "{{ 1 / 0 }}", {})
    with pytest.raises(TemplateError, match="line break"):
        render(env, "a{{ '\\n' }}b", {}, header=True)
    assert render(env, "a{{ '\\n' }}b", {}) == "a\nb"  # the same source outside a header
