"""`validate` accepts only what runs: the last layer compiles each playbook's statement for
SQLite and PostgreSQL (engine/query/checks.py), and whatever it refuses has a file:line:column.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa
from conftest import Cli
from sqlalchemy.dialects.postgresql import aggregate_order_by

from engine.format.triggers import InactiveTrigger, TriggerContext, TriggerSql
from engine.query.checks import compile_problems, load_playbooks
from playbooks import SAMPLES_DIR

PLAYBOOK = """\
id: plan-check
name: Plan check
trigger:
  inactive: {{ days: 30 }}
when:
{when}
actions:
  - task: {{ title: "Call {{{{ customer.name }}}}" }}
"""


def write(folder: Path, when: str) -> Path:
    path = folder / "plan-check.yaml"
    path.write_text(PLAYBOOK.format(when=when), encoding="utf-8")
    return path


def test_the_issue_example_is_refused_at_its_place(tmp_path: Path) -> None:
    """`attributes.plan: {gt: true}` validated and then failed in dry-run with no location."""
    path = write(tmp_path, "  - attributes.plan: { gt: true }")
    [issue] = load_playbooks([path], env={}).issues
    assert str(issue) == (f"{path}:6:28: when[0].attributes.plan.gt: gt, gte, lt and lte "
                          "compare numbers or text, not true")


def test_every_sample_compiles_for_both_databases() -> None:
    result = load_playbooks([SAMPLES_DIR], env={})
    assert result.issues == [] and result.playbooks
    assert all(compile_problems(playbook) == [] for playbook in result.playbooks)


class _PostgresOnlyTrigger(InactiveTrigger):
    """A trigger whose SQL only PostgreSQL can spell: what the dialect layer is there to catch."""

    def sql(self, tc: TriggerContext, backfill: bool) -> TriggerSql:
        part = super().sql(tc, backfill)
        column = sa.column("x")
        odd = sa.func.array_agg(aggregate_order_by(column, column.desc())).is_not(None)
        return replace(part, where=(*part.where, odd))


def test_a_statement_one_dialect_cannot_compile_is_a_problem(tmp_path: Path) -> None:
    [playbook] = load_playbooks([write(tmp_path, "  - total_spent: { gt: 1 }")],
                                env={}).playbooks
    broken = replace(playbook, trigger=_PostgresOnlyTrigger(playbook.trigger.params,
                                                            playbook.trigger.path))
    [problem] = compile_problems(broken)
    assert problem.path == ("trigger",)
    assert problem.message.startswith("does not compile for sqlite: ")


def test_validate_and_dry_run_name_the_place(tmp_path: Path, cli: Cli) -> None:
    path = write(tmp_path, "  - attributes.plan: { gt: true }")
    expected = f"{path}:6:28: when[0].attributes.plan.gt:"
    code, _, err = cli(["validate", str(path)])
    assert code == 1 and err.startswith(expected)
    code, _, err = cli(["--db", f"sqlite:///{tmp_path / 'none.db'}", "dry-run", str(path)])
    assert code == 1 and expected in err
