"""`retain daemon`: run continuously — the API, evaluation on a schedule and on events, and the
outbox dispatched as things come due (engine/daemon, docs/DAEMON.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.evaluate import playbooks_at
from cli.playbooks import PathsArg

ListenOpt = Annotated[str, typer.Option(
    "--listen", envvar="RETAIN_LISTEN",
    help="Address of the HTTP API, HOST:PORT (env RETAIN_LISTEN).")]
GraceOpt = Annotated[float, typer.Option(
    "--grace", help="Seconds in-flight sends get to finish after SIGTERM/SIGINT.")]


def daemon(ctx: typer.Context, paths: PathsArg = None, listen: ListenOpt = "127.0.0.1:8765",
           grace: GraceOpt = 20.0) -> None:
    """Run continuously: the HTTP API, evaluation on a schedule and on events, the outbox
    delivered as it comes due.

    SIGTERM/SIGINT stop it cleanly (in-flight sends get --grace seconds); a second signal
    exits at once. Several daemons on one PostgreSQL database share the work
    (docs/DEPLOYMENT.md)."""
    from pathlib import Path

    from engine.config import load_settings
    from engine.daemon.loop import Timing
    from engine.daemon.main import check_listen, parse_listen, run_daemon
    from engine.errors import InputError

    try:
        check_listen(*parse_listen(listen))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    settings = load_settings()
    folders = paths or [Path(settings.playbooks_dir)]
    from engine.outbox.run import require_transport

    # refuse to start on invalid playbooks (every problem listed), or on email with no
    # transport, webhooks with no secret: better now than a failing cycle every few seconds
    require_transport(playbooks_at(folders), settings)
    code = run_daemon(ctx.obj.db_url, folders, listen, settings, Timing(grace=grace))
    raise typer.Exit(code)
