"""Jinja2 for action fields and template files: checked at `validate`, rendered at dispatch.

Templates run in an immutable sandbox with strict undefined variables (DESIGN 2.4): a typo is an
error at `validate`, not a blank in a customer's inbox. The sandbox caps `range()` but not output
size, so rendering streams and stops at 256 KiB (RELIABILITY 8, test 18). Header values (subject,
HTTP headers) refuse line breaks, also RFC 2047 encoded ones; they are never stripped silently,
because a silently "fixed" header hides an injection attempt (RELIABILITY 7, test 14).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from email.errors import HeaderParseError
from email.header import decode_header
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import FileSystemLoader, StrictUndefined, nodes, select_autoescape
from jinja2.exceptions import SecurityError
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment
from jinja2.utils import missing

from engine.errors import Issue, Location, TemplateError, did_you_mean

CONTEXT_NAMES = frozenset({"customer", "event", "playbook", "unsubscribe_url"})
MAX_OUTPUT_BYTES = 256 * 1024
MAX_POWER_BITS = 4096
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_MALFORMED = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*\})")
_RENDER_ERRORS = (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError,
                  RecursionError)


class _Record(dict[str, Any]):
    """A context mapping that knows its dotted name, so a miss reads 'customer.nme', not 'dict'."""

    __slots__ = ("_where",)

    def __init__(self, where: str, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self._where = where


class _OpenRecord(_Record):
    """Trial-render stand-in for `customer.attributes` and event properties: any key has a value."""

    __slots__ = ()

    def __missing__(self, key: str) -> str:
        return f"sample {key}"


class _Undefined(StrictUndefined):
    """StrictUndefined whose message names the variable by its full dotted path."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        name, obj = self._undefined_name, self._undefined_obj
        if self._undefined_hint:
            return self._undefined_hint
        if obj is missing:
            return f"undefined variable {name!r}"
        if isinstance(obj, _Record):
            return f"undefined variable '{obj._where}.{name}'"
        return f"undefined variable {name!r} on a {type(obj).__name__} value"


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, also refusing `'x' * 10**9` and huge powers, which it would otherwise build."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse results that would blow past the output cap before they are built."""
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and abs(left) > 1 and left.bit_length() * right > MAX_POWER_BITS:
            raise SecurityError(f"number too large: powers beyond {MAX_POWER_BITS} bits")
        for seq, times in ((left, right), (right, left)) if operator == "*" else ():
            sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
            if sized and len(seq) * times > MAX_OUTPUT_BYTES:
                raise SecurityError("repetition too large: the result would exceed 256 KiB")
        return super().call_binop(context, operator, left, right)


def date_filter(value: Any, fmt: str = "%Y-%m-%d") -> str:
    """`{{ customer.last_active_at | date }}` -> `2024-05-01`; a missing value renders as ''.

    Facts such as `last_active_at` are legitimately null for some customers; an empty string lets
    templates write `{{ (x | date) or 'never' }}` instead of failing the whole message.
    """
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"date filter cannot read {value!r} as an ISO 8601 date") from None
    if not isinstance(value, date):
        raise TypeError(f"date filter expects a date or time, got {type(value).__name__}")
    return value.strftime(fmt)


def _blank_none(value: Any) -> Any:
    """A missing value (a customer without a name) prints as nothing, not as "None"."""
    return "" if value is None else value


def make_environment(templates_dir: Path | None = None) -> SandboxedEnvironment:
    """The one Jinja environment for a templates folder (None: inline templates only)."""
    environment = _Sandbox(
        undefined=_Undefined,
        loader=FileSystemLoader(templates_dir) if templates_dir is not None else None,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=(),
                                     default_for_string=False, default=False),
        trim_blocks=True,  # `{% if %}` lines leave no blank lines in text emails
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_blank_none,
    )
    environment.filters["date"] = date_filter
    return environment


def templates_dir_of(environment: jinja2.Environment) -> Path | None:
    """The folder an environment loads template files from, if any."""
    loader = environment.loader
    if isinstance(loader, FileSystemLoader) and loader.searchpath:
        return Path(loader.searchpath[0])
    return None


class _Failure(Exception):
    """A render failure with its template line (1-based, 0 unknown), before it gets a location."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def _as_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap nested mappings as `_Record`s so undefined keys are named by their dotted path."""

    def wrap(where: str, value: Any) -> Any:
        if isinstance(value, _Record):
            return value
        if isinstance(value, Mapping):
            return _Record(where, {k: wrap(f"{where}.{k}", v) for k, v in value.items()})
        if isinstance(value, list):
            return [wrap(f"{where}[{i}]", v) for i, v in enumerate(value)]
        return value

    return {name: wrap(name, value) for name, value in context.items()}


def header_problem(value: str) -> str | None:
    """Why `value` may not be a header (a line break, also RFC 2047 encoded), or None."""
    if _LINE_BREAK.search(value):
        return "header value contains a line break (header injection)"
    for word in _ENCODED_WORD.findall(value):
        try:
            parts = decode_header(word)
        except HeaderParseError:
            return "header value contains an encoded word that cannot be decoded"
        for raw, charset in parts:
            text = raw.decode(charset or "ascii", "replace") if isinstance(raw, bytes) else raw
            if _LINE_BREAK.search(text):
                return "header value contains an encoded line break (header injection)"
    return None


def _failure_line(exc: BaseException, template: jinja2.Template) -> int:
    """The line of `template` where rendering failed, from Jinja's rewritten traceback."""
    filename = template.filename or "<template>"
    lines = [f.lineno or 0 for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return lines[-1] if lines else 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return str(exc)
    if isinstance(exc, SecurityError):
        return f"unsafe template: {str(exc).rstrip('.')}"
    if isinstance(exc, OverflowError) and "MAX_RANGE" in str(exc):
        return "range() too big: the sandbox allows at most 100000 items"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template file {exc.name!r} not found"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"template syntax error: {exc.message}"
    return f"cannot render: {exc}"


def _run(template: jinja2.Template, context: dict[str, Any], header: bool) -> str:
    """Render with the output cap and the header guard; every failure becomes `_Failure`."""
    parts: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > MAX_OUTPUT_BYTES:
                raise _Failure("rendered output is larger than 256 KiB")
            parts.append(chunk)
    except _RENDER_ERRORS as exc:
        raise _Failure(_describe(exc), _failure_line(exc, template)) from exc
    text = "".join(parts)
    if header and (problem := header_problem(text)):
        raise _Failure(problem)
    return text


def _compile(environment: jinja2.Environment, source: str, html: bool) -> jinja2.Template:
    """The compiled inline template, compiled once per environment: a plan renders the same few
    subjects and titles for many customers, and compiling costs far more than rendering."""
    cache: dict[tuple[str, bool], jinja2.Template] = environment.__dict__.setdefault(
        "_retain_inline_templates", {})
    if (source, html) in cache:
        return cache[(source, html)]
    # An autoescape block keeps line numbers: nothing is added before the first line break.
    wrapped = f"{{% autoescape true %}}{source}{{% endautoescape %}}" if html else source
    try:
        template = environment.from_string(wrapped)
    except jinja2.TemplateSyntaxError as exc:
        raise _Failure(_describe(exc), exc.lineno) from exc
    cache[(source, html)] = template
    return template


def render(environment: jinja2.Environment, source: str, context: Mapping[str, Any], *,
           header: bool = False, html: bool = False) -> str:
    """Render an inline template (an action field); `html=True` autoescapes like `.html.j2`."""
    try:
        return _run(_compile(environment, source, html), _as_context(context), header)
    except _Failure as failure:
        where = f"line {failure.line}: " if failure.line and "\n" in source else ""
        raise TemplateError(f"{where}{failure.message}") from failure


def render_file(environment: jinja2.Environment, name: str, context: Mapping[str, Any]) -> str:
    """Render a template file; errors carry the file and line as their location."""
    folder = templates_dir_of(environment)
    path = str(folder / name) if folder else name
    try:
        template = environment.get_template(name)
        return _run(template, _as_context(context), header=False)
    except (jinja2.TemplateSyntaxError, jinja2.TemplateNotFound) as exc:
        line = getattr(exc, "lineno", 0) or 0
        failure = _Failure(_describe(exc), line)
    except _Failure as exc:
        failure = exc
    issue = Issue(Location(file=path, line=failure.line), "", failure.message)
    raise TemplateError(str(issue), [issue]) from failure


def env_var_problems(text: str, env: Mapping[str, str]) -> list[str]:
    """What is wrong with the `${VAR}` references in `text`; names variables, never values."""
    problems = []
    if _ENV_MALFORMED.search(text):
        problems.append("malformed environment reference: write ${NAME} (letters, digits, _)")
    for name in dict.fromkeys(ENV_REFERENCE.findall(text)):
        if name not in env:
            problems.append(f"environment variable {name} is not set")
        elif not env[name]:
            problems.append(f"environment variable {name} is empty")
    return problems


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Replace `${VAR}` by its value; a missing variable is an error, never an empty string."""
    if problems := env_var_problems(text, env):
        raise TemplateError("; ".join(problems))
    return ENV_REFERENCE.sub(lambda match: env[match.group(1)], text)


_SAMPLES: dict[str, Any] = {"number": 42, "time": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
                            "date": date(1990, 5, 1), "list": ["sample"]}


def sample_context(customer_fields: Mapping[str, str]) -> dict[str, Any]:
    """A plausible context for trial renders: every field has a value of its type."""
    customer = {name: _SAMPLES.get(kind, "sample") for name, kind in customer_fields.items()}
    customer["attributes"] = _OpenRecord("customer.attributes", {})
    event = {"event_id": "evt-sample", "customer_id": customer.get("customer_id", "sample"),
             "type": "purchase", "occurred_at": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
             "amount": 42, "score": 9, "properties": _OpenRecord("event.properties", {})}
    return _as_context({"customer": customer, "event": event,
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

    def template_path(self, name: str) -> Path:
        """Where the template file `name` is (or would be), for messages."""
        return (self.templates_dir or Path("templates")) / name

    def env_var_problems(self, text: str) -> list[str]:
        """`env_var_problems` against the environment this checker was built with."""
        return env_var_problems(text, self.env_vars)

    def check_string(self, source: str, *, header: bool = False) -> list[tuple[int, str]]:
        """Problems in an inline template as (0-based line offset, message), every one found."""
        problems = [(line, message) for line, _, message in self._static(source, header)]
        try:
            template = _compile(self.environment, source, html=False)
            _run(template, dict(self._context), header)
        except _Failure as failure:
            problems = _add_failure(problems, failure.line, failure.message)
        return [(max(line - 1, 0), message) for line, message in problems]

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
            _run(self.environment.get_template(name), dict(self._context), header=False)
        except jinja2.TemplateError as exc:  # compile errors the parse did not catch
            failure = _Failure(_describe(exc), getattr(exc, "lineno", 0) or 0)
        except _Failure as exc:
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
            return [(exc.lineno, _column(source, exc.lineno), _describe(exc))]
        problems: list[tuple[int, str, str]] = []
        if header and (found := _LINE_BREAK.search(source)):
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
