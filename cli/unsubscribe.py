"""`retain unsubscribe EMAIL` or `--token T`: stop every email to an address, at once.

A writer (`open_store`). The token is the one in an email's unsubscribe link; it is verified
with `RETAIN_SECRET_KEY`, or the key the engine keeps in the database, and never printed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cli import plain

if TYPE_CHECKING:
    import sqlalchemy as sa

    from engine.outbox.admin import Unsubscribed


def unsubscribe(
    ctx: typer.Context,
    email: Annotated[str | None, typer.Argument(metavar="[EMAIL]", show_default=False,
                                                help="The address (any letter case).")] = None,
    token: Annotated[str | None, typer.Option("--token", metavar="T", show_default=False,
                                              help="The token= value of an unsubscribe link.")]
    = None,
) -> None:
    """Suppress an address (or a link's token) and stop its waiting emails.

    The address is stored lower-cased in the suppressions as `unsubscribed`. In the same
    transaction its waiting email actions (planned, deferred, retrying) are marked
    `suppressed` with the reason; one being sent at this moment is stopped by the
    dispatcher's own check at send time. An address suppressed before keeps its reason.
    """
    from engine.clock import utcnow
    from engine.config import load_settings
    from engine.outbox.admin import unsubscribe as by_address
    from engine.outbox.admin import unsubscribe_by_token

    if (email is None) == (token is None):
        raise typer.BadParameter("give an EMAIL or --token T, not both", param_hint="EMAIL")
    settings = load_settings()

    def change(connection: sa.Connection) -> Unsubscribed:
        if token is not None:
            return unsubscribe_by_token(connection, token, settings, utcnow())
        return by_address(connection, email or "", utcnow())

    result = plain.write(ctx, change)
    if result.already:
        typer.echo(f"{result.address} was already suppressed ({result.already})")
    else:
        typer.echo(f"{result.address} unsubscribed: no email will go to it")
    if result.stopped:
        typer.echo(f"{result.stopped:,} waiting email{'s' if result.stopped != 1 else ''} "
                   "marked suppressed")
