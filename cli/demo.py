"""`retain demo`: build the demo database and run the sample playbooks live against it.

The demo data are real 2010-2011 purchases, so the run is at the midnight after the latest
event: "now" for that data set. It is a real live run (enrollments, outbox, tasks, points),
except that email goes to a folder: the email connector's file transport writes each message as
an `.eml` file (`RETAIN_EMAIL_TRANSPORT=file`, `RETAIN_EMAIL_DIR`), the way web frameworks offer
a file mail backend for development. The demo sets that for itself; nothing leaves the machine.
Running it again finds nothing new to do.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.table import Table

from cli import render
from cli.run import print_report
from engine.config import load_settings
from engine.demo.build import load_demo
from engine.outbox.run import run_cycle
from engine.query.checks import load_valid_playbooks
from engine.store.facts import ENGINE_EVENT_TYPES
from engine.store.open import open_store, sqlite_file
from engine.store.tables import Customer, Event
from playbooks import SAMPLES_DIR


def demo(ctx: typer.Context,
         as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False
         ) -> None:
    """Create a demo database and run the sample playbooks live; email goes to a folder."""
    engine = open_store(ctx.obj.db_url)
    with render.progress("demo data", None) as advance:
        customers, events = load_demo(engine, progress=advance)
    playbooks = load_valid_playbooks([SAMPLES_DIR])
    with engine.connect() as connection:
        synced = Event.type.not_in(ENGINE_EVENT_TYPES)  # not what the last demo run recorded
        by_type = dict(connection.execute(
            sa.select(Event.type, sa.func.count()).where(synced).group_by(Event.type)).all())
        total = connection.execute(sa.select(sa.func.count()).select_from(Customer)).scalar_one()
        last = connection.execute(sa.select(sa.func.max(Event.occurred_at)).where(
            synced)).scalar_one()
    as_of = next_midnight(last)
    mail = mail_dir(ctx.obj.db_url)
    settings = load_settings().model_copy(update={"email_transport": "file",
                                                  "email_dir": str(mail)})
    with render.progress("running the samples live", len(playbooks)) as advance:
        report = run_cycle(engine, playbooks, as_of, settings, progress=advance)
    engine.dispose()
    messages = sorted(mail.glob("*.eml")) if mail.is_dir() else []
    summary = {"database": ctx.obj.db_url, "customers": total, "events": by_type,
               "latest_event": last, "synced": {"customers": customers.inserted,
                                                "events": events.inserted},
               "playbooks": [p.id for p in playbooks], "mail_dir": str(mail),
               "messages": len(messages), "run": report.to_json()}
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
                         "birthdays, logins and feedback are generated.\n")
    print_report(report)
    sent = sum(line.delivered["sent"] for line in report.playbooks.values())
    if messages:
        render.console.print(f"\n{sent:,} actions delivered now; {len(messages):,} emails are in "
                             f"{mail}/ (open one: {messages[0]}).", markup=False)
    else:
        render.console.print(f"\n{sent:,} actions delivered; no email was written.")
    render.console.print("Next: `retain outbox list`, `retain tasks list`, `retain report "
                         "playbooks`; run `retain demo` again and nothing new happens.",
                         markup=False)


def mail_dir(db_url: str) -> Path:
    """Where the demo writes its email: beside a SQLite file (`retain-mail/` for
    `retain.db`), else `retain-demo-mail/` in the current folder."""
    file = sqlite_file(db_url)
    if file is None:
        return Path("retain-demo-mail").resolve()
    return file.resolve().parent / f"{file.stem}-mail"


def next_midnight(moment: datetime) -> datetime:
    """The start of the day after `moment` (UTC): the demo's "now"."""
    return datetime.combine(moment.date() + timedelta(days=1), time(0), tzinfo=moment.tzinfo)
