"""Unsubscribe tokens and links: sign an address, verify a token, build the RFC 8058 link.

Every email carries `{RETAIN_PUBLIC_URL}/unsubscribe?token=T` (DESIGN 3, RELIABILITY 15). The
token `T` is the lower-cased address and an HMAC-SHA256 of it, both base64url without padding,
joined by a dot: `YW5uQGV4YW1wbGUuY29t.Zk3...`. It carries the address, so applying it needs no
lookup table, and it has no expiry on purpose: a link in a two-year-old email must still work
(Gmail and Yahoo ask that unsubscribes be honoured, not that they time out). A forged or
altered token fails the constant-time comparison.

This module is pure: the key comes from the caller (`RETAIN_SECRET_KEY`, or the key the engine
keeps in `engine_secrets`, made by engine/outbox/admin.py `signing_key`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from engine.errors import InputError

SIGNING_KEY_NAME = "unsubscribe-key"
"""The `engine_secrets` row that holds the key when RETAIN_SECRET_KEY is unset."""
PUBLIC_URL_ENV = "RETAIN_PUBLIC_URL"
_PURPOSE = b"retain-unsubscribe-v1\x00"
"""Domain separation: a MAC made here is never valid for another use of the same key."""
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
"""What passes for an address, the same test `retain sync` applies to customer emails."""


def normalize_address(address: str) -> str:
    """The one spelling of an address for suppressions and tokens: stripped, lower-cased."""
    return address.strip().lower()


def require_address(address: str) -> str:
    """`address` normalized, or InputError naming it when it is not an email address."""
    normal = normalize_address(address)
    if not ADDRESS.fullmatch(normal):
        raise InputError(f"{address.strip()!r} is not an email address")
    return normal


def new_key() -> str:
    """A fresh random signing key (256 bits, URL-safe text, storable as is)."""
    return secrets.token_urlsafe(32)


def unsubscribe_token(address: str, key: bytes) -> str:
    """The token that unsubscribes `address` (any letter case gives the same token)."""
    _require_key(key)
    plain = normalize_address(address).encode()
    return f"{_b64(plain)}.{_b64(_mac(plain, key))}"


def verify_token(token: str, key: bytes) -> str:
    """The lower-cased address a token unsubscribes; InputError when it is malformed or forged."""
    _require_key(key)
    encoded, dot, signature = token.strip().rpartition(".")
    if not dot or not encoded or not signature:
        raise InputError("unsubscribe token is malformed: expected ADDRESS.SIGNATURE "
                         "(copy the whole token= value of the link)")
    try:
        plain, given = _unb64(encoded), _unb64(signature)
        address = plain.decode()
    except (binascii.Error, ValueError):
        raise InputError("unsubscribe token is malformed: not base64url text") from None
    if not hmac.compare_digest(given, _mac(plain, key)):
        raise InputError("unsubscribe token is not valid: its signature does not match (altered, "
                         "or signed with another RETAIN_SECRET_KEY)")
    if address != normalize_address(address) or not ADDRESS.fullmatch(address):
        raise InputError("unsubscribe token is not valid: it holds no address")
    return address


def check_public_url(public_url: str) -> str:
    """`public_url` without a trailing slash, if links may point there; else InputError naming
    RETAIN_PUBLIC_URL."""
    problem = public_url_problem(public_url)
    if problem is not None:
        raise InputError(f"{PUBLIC_URL_ENV} {public_url!r} {problem}")
    return public_url.strip().rstrip("/")


def public_url_problem(public_url: str) -> str | None:
    """Why links may not point at `public_url` (the words after the quoted URL), or None:
    HTTPS, or plain HTTP only to a loopback host (RFC 8058 asks for HTTPS; a local daemon need
    not have TLS). The one rule, for the settings check and for the links."""
    parts = urlsplit(public_url.strip())
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return "is not an http(s) URL, like https://retain.example.com"
    if parts.query or parts.fragment:
        return "may not carry a query or fragment: links append /unsubscribe?token=... to it"
    if parts.scheme == "http" and not is_loopback(host):
        return ("must be https:// (RFC 8058: unsubscribe links use HTTPS; plain http only for "
                "127.0.0.1, ::1 or localhost)")
    return None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: a host only this machine reaches."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def unsubscribe_url(public_url: str, token: str) -> str:
    """`{public_url}/unsubscribe?token=T`, after `check_public_url`."""
    return f"{check_public_url(public_url)}/unsubscribe?token={quote(token, safe='.-_')}"


def unsubscribe_links(key: bytes, public_url: str) -> Callable[[str], str]:
    """address -> its unsubscribe link, for a live run's planner: the public URL is checked
    once, here, so a bad RETAIN_PUBLIC_URL stops the run before anything is committed."""
    base = check_public_url(public_url)
    _require_key(key)

    def link(address: str) -> str:  # the base was checked once above, not per customer
        return f"{base}/unsubscribe?token={quote(unsubscribe_token(address, key), safe='.-_')}"

    return link


def _mac(plain: bytes, key: bytes) -> bytes:
    return hmac.new(key, _PURPOSE + plain, hashlib.sha256).digest()


def _require_key(key: bytes) -> None:
    if len(key) < 16:
        raise ValueError("an unsubscribe signing key needs at least 16 bytes")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not ASCII")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
