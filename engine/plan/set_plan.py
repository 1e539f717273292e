"""A playbook's plan as SQL, for a live run to commit with `INSERT ... SELECT`.

Planning each enrollment in Python (engine/plan/planner.py) costs tens of microseconds: reading
the customer, hashing keys, rendering a task title. For 150,000 enrollments that is ten times
what the database spends writing them. When every decision for a playbook's first stage can be
made by the database, it is: the holdout group and the idempotency keys are SHA-256 in SQL
(`holdout_sql`, `key_sql`, twins of `in_holdout` and `action_key`), and each action's frozen
payload is built from its connector's `payload_template` with the templates translated to SQL
(engine/format/template_sql.py). engine/outbox/set_commit.py writes the rows.

A playbook is planned this way only when that gives exactly what the planner gives
(tests/test_set_commit.py commits both ways and compares every row):

- every action of its first stage comes from a connector with a `payload_template`, whose
  templates all translate (a task with `Call {{ customer.name }}`, points, tags); an email or a
  webhook is planned per customer (its payload is a whole message, signed link and all);
- no cap and no quiet hours are set for those channels (they are judged per customer);
- customers whose translated text is not certainly safe (a line break in a name that a title
  prints, see template_sql.py) are left to the planner: `rest` selects them.

A playbook that does not qualify is planned per customer exactly as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from engine.format.playbook import Playbook
from engine.format.template_sql import Inline, TemplateSql, no_nul, template_sql
from engine.plan.delivery import DeliveryRules
from engine.plan.planner import KEY_PREFIX_CHARS, plain_fields, schedule
from engine.store.dialect import PerDialect, concat, sha256_hex

Column = sa.ColumnElement[Any]
HASH_SPAN = 2**64  # in_holdout reads the first 8 bytes of the digest


@dataclass(frozen=True)
class SetAction:
    """One first-stage action: its place and its payload, constants and translated templates."""

    step: int
    kind: str
    payload: Mapping[str, Any]  # JSON data, or TemplateSql where a template is rendered


@dataclass(frozen=True)
class SetPlan:
    """What a live run commits for a playbook in SQL (module docstring)."""

    playbook: Playbook
    query: sa.Select[Any]  # the plan's statement: who enters
    exact: sa.ColumnElement[bool]  # whether SQL renders this row exactly
    actions: tuple[SetAction, ...]
    run_at: datetime  # the first stage's due time

    @property
    def candidates(self) -> sa.Select[Any]:
        """The rows committed in SQL."""
        return self.query.where(self.exact)

    @property
    def rest(self) -> sa.Select[Any]:
        """The rows left to the planner."""
        return self.query.where(sa.not_(self.exact))


def set_plan(playbook: Playbook, query: sa.Select[Any], connectors: Mapping[str, Any],
             rules: DeliveryRules, environment: jinja2.Environment,
             as_of: datetime) -> SetPlan | None:
    """The playbook's first stage in SQL, or None when the planner must decide per customer."""
    found: list[SetAction] = []
    safe: list[sa.ColumnElement[bool]] = []
    names = {"id": playbook.id, "name": playbook.document.name}
    for item in schedule(playbook):
        if item.stage != 0:
            continue
        kind = item.action.kind
        if kind in rules.caps or kind in rules.quiet_hours:
            return None
        template = payload_template(connectors[kind])
        fields = template(item.action.params, as_of + item.delay) if template else None
        if fields is None:
            return None
        payload: dict[str, Any] = {}
        for name, value in plain_fields(fields).items():
            if isinstance(value, Inline):
                value = template_sql(environment, value, names)
                if value is None:
                    return None
                safe.append(value.safe)
            payload[name] = value
        found.append(SetAction(item.step, kind, payload))
    safe.append(no_nul(query.selected_columns.customer_id))  # key_sql's substr() (SQLite)
    return SetPlan(playbook, query, sa.and_(*safe), tuple(found), as_of)


PAYLOAD_METHODS = ("plan", "payload", "recipient_problem", "blocked")
"""What decides a connector's payload and status for one customer: `payload_template` stands for
them only where the class that defines it also defines (or inherits) every one of these."""


def payload_template(connector: Any) -> Any:
    """The connector's `payload_template`, or None when it may not give exactly `payload`: a
    connector that needs an address, or a subclass (a third party's) that changes one of
    PAYLOAD_METHODS and inherits the template of its parent."""
    if getattr(connector, "needs_email", False):
        return None
    kind = type(connector)
    owner = _owner(kind, "payload_template")
    if owner is None or not all(issubclass(owner, _owner(kind, name) or object)
                                for name in PAYLOAD_METHODS):
        return None
    return connector.payload_template


def _owner(kind: type, name: str) -> type | None:
    """The class of `kind`'s MRO that defines `name`."""
    return next((base for base in kind.__mro__ if name in vars(base)), None)


def holdout_sql(playbook: Playbook, customer_id: Column, occurrence: Column
                ) -> sa.ColumnElement[bool]:
    """`in_holdout` in SQL: the first 16 hex digits of the same digest below the share."""
    threshold = holdout_threshold(playbook.document.holdout or 0.0)
    if threshold == 0:
        return sa.false()
    if threshold >= HASH_SPAN:
        return sa.true()
    head = sa.func.substr(sha256_hex(playbook.id, customer_id, occurrence), 1, 16)
    bound = f"{threshold:016x}"
    return PerDialect(head < bound, head.collate("C") < bound)


def holdout_threshold(share: float) -> int:
    """The least 64-bit head `v` with `v / 2**64 >= share`: `in_holdout` is `v < threshold`
    exactly, float rounding of the division included (a binary search over the same test)."""
    low, high = 0, HASH_SPAN
    while low < high:
        middle = (low + high) // 2
        if middle / HASH_SPAN < share:
            low = middle + 1
        else:
            high = middle
    return low


def key_sql(playbook: Playbook, customer_id: Column, occurrence: Column, stage: int,
            step: int) -> Column:
    """`action_key` in SQL: the readable prefix and the first 32 hex digits of the digest."""
    digest = sha256_hex(playbook.id, playbook.version, customer_id, occurrence, str(stage),
                        str(step))
    return concat(sa.literal(f"{playbook.id[:KEY_PREFIX_CHARS]}/", sa.String()),
                  sa.func.substr(customer_id, 1, KEY_PREFIX_CHARS),
                  f"/{stage}.{step}/", sa.func.substr(digest, 1, 32))


def payload_sql(payload: Mapping[str, Any]) -> Column:
    """A payload as a JSON object built by the database: constants as JSON, templates as text
    (key order kept on SQLite; PostgreSQL's jsonb orders keys its own way, as it does for every
    payload)."""
    sqlite: list[Any] = []
    postgresql: list[Any] = []
    for name, value in payload.items():
        sqlite.append(sa.literal(name, sa.String()))
        postgresql.append(sa.literal(name, sa.String()))
        if isinstance(value, TemplateSql):
            sqlite.append(value.text)
            postgresql.append(sa.cast(value.text, sa.Text()))
        else:
            document = json.dumps(value)
            sqlite.append(sa.func.json(sa.literal(document, sa.String())))
            postgresql.append(sa.cast(sa.literal(document, sa.String()),
                                      JSONB()))
    return PerDialect(sa.func.json_object(*sqlite), sa.func.jsonb_build_object(*postgresql),
                      sa.JSON())
