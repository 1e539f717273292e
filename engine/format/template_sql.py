"""The simplest inline templates as SQL: what Jinja would render, computed by the database.

A live run that enrolls 150,000 customers into a task spends most of its time rendering
`Call {{ customer.name }}` once per customer. When a template is only text and a customer's
text columns (or the playbook's id and name), the database can build the same string for every
customer in the `INSERT ... SELECT` that commits them (engine/outbox/set_commit.py). Anything
else (a filter, an `if`, a number, an event property, `unsubscribe_url`) is not translated:
`template_sql` answers None and the playbook is planned per customer, as always.

What Jinja does and the SQL must match (proven value by value against `render` on both
databases in tests/test_template_sql.py):

- a missing value (NULL) prints as nothing (`finalize`), text as it is (no autoescape: `html`
  templates are never translated);
- a header value (a task title) refuses line breaks, also RFC 2047 encoded ones, and every
  output stops at 256 KiB. The SQL does not reproduce those refusals: `safe` is true only for a
  string that certainly passes (no line-break character, no `=?`, at most 65,536 characters,
  which is at most 256 KiB in UTF-8). A customer whose string is not certainly safe is planned
  per customer instead, where the refusal (a dead action) or the pass is decided exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import sqlalchemy as sa
from jinja2 import nodes

from engine.format.fields import CUSTOMER_FIELDS, FieldType
from engine.format.templates import Inline
from engine.store.dialect import PerDialect, concat
from engine.store.facts import DERIVED_FACTS, customers

Column = sa.ColumnElement[Any]
SAFE_CHARS = 65_536  # characters that fit the 256 KiB output cap whatever their UTF-8 width
LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # templates.LINE_BREAK's characters
TEXT_COLUMNS = frozenset(name for name, kind in CUSTOMER_FIELDS.items()
                         if kind is FieldType.TEXT and name not in DERIVED_FACTS)
"""Customer fields a translated template may print: stored text, the same in any as-of."""


@dataclass(frozen=True)
class TemplateSql:
    """A translated template: its text for the customer of the row, and when that is exact."""

    text: Column
    safe: sa.ColumnElement[bool]


def template_sql(environment: jinja2.Environment, template: Inline,
                 playbook: Mapping[str, str]) -> TemplateSql | None:
    """`template` as SQL over `customers` (the playbook's `id` and `name` as constants), or
    None when it uses anything else."""
    try:
        tree = environment.parse(template.source)
    except jinja2.TemplateSyntaxError:
        return None
    parts: list[Column] = []
    for output in tree.body:
        if not isinstance(output, nodes.Output):
            return None
        for node in output.nodes:
            part = _part(node, playbook)
            if part is None:
                return None
            parts.append(part)
    text = concat(*parts) if parts else sa.literal("", sa.String())
    return TemplateSql(text, _safe(text, template.header))


def _part(node: nodes.Node, playbook: Mapping[str, str]) -> Column | None:
    if isinstance(node, nodes.TemplateData):
        return sa.literal(node.data, sa.String())
    if not (isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name)):
        return None
    owner, name = node.node.name, node.attr
    if owner == "customer" and name in TEXT_COLUMNS:
        return sa.func.coalesce(customers.c[name], sa.literal("", sa.String()))
    if owner == "playbook" and isinstance(playbook.get(name), str):
        return sa.literal(playbook[name], sa.String())
    return None


def no_nul(text: Column) -> sa.ColumnElement[bool]:
    """True when `text` has no NUL character. SQLite's length(), substr() and GLOB stop at the
    first NUL (JSON lines may carry `\\u0000`), so what follows one would go unchecked; such a
    value is left to the planner. PostgreSQL text cannot hold NUL: always true there."""
    return PerDialect(sa.func.instr(text, sa.func.char(0)) == 0, sa.true())


def _safe(text: Column, header: bool) -> sa.ColumnElement[bool]:
    """True when `text` certainly renders as it is: within the output cap and, for a header,
    with no line break and no encoded word (one GLOB or one regular expression); on SQLite
    also without a NUL character (`no_nul`)."""
    short = sa.and_(sa.func.length(text) <= SAFE_CHARS, no_nul(text))
    if not header:
        return short
    sqlite = sa.and_(short, sa.not_(text.op("GLOB", is_comparison=True)(f"*[{LINE_BREAKS}]*")),
                     sa.func.instr(text, "=?") == 0)
    postgresql = sa.and_(short, text.op("!~", is_comparison=True)(f"[{LINE_BREAKS}]|=\\?"))
    return PerDialect(sqlite, postgresql)
