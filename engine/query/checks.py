"""The last validation layer: a playbook's statement compiles for SQLite and PostgreSQL.

`retain validate` must accept only what runs: a condition that parses but that SQL cannot
express (`attributes.plan: {gt: true}`) has to be refused there, at its file:line:column, not
later by dry-run with no location. Such conditions are refused while parsing, in format
(compile.refused_conditions: every one, without a statement). What only the whole statement can
show is checked here: the statement is built by `compose` in query, and format may not import
query (docs/ARCHITECTURE.md), so this check is handed to format's loader as a last layer
(`checks=`) rather than moving the statement building down into format, where the planner and
explain, which own how it is run, would no longer see it. `load_playbooks` and
`load_valid_playbooks` below are format's loaders with it; validate, dry-run, explain and demo
load through them.

Nothing here opens a connection: the statement is built from the playbook and representative
values of what a run reads from the database (as-of, time zones, first enable), in both the
present and the historical mode, and compiled with each dialect.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.errors import Problem
from engine.format import validation
from engine.format.compile import CompileContext, CompileRefused
from engine.format.playbook import Playbook
from engine.format.triggers import TriggerContext
from engine.query.evaluate import playbook_query

DIALECTS: tuple[sa.Dialect, ...] = (sqlite.dialect(), postgresql.dialect())
AS_OF = datetime(2024, 2, 29, 12, 0, tzinfo=UTC)  # a leap day: the date trigger's odd case
CONTEXTS = (  # kept facts and no enable; historical facts, a DST zone and a first enable
    TriggerContext(CompileContext(AS_OF), (None, "UTC")),
    TriggerContext(CompileContext(AS_OF, historical=True), (None, "America/New_York"),
                   datetime(2024, 1, 1, tzinfo=UTC)),
)


def compile_problems(playbook: Playbook) -> list[Problem]:
    """Why the playbook's statement would not compile, at its path; [] when it does.

    Each condition that SQL cannot express has been refused while parsing (format/compile.py
    `refused_conditions`, every one of them); this is the whole statement, per context and
    dialect, so whatever else a statement could trip on is found here and not by dry-run.
    """
    for tc in CONTEXTS:
        dialect = DIALECTS[0]
        try:
            statement = playbook_query(playbook, tc)  # built once, compiled per dialect
            for dialect in DIALECTS:
                statement.compile(dialect=dialect)
        except CompileRefused as exc:
            return [exc.problem]
        except (sa.exc.SQLAlchemyError, ValueError, TypeError) as exc:
            return [Problem(("trigger",), f"does not compile for {dialect.name}: {exc}",
                            at="key")]
    return []


def load_playbooks(paths: list[Path], env: Mapping[str, str] | None = None,
                   connectors: Mapping[str, Any] | None = None) -> validation.LoadResult:
    """Format's `load_playbooks` with the compile layer: what `retain validate` reports."""
    return validation.load_playbooks(paths, env, connectors, checks=(compile_problems,))


def load_valid_playbooks(paths: list[Path], env: Mapping[str, str] | None = None
                         ) -> list[Playbook]:
    """The playbooks under `paths` that validate and compile, or PlaybookError with every issue."""
    return validation.load_valid_playbooks(paths, env, checks=(compile_problems,))
