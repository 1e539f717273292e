"""A real `retain daemon` process for the daemon tests (tests/test_daemon_*.py).

`Daemon` starts `retain --db URL daemon playbooks --listen 127.0.0.1:PORT` in a project folder
(live_support.Project) with the environment of a deployment sending to a real aiosmtpd
(live_support.Mailbox), waits for `/readyz`, and talks to it over real HTTP. Its log (JSON lines
on stderr, since stderr is not a terminal) is kept in a file the test can read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_support import FROM, Mailbox, Project, free_port

TOKEN = "test-api-token-0123456789"
WELCOME = """trigger:
  first_purchase: { lookback: 2d }
actions:
  - email: { subject: "Welcome {{ customer.name }}", body: "Thanks for your first order." }
"""
WAKE_UP = """trigger:
  inactive: { days: 30 }
actions:
  - email: { subject: "We miss you, {{ customer.name }}", body: "Come back soon." }
"""


def wait_for(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05,
             what: str = "the condition") -> Any:
    """Poll until `check()` is truthy (and return it); fail after a generous timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class Daemon:
    """One `retain daemon` process."""

    project: Project
    smtp_port: int
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> Daemon:
        self.log_path = self.project.root / f"daemon-{self.port}.log"
        env = {**os.environ, "RETAIN_SMTP_HOST": "127.0.0.1",
               "RETAIN_SMTP_PORT": str(self.smtp_port), "RETAIN_SMTP_TLS": "none",
               "RETAIN_SMTP_TIMEOUT": "5", "RETAIN_EMAIL_FROM": FROM,
               "RETAIN_SECRET_KEY": "a-test-secret-key-of-enough-length",
               "RETAIN_API_TOKEN": TOKEN, **self.env}
        for name in ("RETAIN_EMAIL_TRANSPORT", "RETAIN_EMAIL_DIR", "RETAIN_DATABASE_URL"):
            env.pop(name, None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from cli.main import main; main()", "--db", self.project.url, "daemon",
                 "playbooks", "--listen", f"127.0.0.1:{self.port}", *self.args],
                cwd=self.project.root, env=env, stdout=log, stderr=log)
        if ready:
            wait_for(self.ready, what=f"the daemon on port {self.port} to be ready")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.process.returncode}:\n"
                                 f"{self.log()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=30, **kw)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path else ""

    def records(self) -> list[dict[str, Any]]:
        """The log's JSON lines (other lines, a crash's traceback, are skipped)."""
        found = []
        for line in self.log().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found


@pytest.fixture
def running(project: Project, mailbox: Mailbox) -> Any:
    """Start daemons for the test (`running(**Daemon fields)`); every one still running at the
    end is killed."""
    started: list[Daemon] = []

    def start(**kw: Any) -> Daemon:
        daemon = Daemon(project, mailbox.port, **kw).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
