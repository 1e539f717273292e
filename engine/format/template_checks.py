"""Validate-time checks of templates: every problem a template has, with its line and column.

A static pass over the parsed template finds what it can name precisely (syntax, unknown
variables, fields, filters and tests with a did-you-mean, underscore attributes), all of them at
once; a trial render against a sample customer (engine/format/templates.py's sandbox, nothing
real touched) finds the rest (huge ranges, type errors, header injection) and adds its failure
when it is on a line the static pass did not already report. Jinja knows lines only: columns are
found by looking for the named thing on its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.meta import find_referenced_templates, find_undeclared_variables
from jinja2.sandbox import SandboxedEnvironment

from engine.errors import did_you_mean
from engine.format.templates import (
    CONTEXT_NAMES,
    LINE_BREAK,
    OpenRecord,
    RenderFailure,
    as_context,
    compile_inline,
    describe,
    env_var_problems,
    run_template,
    templates_dir_of,
)

_SAMPLES: dict[str, Any] = {"number": 42, "time": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
                            "date": date(1990, 5, 1), "list": ["sample"]}


def sample_context(customer_fields: Mapping[str, str]) -> dict[str, Any]:
    """A plausible context for trial renders: every field has a value of its type."""
    customer = {name: _SAMPLES.get(kind, "sample") for name, kind in customer_fields.items()}
    customer["attributes"] = OpenRecord("customer.attributes", {})
    event = {"event_id": "evt-sample", "customer_id": customer.get("customer_id", "sample"),
             "type": "purchase", "occurred_at": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
             "amount": 42, "score": 9, "properties": OpenRecord("event.properties", {})}
    return as_context({"customer": customer, "event": event,
                        "playbook": {"id": "sample-playbook", "name": "Sample playbook"},
                        "unsubscribe_url": "https://example.com/unsubscribe/sample"})


class TemplateChecker:
    """Checks templates at `validate` time: static analysis first, then a trial render.

    The static pass finds what a trial render would report less precisely (unknown names with a
    did-you-mean, unknown filters); the trial render finds the rest (sandbox escapes, huge ranges,
    type errors, header injection) against a sample customer, so nothing real is touched.
    """

    def __init__(self, environment: SandboxedEnvironment, customer_fields: Mapping[str, str],
                 env_vars: Mapping[str, str]) -> None:
        self.environment = environment
        self.customer_fields = dict(customer_fields)
        self.env_vars = env_vars
        self.templates_dir = templates_dir_of(environment)
        self._context = sample_context(customer_fields)
        self._file_results: dict[str, list[tuple[int, int, str]]] = {}
        self._included: dict[str, None] = {}  # files inline templates include, in order

    @property
    def files_checked(self) -> tuple[str, ...]:
        """The template files the actions asked about, in order, then the files their inline
        templates include, extend or import by a literal name: what the playbook's version
        covers (engine/format/validation.py reads their texts and follows their includes)."""
        return tuple(dict.fromkeys([*self._file_results, *self._included]))

    def template_path(self, name: str) -> Path:
        """Where the template file `name` is (or would be), for messages."""
        return (self.templates_dir or Path("templates")) / name

    def env_var_problems(self, text: str) -> list[str]:
        """`env_var_problems` against the environment this checker was built with."""
        return env_var_problems(text, self.env_vars)

    def check_string(self, source: str, *, header: bool = False) -> list[tuple[int, str]]:
        """Problems in an inline template as (0-based line offset, message), every one found."""
        problems = [(line, message) for line, _, message in self._static(source, header)]
        self._note_includes(source)
        try:
            template = compile_inline(self.environment, source, html=False)
            run_template(template, dict(self._context), header)
        except RenderFailure as failure:
            problems = _add_failure(problems, failure.line, failure.message)
        return [(max(line - 1, 0), message) for line, message in problems]

    def _note_includes(self, source: str) -> None:
        """Remember the files an inline template names in include/extends/import."""
        try:
            found = find_referenced_templates(self.environment.parse(source))
        except jinja2.TemplateSyntaxError:  # reported by _static
            return
        self._included.update(dict.fromkeys(name for name in found if name is not None))

    def check_file(self, name: str) -> list[tuple[int, int, str]]:
        """Problems in a template file as (1-based line, column, message); 0 when none applies."""
        if name not in self._file_results:
            self._file_results[name] = self._check_file(name)
        return self._file_results[name]

    def _check_file(self, name: str) -> list[tuple[int, int, str]]:
        path = self.template_path(name)
        if self.templates_dir is None or not path.is_file():
            return [(0, 0, f"template file {path} does not exist")]
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return [(0, 0, f"template file {path} cannot be read: {exc}")]
        problems = self._static(source, header=False)
        if any(message.startswith("template syntax error") for _, _, message in problems):
            return problems
        try:
            run_template(self.environment.get_template(name), dict(self._context), header=False)
        except jinja2.TemplateError as exc:  # compile errors the parse did not catch
            failure = RenderFailure(describe(exc), getattr(exc, "lineno", 0) or 0)
        except RenderFailure as exc:
            failure = exc
        else:
            return problems
        if problems and (not failure.line or any(line == failure.line for line, _, _ in problems)):
            return problems  # the render stopped on a problem already listed
        return sorted([*problems, (failure.line, _column(source, failure.line), failure.message)])

    def _static(self, source: str, header: bool) -> list[tuple[int, int, str]]:
        """Every problem found without rendering, as (line, column, message): syntax, line breaks
        in headers, unsafe attributes, unknown filters, tests, variables and fields."""
        try:
            ast = self.environment.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            return [(exc.lineno, _column(source, exc.lineno), describe(exc))]
        problems: list[tuple[int, str, str]] = []
        if header and (found := LINE_BREAK.search(source)):
            problems.append((source.count("\n", 0, found.start()) + 1, "",
                             "line break in a header template (header injection)"))
        problems += _unsafe_attributes(ast)
        problems += _unknown(ast.find_all(nodes.Filter), "filter", self.environment.filters)
        problems += _unknown(ast.find_all(nodes.Test), "test", self.environment.tests)
        problems += self._unknown_variables(ast)
        problems += self._unknown_customer_fields(ast)
        return sorted((line, _column(source, line, needle), message)
                      for line, needle, message in problems)

    def _unknown_variables(self, ast: nodes.Template) -> list[tuple[int, str, str]]:
        names = _undeclared(ast) - CONTEXT_NAMES - set(self.environment.globals)
        first_line = {}
        for node in ast.find_all(nodes.Name):
            first_line.setdefault(node.name, node.lineno)
        return [(first_line.get(name, 1), name,
                 f"unknown variable {name!r}{did_you_mean(name, sorted(CONTEXT_NAMES))}")
                for name in sorted(names)]

    def _unknown_customer_fields(self, ast: nodes.Template) -> list[tuple[int, str, str]]:
        known = {*self.customer_fields, "attributes"}
        problems = []
        for node, field in _customer_lookups(ast):
            if field in known:
                continue
            hint = did_you_mean(field, sorted(known))
            hint = hint or f" (did you mean 'customer.attributes.{field}'?)"
            problems.append((node.lineno, field, f"unknown customer field {field!r}{hint}"))
        return problems


def _add_failure(problems: list[tuple[int, str]], line: int,
                 message: str) -> list[tuple[int, str]]:
    """The trial render's failure beside the static problems, unless it stopped on one of them."""
    if problems and (not line or any(known == line for known, _ in problems)):
        return problems
    return sorted([*problems, (line, message)])


def _column(source: str, line: int, needle: str = "") -> int:
    """The 1-based column of `needle` on `line` of `source` (Jinja only knows lines): of the
    first tag on the line when there is no needle or it is not found; 0 for no line."""
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return 0
    text = lines[line - 1]
    if needle and (found := re.search(rf"(?<![\w.]){re.escape(needle)}(?!\w)", text)):
        return found.start() + 1
    if needle and (index := text.find(needle)) >= 0:
        return index + 1
    tag = re.search(r"\{[{%#]", text)
    return tag.start() + 1 if tag else 1


def _unsafe_attributes(ast: nodes.Template) -> list[tuple[int, str, str]]:
    """`x.__class__` and other underscore attributes, which the sandbox refuses at render: all
    of them listed here, where a trial render would stop at the first."""
    return [(node.lineno, node.attr, f"unsafe template: access to attribute {node.attr!r} is "
             "unsafe") for node in ast.find_all(nodes.Getattr)
            if node.attr.startswith("_") and not _unsafe(node.node)]


def _unsafe(node: nodes.Node) -> bool:
    """An underscore attribute: a chain of them (`x.__class__.__mro__`) is one problem."""
    return isinstance(node, nodes.Getattr) and node.attr.startswith("_")


def _unknown(found: Iterable[nodes.Filter | nodes.Test], what: str,
             known: Mapping[str, Any]) -> list[tuple[int, str, str]]:
    return [(node.lineno, node.name,
             f"unknown {what} {node.name!r}{did_you_mean(node.name, sorted(known))}")
            for node in found if node.name not in known]


def _undeclared(ast: nodes.Template) -> set[str]:
    """Names the template reads from its context; Jinja's own scoping when it can compile."""
    try:
        return find_undeclared_variables(ast)
    except jinja2.TemplateSyntaxError:  # an unknown filter stops Jinja's pass; already reported
        names = {(n.name, n.ctx) for n in ast.find_all(nodes.Name)}
        bound = {name for name, ctx in names if ctx != "load"} | {"loop", "caller", "super"}
        return {name for name, ctx in names if ctx == "load"} - bound


def _customer_lookups(ast: nodes.Template) -> Iterable[tuple[nodes.Node, str]]:
    """`customer.X` and `customer['X']` lookups, with X."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "customer"):
            continue
        if isinstance(node, nodes.Getattr):
            yield node, node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield node, node.arg.value
