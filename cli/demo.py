"""`retain demo`: build the demo database and dry-run the sample playbooks against it.

The demo data are real 2010-2011 purchases, so the dry-run is evaluated as of the midnight after
the latest event: "now" for that data set. Nothing is sent or written by the dry-run.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.table import Table

from cli import render
from cli.evaluate import print_plan
from engine.demo.build import load_demo
from engine.plan.build import make_plan
from engine.query.checks import load_valid_playbooks
from engine.store.open import open_store
from engine.store.tables import Customer, Event
from playbooks import SAMPLES_DIR


def demo(ctx: typer.Context,
         as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False
         ) -> None:
    """Create a demo database (real purchases, generated extras) and dry-run the samples."""
    engine = open_store(ctx.obj.db_url)
    with render.progress("demo data", None) as advance:
        customers, events = load_demo(engine, progress=advance)
    playbooks = load_valid_playbooks([SAMPLES_DIR])
    with engine.connect() as connection:
        by_type = dict(connection.execute(
            sa.select(Event.type, sa.func.count()).group_by(Event.type)).all())
        total = connection.execute(sa.select(sa.func.count()).select_from(Customer)).scalar_one()
        last = connection.execute(sa.select(sa.func.max(Event.occurred_at))).scalar_one()
        as_of = next_midnight(last)
        plan = make_plan(connection, playbooks, as_of, show=None if as_json else 3)
        connection.rollback()
    summary = {"database": ctx.obj.db_url, "customers": total, "events": by_type,
               "latest_event": last, "synced": {"customers": customers.inserted,
                                                "events": events.inserted},
               "playbooks": [p.id for p in playbooks]}
    if as_json:
        render.print_json({**summary, "dry_run": plan.to_json(every=False)})
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
                         "birthdays, logins and feedback are generated.\n")
    print_plan(plan)
    render.console.print(f"\nNext: `retain --db {ctx.obj.db_url} explain winback-30d CUSTOMER "
                         f"--playbooks {SAMPLES_DIR} --as-of {as_of:%Y-%m-%d}` shows why a "
                         "customer does or does not enter.")


def next_midnight(moment: datetime) -> datetime:
    """The start of the day after `moment` (UTC): the demo's "now"."""
    return datetime.combine(moment.date() + timedelta(days=1), time(0), tzinfo=moment.tzinfo)
