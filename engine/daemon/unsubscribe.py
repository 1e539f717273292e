"""The unsubscribe endpoints' work: check a token without writing, apply one, and the pages.

A GET never unsubscribes: mail scanners and link previewers fetch every link in a message, so
the GET shows a page whose button POSTs; the POST is also what RFC 8058 one-click clients
(Gmail, Yahoo) send. Applying a token is the existing code (engine/outbox/admin.py
`unsubscribe_by_token`, which verifies with engine/consent.py): the same as `retain
unsubscribe --token`, in one transaction, so a bad token changes nothing.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from engine.clock import utcnow
from engine.consent import verify_token
from engine.errors import InputError
from engine.outbox.admin import signing_key, unsubscribe_by_token
from engine.store.txn import writing

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def page(title: str, body: str) -> str:
    """A small self-contained HTML page (no scripts, nothing loaded from elsewhere)."""
    return PAGE.format(title=html.escape(title), body=body)


def confirmation_page(token: str) -> str:
    """The GET's page: one button that POSTs the same token."""
    action = html.escape(f"/unsubscribe?token={quote(token, safe='')}")
    return page("Unsubscribe", (
        "<p>Stop receiving these emails? Press the button to confirm.</p>"
        f'<form method="post" action="{action}">'
        '<button type="submit">Unsubscribe</button></form>'))


def done_page() -> str:
    """The POST's page after the address was unsubscribed (the address is not shown)."""
    return page("You are unsubscribed", "<p>You will not receive these emails any more.</p>")


def bad_token_page(reason: str) -> str:
    """A 400 page: the link is incomplete or altered, and nothing was changed."""
    return page("This link does not work", f"<p>{html.escape(reason)}</p>"
                "<p>Nothing was changed. Copy the whole link from the email and try again.</p>")


def check_token(engine: sa.Engine, token: str, settings: Any) -> None:
    """InputError unless `token` is valid; writes nothing (a key made on the way is rolled back)."""
    with engine.connect() as connection:
        try:
            verify_token(token, signing_key(connection, settings))
        finally:
            connection.rollback()


def apply_token(engine: sa.Engine, token: str, settings: Any) -> None:
    """Unsubscribe the token's address in one transaction; InputError (nothing changed) if bad."""
    with writing(engine) as connection:
        unsubscribe_by_token(connection, token, settings, utcnow())


def token_problem(engine: sa.Engine, token: str | None, settings: Any, apply: bool) -> str | None:
    """Why the token does not work (None: it worked): check it, or apply it when `apply`."""
    if token is None or not token.strip():
        return "The link has no token."
    try:
        (apply_token if apply else check_token)(engine, token, settings)
    except InputError as exc:
        return str(exc)
    return None
