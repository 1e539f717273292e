"""Unsubscribe tokens: they round-trip, resist forgery, ignore letter case, never expire, and
are signed with a key that survives restarts (RELIABILITY 15 and 17, the token side)."""

from __future__ import annotations

import base64
import threading
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from engine.consent import (
    SIGNING_KEY_NAME,
    check_public_url,
    is_loopback,
    unsubscribe_links,
    unsubscribe_token,
    unsubscribe_url,
    verify_token,
)
from engine.errors import InputError
from engine.outbox.admin import signing_key
from engine.store.open import open_store
from engine.store.tables import secrets

KEY = b"k" * 32
OTHER = b"o" * 32


def settings(secret_key: str | None = None) -> SimpleNamespace:
    """A stand-in for engine.config.Settings with the one field signing_key reads."""
    return SimpleNamespace(secret_key=secret_key, public_url="http://127.0.0.1:8765")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_round_trips_to_the_lower_cased_address() -> None:
    token = unsubscribe_token("  Ann.Lee+news@Example.COM ", KEY)
    assert verify_token(token, KEY) == "ann.lee+news@example.com"
    assert token == unsubscribe_token("ann.lee+news@example.com", KEY)  # case-insensitive
    assert token.count(".") == 1 and "=" not in token and "/" not in token and "+" not in token


def test_a_token_signed_with_another_key_is_refused() -> None:
    with pytest.raises(InputError, match="signature does not match"):
        verify_token(unsubscribe_token("ann@example.com", OTHER), KEY)


def test_a_tampered_or_forged_token_is_refused() -> None:
    token = unsubscribe_token("ann@example.com", KEY)
    address, signature = token.split(".")
    swapped = f"{b64(b'bob@example.com')}.{signature}"  # another address, the old signature
    flipped = f"{address}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    for bad in (swapped, flipped, f"{address}.{b64(b'x' * 32)}"):
        with pytest.raises(InputError, match="signature does not match"):
            verify_token(bad, KEY)
    for malformed in ("", "nodot", f"{address}.", f".{signature}", "a!b.c$d", "é.é"):
        with pytest.raises(InputError, match="malformed"):
            verify_token(malformed, KEY)


def test_an_upper_case_address_inside_a_valid_signature_is_refused() -> None:
    """Only what unsubscribe_token makes verifies: a signed but non-normal address is refused."""
    import hashlib
    import hmac

    plain = b"Ann@Example.com"
    mac = hmac.new(KEY, b"retain-unsubscribe-v1\x00" + plain, hashlib.sha256).digest()
    with pytest.raises(InputError, match="holds no address"):
        verify_token(f"{b64(plain)}.{b64(mac)}", KEY)


def test_the_link_is_https_or_loopback_only() -> None:
    token = unsubscribe_token("ann@example.com", KEY)
    assert unsubscribe_url("https://retain.example.com/", token) == \
        f"https://retain.example.com/unsubscribe?token={token}"
    assert unsubscribe_url("http://127.0.0.1:8765", token).startswith(
        "http://127.0.0.1:8765/unsubscribe?token=")
    for local in ("http://localhost:8765", "http://127.8.0.1", "http://[::1]:8765",
                  "https://[::1]"):
        assert check_public_url(local) == local
    for bad in ("http://retain.example.com", "http://10.0.0.1:8765", "http://[::2]",
                "http://localhost.example.com"):
        with pytest.raises(InputError, match=r"RETAIN_PUBLIC_URL .* must be https://"):
            check_public_url(bad)
    for bad in ("ftp://example.com", "retain.example.com", "https://", "https://x.com/?a=1"):
        with pytest.raises(InputError, match="RETAIN_PUBLIC_URL"):
            check_public_url(bad)
    assert is_loopback("LOCALHOST") and not is_loopback("example.com")


def test_links_for_a_live_run_check_the_url_once_and_carry_a_verifiable_token() -> None:
    link = unsubscribe_links(KEY, "https://retain.example.com")
    url = link("Ann@Example.com")
    base, _, token = url.partition("/unsubscribe?token=")
    assert base == "https://retain.example.com" and verify_token(token, KEY) == "ann@example.com"
    assert link("ann@example.com") == url  # the same link on every send and re-send
    with pytest.raises(InputError, match="RETAIN_PUBLIC_URL"):
        unsubscribe_links(KEY, "http://retain.example.com")


def test_the_secret_key_setting_signs_when_set(db: sa.Engine) -> None:
    with db.begin() as connection:
        assert signing_key(connection, settings("s" * 20)) == b"s" * 20
        assert connection.execute(sa.select(sa.func.count()).select_from(secrets)).scalar() == 0
        with pytest.raises(InputError, match="RETAIN_SECRET_KEY is too short"):
            signing_key(connection, settings("short"))


def test_the_kept_key_survives_a_restart(db_url: str) -> None:
    """Two loads (two engines, as two processes would) get the same key, made once."""
    first = open_store(db_url)
    with first.begin() as connection:
        key = signing_key(connection, settings())
    first.dispose()
    second = open_store(db_url)
    with second.begin() as connection:
        assert signing_key(connection, settings()) == key
        rows = connection.execute(sa.select(secrets)).all()
    second.dispose()
    assert [row.name for row in rows] == [SIGNING_KEY_NAME] and len(key) >= 32
    token = unsubscribe_token("ann@example.com", key)
    assert verify_token(token, key) == "ann@example.com"


def test_replicas_racing_for_the_key_agree(db_url: str) -> None:
    """Four connections create the key at once: one insert wins, every one reads the winner."""
    engine = open_store(db_url)
    keys: list[bytes] = []
    barrier = threading.Barrier(4)

    def load() -> None:
        with engine.connect() as connection:
            barrier.wait()
            with connection.begin():
                keys.append(signing_key(connection, settings()))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert len(keys) == 4 and len(set(keys)) == 1
