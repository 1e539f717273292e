"""Where a live run's settings come from, end to end (docs/CONFIG.md): a retain.toml in the
project folder drives a real send; a run that could not send, or would mail a link that does not
work, stops before committing anything and names the settings it needs.
"""

from __future__ import annotations

import pytest
from live_support import Mailbox, Project, customer, mailbox, project, purchase

from engine.store.tables import actions, enrollments

__all__ = ["mailbox", "project"]  # fixtures
AS_OF = "2024-05-01T10:00:00Z"
WINBACK = """trigger:
  inactive: { days: 30 }
actions:
  - email: { subject: "Hi {{ customer.name }}", body: "Hello. {{ unsubscribe_url }}" }
"""


def shop(project: Project) -> None:
    project.playbook("winback", WINBACK)
    project.customers(customer("ann"))
    project.events(purchase("p-ann", "ann", "2024-03-01T10:00:00Z"))


def test_smtp_settings_from_retain_toml(project: Project, mailbox: Mailbox,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mailbox.start()
    project.toml(f'[retain]\nemail_from = "Shop <news@shop.example>"\n'
                 f'public_url = "https://retain.shop.example"\n\n'
                 f'[smtp]\nhost = "127.0.0.1"\nport = {mailbox.port}\ntls = "none"\n')
    shop(project)
    project.retain("run", "--as-of", AS_OF)
    (message,) = mailbox.messages
    assert str(message["From"]) == "Shop <news@shop.example>"
    assert str(message["List-Unsubscribe"]).startswith("<https://retain.shop.example/")


def test_no_mail_transport_stops_before_committing(project: Project) -> None:
    shop(project)
    code, out, err = project.retain("run", "--as-of", AS_OF, ok=False)
    assert code == 1
    said = " ".join((out + err).split())
    assert "winback" in said and "RETAIN_SMTP_HOST" in said and "RETAIN_EMAIL_TRANSPORT" in said
    assert project.rows(enrollments) == [] and project.rows(actions) == []


def test_no_sender_stops_before_committing(project: Project, mailbox: Mailbox,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    shop(project)
    monkeypatch.setenv("RETAIN_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("RETAIN_SMTP_PORT", str(mailbox.port))
    monkeypatch.delenv("RETAIN_EMAIL_FROM", raising=False)
    code, out, err = project.retain("run", "--as-of", AS_OF, ok=False)
    assert code == 1 and "RETAIN_EMAIL_FROM" in " ".join((out + err).split())
    assert project.rows(enrollments) == []


def test_a_plain_http_public_url_stops_before_committing(project: Project, mailbox: Mailbox,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8058 wants HTTPS unsubscribe links; only a loopback host may use plain HTTP."""
    shop(project)
    for name, value in {"RETAIN_SMTP_HOST": "127.0.0.1", "RETAIN_SMTP_PORT": str(mailbox.port),
                        "RETAIN_SMTP_TLS": "none", "RETAIN_EMAIL_FROM": "news@shop.example",
                        "RETAIN_PUBLIC_URL": "http://retain.shop.example"}.items():
        monkeypatch.setenv(name, value)
    code, out, err = project.retain("run", "--as-of", AS_OF, ok=False)
    said = " ".join((out + err).split())
    assert code == 1 and "RETAIN_PUBLIC_URL" in said and "https" in said
    assert project.rows(enrollments) == []
