"""Jinja2 for action fields and template files: rendered at dispatch, checked at `validate`
(engine/format/template_checks.py).

Templates run in an immutable sandbox with strict undefined variables (DESIGN 2.4): a typo is an
error at `validate`, not a blank in a customer's inbox. The sandbox caps `range()` but not output
size, so rendering streams and stops at 256 KiB (RELIABILITY 8, test 18). Header values (subject,
HTTP headers) refuse line breaks, also RFC 2047 encoded ones; they are never stripped silently,
because a silently "fixed" header hides an injection attempt (RELIABILITY 7, test 14).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from email.errors import HeaderParseError
from email.header import decode_header
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import DictLoader, FileSystemLoader, StrictUndefined, meta, nodes, select_autoescape
from jinja2.exceptions import SecurityError
from jinja2.runtime import new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment
from jinja2.utils import missing

from engine.clock import aware_utc
from engine.errors import Issue, Location, TemplateError

CONTEXT_NAMES = frozenset({"customer", "event", "playbook", "unsubscribe_url"})
MAX_OUTPUT_BYTES = 256 * 1024
MAX_POWER_BITS = 4096
LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_MALFORMED = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*\})")
_RENDER_ERRORS = (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError,
                  RecursionError)


@dataclass(frozen=True)
class Inline:
    """A payload value that is an inline template rendered for each customer (a task title):
    what a connector's `payload_template` puts where `payload` puts the rendered text
    (engine/format/template_sql.py translates it for a set-based commit)."""

    source: str
    header: bool = False


class _Record(dict[str, Any]):
    """A context mapping that knows its dotted name, so a miss reads 'customer.nme', not 'dict'."""

    __slots__ = ("_where",)

    def __init__(self, where: str, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self._where = where


class OpenRecord(_Record):
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

    A time is printed as its UTC date (engine.clock.aware_utc: naive means UTC, aware is
    converted), as every instant in Retain is: `2024-05-01T23:00-05:00` is `2024-05-02`, not the
    sender's local date. Facts such as `last_active_at` are legitimately null for some customers; an empty string lets
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
    if isinstance(value, datetime):
        value = aware_utc(value)
    return value.strftime(fmt)


def _blank_none(value: Any) -> Any:
    """A missing value (a customer without a name) prints as nothing, not as "None"."""
    return "" if value is None else value


class StoredTemplates(DictLoader):
    """Template files as a playbook version recorded them (name -> text), not as the folder has
    them now: an enrollment renders its version's templates until it ends. `label` names them
    in messages where a folder would."""

    def __init__(self, mapping: Mapping[str, str], label: str) -> None:
        super().__init__(dict(mapping))
        self.label = label


def make_environment(templates_dir: Path | None = None, *,
                     templates: Mapping[str, str] | None = None,
                     label: str = "templates") -> SandboxedEnvironment:
    """The one Jinja environment for a templates folder (None: inline templates only), or for
    the stored texts of a playbook version (`templates`, name -> text; `label` names them)."""
    loader: jinja2.BaseLoader | None = None
    if templates is not None:
        loader = StoredTemplates(templates, label)
    elif templates_dir is not None:
        loader = FileSystemLoader(templates_dir)
    environment = _Sandbox(
        undefined=_Undefined,
        loader=loader,
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


def has_template(environment: jinja2.Environment, name: str) -> bool:
    """Whether template file `name` exists for this environment: in its folder, or among the
    stored texts of a playbook version."""
    if isinstance(environment.loader, StoredTemplates):
        return name in environment.loader.mapping
    folder = templates_dir_of(environment)
    return folder is not None and (folder / name).is_file()


def template_label(environment: jinja2.Environment, name: str) -> str:
    """How messages name template file `name`: its path, or its stored version's label."""
    loader = environment.loader
    if isinstance(loader, StoredTemplates):
        return f"{loader.label}/{name}"
    folder = templates_dir_of(environment)
    return str(folder / name) if folder else name


class RenderFailure(Exception):
    """A render failure with its template line (1-based, 0 unknown), before it gets a location."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def as_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap nested mappings as `_Record`s so undefined keys are named by their dotted path."""
    return {name: as_value(name, value) for name, value in context.items()}


_PLAIN = frozenset({str, int, float, bool, type(None), datetime, date})
"""Types `as_value` returns as they are, checked by exact type first: a customer record is
mostly such values, and the checks for mappings and lists cost more than the wrapping."""


def as_value(where: str, value: Any) -> Any:
    """One context value as templates see it: mappings (nested too) as `_Record`s named by their
    dotted path (`where`), lists copied with their items wrapped, anything else as it is."""
    if type(value) in _PLAIN or isinstance(value, _Record):
        return value
    if isinstance(value, Mapping):
        return _Record(where, {k: v if type(v) in _PLAIN else as_value(f"{where}.{k}", v)
                               for k, v in value.items()})
    if isinstance(value, list):
        return [v if type(v) in _PLAIN else as_value(f"{where}[{i}]", v)
                for i, v in enumerate(value)]
    return value


def header_problem(value: str) -> str | None:
    """Why `value` may not be a header (a line break, also RFC 2047 encoded), or None."""
    if LINE_BREAK.search(value):
        return "header value contains a line break (header injection)"
    for word in _ENCODED_WORD.findall(value):
        try:
            parts = decode_header(word)
        except HeaderParseError:
            return "header value contains an encoded word that cannot be decoded"
        for raw, charset in parts:
            text = raw.decode(charset or "ascii", "replace") if isinstance(raw, bytes) else raw
            if LINE_BREAK.search(text):
                return "header value contains an encoded line break (header injection)"
    return None


def _failure_line(exc: BaseException, template: jinja2.Template) -> int:
    """The line of `template` where rendering failed, from Jinja's rewritten traceback."""
    filename = template.filename or "<template>"
    lines = [f.lineno or 0 for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return lines[-1] if lines else 0


def describe(exc: BaseException) -> str:
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


def run_template(template: jinja2.Template, context: dict[str, Any], header: bool) -> str:
    """Render with the output cap and the header guard; every failure becomes `RenderFailure`."""
    parts: list[str] = []
    size = 0  # characters; bytes (exactly) once the text might pass the cap
    exact = False
    try:
        for chunk in _generate(template, context):
            parts.append(chunk)
            size += len(chunk.encode("utf-8", "surrogatepass")) if exact else len(chunk)
            if not exact and size * 4 > MAX_OUTPUT_BYTES:  # a character is at most 4 bytes
                size, exact = sum(len(p.encode("utf-8", "surrogatepass")) for p in parts), True
            if size > MAX_OUTPUT_BYTES and exact:
                raise RenderFailure("rendered output is larger than 256 KiB")
    except _RENDER_ERRORS as exc:
        raise RenderFailure(describe(exc), _failure_line(exc, template)) from exc
    text = "".join(parts)
    if header and (problem := header_problem(text)):
        raise RenderFailure(problem)
    return text


def _generate(template: jinja2.Template, context: Mapping[str, Any]) -> Iterator[str]:
    """`template.generate(context)`, as Jinja 3.1 writes it, without rebuilding the template's
    globals from their ChainMap twice per call (a third of a short title's render): they are
    flattened once per template. Errors go through `handle_exception` as there, so the
    traceback still names the template line."""
    flat = template.__dict__.get("_retain_globals")
    if flat is None:
        flat = template.__dict__["_retain_globals"] = dict(template.globals)
    ctx = new_context(template.environment, template.name, template.blocks,
                      {**flat, **context}, True, flat)
    try:
        yield from template.root_render_func(ctx)
    except Exception:  # noqa: BLE001 - re-raised by Jinja with the template's traceback
        yield template.environment.handle_exception()


def inline_names(environment: jinja2.Environment, source: str, html: bool) -> frozenset[str] | None:
    """The context names an inline template reads (`customer`, `unsubscribe_url`, ...), found
    once per environment; None when any may be read (it includes or imports another template,
    which sees the whole context) or it does not parse (rendering reports that)."""
    cache: dict[tuple[str, bool], frozenset[str] | None] = environment.__dict__.setdefault(
        "_retain_inline_names", {})
    key = (source, html)
    if key not in cache:
        try:
            tree = environment.parse(source)
        except jinja2.TemplateSyntaxError:
            cache[key] = None
        else:
            referenced = list(meta.find_referenced_templates(tree))
            cache[key] = None if referenced else frozenset(meta.find_undeclared_variables(tree))
    return cache[key]


def compile_inline(environment: jinja2.Environment, source: str, html: bool) -> jinja2.Template:
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
        raise RenderFailure(describe(exc), exc.lineno) from exc
    cache[(source, html)] = template
    return template


def reads_nothing(environment: jinja2.Environment, source: str, html: bool) -> bool:
    """Whether an inline template renders the same text in any context: it loads no name at
    all (`customer`, a loop variable, the globals `range` and `lipsum`), includes nothing and
    draws nothing at random (the `random` filter), so its text, once rendered, is every
    customer's (a constant subject, a fixed task title)."""
    cache: dict[tuple[str, bool], bool] = environment.__dict__.setdefault(
        "_retain_reads_nothing", {})
    key = (source, html)
    if key not in cache:
        try:
            tree = environment.parse(source)
        except jinja2.TemplateSyntaxError:
            tree = None
        cache[key] = tree is not None and not any(
            isinstance(node, nodes.Name) and node.ctx == "load"  # globals too: range, lipsum
            or isinstance(node, nodes.Filter) and node.name == "random"
            or isinstance(node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends)
            for node in tree.find_all(nodes.Node))
    return cache[key]


def render(environment: jinja2.Environment, source: str, context: Mapping[str, Any], *,
           header: bool = False, html: bool = False) -> str:
    """Render an inline template (an action field); `html=True` autoescapes like `.html.j2`.

    A template that reads nothing is rendered once per environment and its text reused: a plan
    renders the same constant subject for every enrollment. A failure is never kept (each
    render fails anew, with its own message)."""
    constants: dict[tuple[str, bool, bool], str] = environment.__dict__.setdefault(
        "_retain_constant_texts", {})
    if (source, html, header) in constants:
        return constants[(source, html, header)]
    try:
        text = run_template(compile_inline(environment, source, html), as_context(context), header)
    except RenderFailure as failure:
        where = f"line {failure.line}: " if failure.line and "\n" in source else ""
        raise TemplateError(f"{where}{failure.message}") from failure
    if reads_nothing(environment, source, html):
        constants[(source, html, header)] = text
    return text


def render_file(environment: jinja2.Environment, name: str, context: Mapping[str, Any]) -> str:
    """Render a template file; errors carry the file and line as their location."""
    path = template_label(environment, name)
    try:
        template = environment.get_template(name)
        return run_template(template, as_context(context), header=False)
    except (jinja2.TemplateSyntaxError, jinja2.TemplateNotFound) as exc:
        line = getattr(exc, "lineno", 0) or 0
        failure = RenderFailure(describe(exc), line)
    except RenderFailure as exc:
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
