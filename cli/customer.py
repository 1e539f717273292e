"""`retain customer show ID`: the 360° view of one customer, as tables or `--json`.

The data comes from engine/query/customer_view.py as one plain dict; this module only lays it out, so
the text and the JSON always say the same thing. Every value from the data is printed as plain
text, never as rich markup: a customer named `[bold]` stays `[bold]`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from cli import render
from engine.errors import InputError
from engine.query.customer_view import DEFAULT_EVENTS, customer_view, tag_changes
from engine.store.open import open_reader

customer_app = typer.Typer(help="Look at one customer: profile, facts, timeline, what was done.",
                           no_args_is_help=True)

NONE = "-"
Row = dict[str, Any]

IdArg = Annotated[str, typer.Argument(metavar="ID", help="The customer_id.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the view as JSON.")]
EventsOpt = Annotated[int, typer.Option("--events", min=0, metavar="N",
                                        help="How many of the newest events to show.")]


@customer_app.command("show")
def show(ctx: typer.Context, customer_id: IdArg, as_json: JsonOpt = False,
         events: EventsOpt = DEFAULT_EVENTS) -> None:
    """Show a customer's profile, facts, newest events, enrollments, actions, tasks and points."""
    engine = open_reader(ctx.obj.db_url)
    try:
        view = customer_view(engine, customer_id, events)
    finally:
        engine.dispose()
    if view is None:
        raise InputError(f"customer '{customer_id}' not found")
    if as_json:
        render.print_json(view)
        return
    _print_profile(view)
    _print_facts(view["facts"])
    _print_timeline(view["events"])
    _print_engine_work(view)


def _print_profile(view: Row) -> None:
    """Own columns as field/value rows, with the email's suppression right under the profile."""
    customer = dict(view["customer"])
    customer["tags"] = _tags(customer.pop("file_tags"), customer.pop("tags_added"),
                             customer.pop("tags_removed"))
    attributes = customer.pop("attributes") or {}
    suppressed = view["suppressed"]
    customer["suppressed"] = (f"yes: {suppressed['reason']} since "
                              f"{_when(suppressed['created_at'])}" if suppressed else "no")
    rows = [*customer.items(), *((f"attributes.{k}", v) for k, v in sorted(attributes.items()))]
    _field_table(f"Customer {customer['customer_id']} (times in UTC)", rows)


def _tags(file_tags: list[str], added: list[str], removed: list[str]) -> str | None:
    """`vip, newsletter; by playbooks: +low-activity -active`: the file's tags, then the
    playbooks' changes to them (conditions see the result)."""
    from_file = ", ".join(file_tags)
    changes = tag_changes(added, removed)
    if changes is None:
        return from_file or None
    return f"{from_file or 'none from the file'}; by playbooks: {changes}"


def _print_facts(facts: Row) -> None:
    """The derived facts under the names playbooks use for them."""
    _field_table("Facts", list(facts.items()))


def _print_timeline(events: Row) -> None:
    """Newest events first, and how many are not shown."""
    shown, total = events["shown"], events["total"]
    if not total:
        _none_yet("Timeline", "no events yet")
        return
    caption = (f"showing {len(shown):,} of {total:,} events; --events N for more"
               if len(shown) < total else f"{total:,} event{'s' if total != 1 else ''}")
    _list_table("Timeline (newest first)",
                ["time", "type", "event_id", "amount", "score", "properties"],
                [[_when(e["occurred_at"]), e["type"], e["event_id"], _money(e["amount"]),
                  e["score"], e["properties"]] for e in shown], caption)


def _print_engine_work(view: Row) -> None:
    """What the engine did for this customer: enrollments, outbox actions, tasks, points."""
    _list_table("Enrollments", ["entered", "playbook", "step", "status", "next or end"],
                [[_when(e["entered_at"]), e["playbook_id"], e["step"],
                  f"{e['status']}{' (holdout)' if e['holdout'] else ''}", _next_or_end(e)]
                 for e in view["enrollments"]])
    _list_table("Actions", ["created", "playbook", "action", "what", "why"],
                [[_when(a["created_at"]), a["playbook_id"], _attempted(a), a["summary"], _why(a)]
                 for a in view["actions"]])
    _list_table("Tasks", ["created", "title", "assignee", "due", "status"],
                [[_when(t["created_at"]), t["title"], t["assignee"], _when(t["due_at"]),
                  t["status"]] for t in view["tasks"]])
    points = view["points"]
    _list_table("Points", ["created", "amount", "reason"],
                [[_when(p["created_at"]), p["amount"], p["reason"]] for p in points["entries"]],
                f"balance {points['balance']:,}")


def _next_or_end(enrollment: Row) -> str | None:
    if enrollment["ended_at"]:
        reason = enrollment["end_reason"]
        return f"ended {_when(enrollment['ended_at'])}{f': {reason}' if reason else ''}"
    return f"wakes {_when(enrollment['wake_at'])}" if enrollment["wake_at"] else None


def _attempted(action: Row) -> str:
    """`email: sent`, `webhook: failed (3 tries)`: the connector and how delivery went."""
    tries = f" ({action['attempts']} tries)" if action["attempts"] > 1 else ""
    return f"{action['connector']}: {action['status']}{tries}"


def _why(action: Row) -> str | None:
    """The skip or defer reason and the last delivery error, whichever there are."""
    return "; ".join(text for text in (action["reason"], action["last_error"]) if text) or None


def _field_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, _cell(_field_value(name, value)))
    render.console.print(table)


def _list_table(title: str, headers: list[str], rows: list[list[Any]],
                caption: str | None = None) -> None:
    """A table under `title` whose first column is a time, or one line saying there are none yet."""
    if not rows:
        _none_yet(title, "none yet")
        return
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, no_wrap=index == 0, overflow="fold",  # ids whole, never "…"
                         justify="right" if header == "amount" else "left")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    render.console.print(table)


def _field_value(name: str, value: Any) -> Any:
    if name.endswith("_at"):
        return _when(value)
    return _money(value) if name == "total_spent" else value


def _none_yet(title: str, message: str) -> None:
    render.console.print(Text.assemble((title, "bold"), f": {message}"))


def _cell(value: Any) -> Text:
    """One value as plain text, never markup."""
    if value is None or value == "":
        return Text(NONE, style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, float):
        return Text(f"{value:.15g}")  # no float noise: 49.989999999999995 -> 49.99
    if isinstance(value, int):
        return Text(f"{value:,}")
    if isinstance(value, dict):
        return Text(" ".join(f"{k}={_compact(v)}" for k, v in value.items()) or NONE)
    return Text(str(value))


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _money(value: float | None) -> str | None:
    return None if value is None else f"{value:,.2f}"


def _when(iso: str | None) -> str | None:
    """`2024-04-02T08:15:00Z` as `2024-04-02 08:15`; the profile's title says UTC."""
    return None if iso is None else datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
