"""`retain demo`: build the demo database and check the sample playbooks against it."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
import typer
from rich.table import Table

from cli import render
from engine.demo import load_demo
from engine.store import open_store
from engine.tables import Customer, Event
from engine.validation import load_valid_playbooks
from playbooks import SAMPLES_DIR


def demo(ctx: typer.Context,
         as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False
         ) -> None:
    """Create a demo database (real purchases, generated extras) and validate the samples."""
    engine = open_store(ctx.obj.db_url)
    with render.progress("demo data", None) as advance:
        customers, events = load_demo(engine, progress=advance)
    playbooks = load_valid_playbooks([SAMPLES_DIR])
    with engine.connect() as connection:
        by_type = dict(connection.execute(
            sa.select(Event.type, sa.func.count()).group_by(Event.type)).all())
        total = connection.execute(sa.select(sa.func.count()).select_from(Customer)).scalar_one()
        last = connection.execute(sa.select(sa.func.max(Event.occurred_at))).scalar_one()
    summary = {"database": ctx.obj.db_url, "customers": total, "events": by_type,
               "latest_event": last, "synced": {"customers": customers.inserted,
                                                "events": events.inserted},
               "playbooks": [p.id for p in playbooks]}
    if as_json:
        render.print_json(summary)
        return
    table = Table(title=f"Demo database {ctx.obj.db_url}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("customers", f"{total:,}")
    for kind, count in sorted(by_type.items()):
        table.add_row(f"{kind} events", f"{count:,}")
    render.console.print(table)
    render.console.print(f"Latest event: {last:%Y-%m-%d %H:%M} UTC. "
                         f"{len(playbooks)} sample playbooks valid: {', '.join(summary['playbooks'])}.")
    render.console.print("Purchases are real (UCI Online Retail, CC BY 4.0); names, e-mails, "
                         "birthdays, logins and feedback are generated.")
