"""`retain migrate`: upgrade the database schema; reading commands never do, they ask for this."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import render
from engine.store.open import upgrade_store

JsonOpt = Annotated[bool, typer.Option("--json", help="Print from, to and changed as JSON.")]


def migrate(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Upgrade the database schema (reading commands never do).

    Brings the database to the schema this Retain needs; a new database is created."""
    change = upgrade_store(ctx.obj.db_url)
    if as_json:
        render.print_json({"from": change.before, "to": change.after, "changed": change.changed})
    elif change.before is None:
        render.console.print(f"schema created: none -> {change.after}")
    elif change.changed:
        render.console.print(f"schema upgraded: {change.before} -> {change.after}")
    else:
        render.console.print(f"schema {change.after}: already current, nothing to do")
