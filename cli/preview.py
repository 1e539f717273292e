"""`retain preview`: the whole message a customer would get from one email step, unsent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import render
from cli.evaluate import AsOfOpt, PlaybooksOpt, as_of_time, find_playbook, require_customer
from cli.playbooks import JsonOpt
from engine.clock import iso
from engine.errors import InputError
from engine.plan.preview import Preview, message_parts, preview
from engine.store.open import open_reader


def preview_command(
    ctx: typer.Context,
    playbook: Annotated[str, typer.Argument(help="Playbook id.")],
    customer: Annotated[str, typer.Argument(help="Customer id.")],
    step: Annotated[int | None, typer.Option(
        "--step", min=0, help="Index in the playbook's actions: list (waits count) [default: the "
        "first email].", show_default=False)] = None,
    paths: PlaybooksOpt = None,
    as_of: AsOfOpt = None,
    html_file: Annotated[Path | None, typer.Option(
        "--html", help="Also write the HTML part to this file.", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Render the whole message (headers, text, HTML) one customer would get. Sends nothing."""
    chosen = find_playbook(playbook, paths)
    moment = as_of_time(as_of)
    engine = open_reader(ctx.obj.db_url)
    with engine.connect() as connection:
        require_customer(connection, customer)
        result = preview(connection, chosen, customer, moment, step=step)
        connection.rollback()
    if html_file is not None:
        _write_html(result, html_file)
    if as_json:
        render.print_json(result.to_json())
    else:
        print_preview(result)
    for note in result.notes:
        render.error(f"note: {note}")


def _write_html(result: Preview, path: Path) -> None:
    html = message_parts(result.message)["html"] if result.message is not None else None
    if html is None:
        raise InputError(f"{result.playbook.id}: actions[{result.step}].{result.kind} has no "
                         "HTML part to write")
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot write the HTML part: {exc.strerror}") from exc


def print_preview(result: Preview) -> None:
    """Headers, then each part; another kind's payload as field: value lines."""
    out = render.console
    out.print(f"{result.playbook.id} actions[{result.step}].{result.kind} for customer "
              f"{result.customer_id}, due {iso(result.due_at)} (as of {iso(result.as_of)}); "
              "not sent", markup=False)
    if result.message is None:
        for key, value in (result.payload or {}).items():
            out.print(f"{key}: {iso(value) if hasattr(value, 'tzinfo') else value}",
                      markup=False)
        return
    parts = message_parts(result.message)
    for name, value in result.headers():
        if not name.lower().startswith(("content-", "mime-")):
            out.print(f"{name}: {value}", markup=False, soft_wrap=True)
    for label in ("text", "html"):
        if parts[label] is not None:
            out.print(f"\n--- {label} part ---", markup=False)
            out.print(parts[label].rstrip("\n"), markup=False, soft_wrap=True)
