"""`retain daemon`, assembled: the store, the loop, the API and its server, the logs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.daemon.logs import configure
from engine.daemon.loop import Daemon, Timing


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) -> (host, port); ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen / RETAIN_LISTEN must be HOST:PORT, like 127.0.0.1:8765; "
                         f"got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_listen(host: str, port: int) -> None:
    """ValueError naming the address when it cannot be listened on (in use, not ours): said
    before the daemon opens the store or takes any lease, not as a traceback after."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--listen / "
                             "RETAIN_LISTEN)") from exc


def run_daemon(db_url: str | None, paths: list[Path], listen: str, settings: Any,
               timing: Timing | None = None) -> int:
    """Run until SIGTERM/SIGINT; the exit code."""
    from engine.store.open import open_store

    host, port = parse_listen(listen)
    configure()
    writer = open_store(db_url)
    try:
        daemon = Daemon(writer, settings, paths, timing=timing)
        return asyncio.run(daemon.run(_server(daemon, host, port)))
    finally:
        writer.dispose()


def _server(daemon: Daemon, host: str, port: int) -> Any:
    """The API behind uvicorn in the daemon's own event loop; the daemon handles the signals."""
    import uvicorn

    from engine.daemon.api import ApiContext, make_app, server_config

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # Daemon.run installs its own handlers
            yield

    app = make_app(ApiContext(daemon.writer, daemon.settings, ready=daemon.ready,
                              on_ingested=daemon.on_ingested, metrics=daemon.metrics))
    return Server(server_config(app, host, port))
