"""A real uvicorn server in a thread, serving the daemon's API app on a free port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from pydantic import SecretStr

from engine.config import Settings

TOKEN = "test-api-token-0123456789"
SECRET_KEY = "unsubscribe-key-0123456789abcdef"


def api_settings(**values: object) -> Settings:
    """Settings with the API token and a signing key set, as a daemon would have them."""
    return Settings(api_token=SecretStr(TOKEN), secret_key=SecretStr(SECRET_KEY), **values)


@dataclass
class Served:
    """A running server: its base URL and what the app told the loop."""

    url: str
    ingested: list[set[str]] = field(default_factory=list)


@contextmanager
def serve(engine: sa.Engine, settings: Settings | None = None,
          ready: bool = True) -> Iterator[Served]:
    """Serve make_app for `engine` on 127.0.0.1 (a port the OS picks) until the block ends."""
    import uvicorn

    from engine.daemon.api import ApiContext, make_app, server_config

    served = Served("")
    context = ApiContext(engine, settings or api_settings(), ready=lambda: ready,
                         on_ingested=served.ingested.append)
    server = uvicorn.Server(server_config(make_app(context), "127.0.0.1", 0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    served.url = f"http://127.0.0.1:{port}"
    served.context = context  # type: ignore[attr-defined]
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(10)
