"""Segment's protocol: the pure mapping, and Segment's own Python library against a real server."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from api_support import TOKEN, Served, api_settings, serve

from engine.config import load_settings
from engine.config.model import DEFAULT_SEGMENT_AMOUNT, DEFAULT_SEGMENT_EVENTS
from engine.errors import InputError
from engine.store.tables import customers, events
from engine.sync.segment import map_messages

RECEIVED = datetime(2024, 5, 1, tzinfo=UTC)
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()}


def mapped(*messages: object) -> object:
    return map_messages(list(enumerate(messages)), DEFAULT_SEGMENT_EVENTS, DEFAULT_SEGMENT_AMOUNT, RECEIVED)


def test_track_maps_name_amount_and_ids() -> None:
    result = mapped({"type": "track", "messageId": "m1", "userId": "u1", "event": "Order Completed",
                     "timestamp": "2024-04-30T12:00:00.000Z",
                     "properties": {"revenue": 9, "total": 12.5, "currency": "EUR"}})
    [(index, row)] = result.events
    assert index == 0
    assert row == {"event_id": "m1", "customer_id": "u1", "type": "purchase",
                   "occurred_at": "2024-04-30T12:00:00.000Z",
                   "properties": {"revenue": 9, "total": 12.5, "currency": "EUR", "amount": 12.5}}


def test_identify_traits_to_columns_and_attributes() -> None:
    result = mapped({"type": "identify", "userId": "u1", "context": {"timezone": "Europe/Oslo"},
                     "traits": {"email": "a@b.co", "firstName": "Ann", "lastName": "Lee",
                                "birthday": "1990-02-03T00:00:00.000Z",
                                "createdAt": "2020-01-01T00:00:00Z", "plan": "gold",
                                "address": {"country": "NO", "city": "Oslo"}}})
    [(_, row)] = result.customers
    assert row == {"customer_id": "u1", "email": "a@b.co", "name": "Ann Lee",
                   "birthday": "1990-02-03", "created_at": "2020-01-01T00:00:00Z",
                   "country": "NO", "timezone": "Europe/Oslo",
                   "attributes": {"plan": "gold", "address": {"city": "Oslo"}}}


def test_page_screen_group_alias_anonymous() -> None:
    result = mapped({"type": "page", "messageId": "p", "userId": "u", "name": "Home"},
                    {"type": "screen", "messageId": "s", "userId": "u", "properties": {}},
                    {"type": "group", "userId": "u", "groupId": "g"},
                    {"type": "alias", "userId": "u", "previousId": "x"},
                    {"type": "track", "anonymousId": "anon", "event": "x"},
                    {"type": "track", "event": "x"}, {"type": "nope", "userId": "u"}, 7)
    assert [(i, row["type"]) for i, row in result.events] == [(0, "page"), (1, "screen")]
    assert result.events[0][1]["occurred_at"] == RECEIVED
    assert result.ignored == 2 and result.anonymous == 1
    assert [(r.index, r.field) for r in result.rejected] == [(5, "userId"), (6, "type"), (7, None)]


def test_segment_table_in_retain_toml(tmp_path: Path) -> None:
    (tmp_path / "retain.toml").write_text(
        '[segment.events]\n"Signed Up" = "signup"\n"Order Completed" = "order"\n')
    settings = load_settings(tmp_path, env={})
    assert settings.segment.events == {"Signed Up": "signup", "Order Completed": "order"}
    assert load_settings(Path("/nonexistent"), env={}).segment.events == DEFAULT_SEGMENT_EVENTS
    (tmp_path / "retain.toml").write_text('[segment]\nevent = {}\n')
    with pytest.raises(InputError, match=r"\[segment\] unknown key 'event' \(did you mean 'events'"):
        load_settings(tmp_path, env={})
    (tmp_path / "retain.toml").write_text('[retain]\napi_token = "x"\n')
    with pytest.raises(InputError, match="RETAIN_API_TOKEN"):
        load_settings(tmp_path, env={})
    assert load_settings(tmp_path.parent, env={"RETAIN_API_TOKEN": "t"}).api_token is not None


@pytest.fixture
def api(db: sa.Engine) -> Iterator[Served]:
    with serve(db) as served:
        yield served


def stored(db: sa.Engine, sql: str) -> list[tuple[object, ...]]:
    with db.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(sql)]


def test_segment_library_identify_and_track(api: Served, db: sa.Engine) -> None:
    from segment.analytics import Client

    errors: list[object] = []
    client = Client(write_key=TOKEN, host=api.url, sync_mode=True, gzip=True,
                    on_error=lambda error, _batch: errors.append(error), max_retries=0)
    client.track(user_id="u1", event="Order Completed", message_id="m1",
                 properties={"total": 42.5, "currency": "EUR"},
                 timestamp=datetime(2024, 4, 30, 12, tzinfo=UTC))  # before identify
    client.identify(user_id="u1", traits={"email": "ann@example.com", "firstName": "Ann",
                                          "lastName": "Lee", "plan": "gold"},
                    context={"timezone": "Europe/Oslo"})
    client.track(anonymous_id="anon", event="Product Viewed")
    client.flush()
    assert errors == []
    assert stored(db, "SELECT event_id, customer_id, type, amount FROM events") == [
        ("m1", "u1", "purchase", 42.5)]
    assert stored(db, "SELECT customer_id, email, name, timezone, purchase_count FROM customers"
                  ) == [("u1", "ann@example.com", "Ann Lee", "Europe/Oslo", 1)]
    assert {"u1"} in api.ingested


def test_batch_keeps_valid_messages_and_lists_the_rest(api: Served, db: sa.Engine) -> None:
    batch = {"batch": [
        {"type": "track", "messageId": "m1", "userId": "u1", "event": "Signed Up",
         "timestamp": "2024-04-30T12:00:00Z"},
        {"type": "track", "messageId": "m2", "userId": "u1", "event": "Order Completed",
         "timestamp": "2024-04-30T12:00:00Z", "properties": {"total": -3}},
        {"type": "identify", "userId": "u2", "traits": {"email": "not an address"}},
        {"type": "track", "anonymousId": "a", "event": "x"},
        {"type": "group", "userId": "u1", "groupId": "g"},
        {"type": "track", "messageId": "big", "userId": "u1", "event": "x",
         "properties": {"blob": "x" * 40_000}},
    ]}
    response = httpx.post(f"{api.url}/v1/batch", json=batch, headers=BASIC)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True and answer["accepted"] == 1
    assert answer["skipped_anonymous"] == 1 and answer["ignored"] == 1
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
        (1, "amount"), (2, "email"), (5, None)]
    assert stored(db, "SELECT event_id, type FROM events") == [("m1", "Signed Up")]


def test_segment_auth_limits_and_errors(api: Served, db: sa.Engine) -> None:
    message = {"messageId": "m1", "userId": "u1", "event": "x", "timestamp": "2024-04-30T12:00:00Z"}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"wrong:").decode()}
    with_password = {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:pw".encode()).decode()}
    for headers in ({}, wrong, with_password, {"Authorization": f"Bearer {TOKEN}"}):
        assert httpx.post(f"{api.url}/v1/track", json=message, headers=headers).status_code == 401
    assert httpx.post(f"{api.url}/v1/track", content=b"nope", headers=BASIC).status_code == 400
    big = {**message, "properties": {"blob": "x" * 33_000}}
    assert httpx.post(f"{api.url}/v1/track", json=big, headers=BASIC).status_code == 413
    many = {"batch": [{**message, "messageId": f"m{i}", "properties": {"blob": "x" * 20_000}}
                      for i in range(30)]}
    packed = gzip.compress(json.dumps(many).encode())
    assert len(packed) < 50_000  # small on the wire; the limit is measured after gunzip
    response = httpx.post(f"{api.url}/v1/batch", content=packed,
                          headers={**BASIC, "Content-Encoding": "gzip"})
    assert response.status_code == 413
    ok = httpx.post(f"{api.url}/v1/track", json=message, headers=BASIC)
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    with db.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 1
        assert connection.execute(sa.select(customers.c.customer_id)).scalars().all() == ["u1"]


def test_identify_endpoint(api: Served, db: sa.Engine) -> None:
    body = {"userId": "u9", "traits": {"name": "Cy", "address": {"country": "SE"}}}
    response = httpx.post(f"{api.url}/v1/identify", json=body, headers=BASIC)
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert stored(db, "SELECT customer_id, name, country FROM customers") == [("u9", "Cy", "SE")]


def test_settings_map_used_by_the_server(db: sa.Engine) -> None:
    settings = api_settings(segment={"events": {"Checkout Done": "purchase"}})
    with serve(db, settings) as api:
        response = httpx.post(f"{api.url}/v1/track", headers=BASIC, json={
            "messageId": "m1", "userId": "u1", "event": "Checkout Done",
            "timestamp": "2024-04-30T12:00:00Z", "properties": {"revenue": 5}})
    assert response.status_code == 200, response.text
    assert stored(db, "SELECT type, amount FROM events") == [("purchase", 5.0)]


def test_concurrent_requests_for_one_new_customer(api: Served, db: sa.Engine) -> None:
    """Replicas and threads racing to create the same customer: no error, each event once."""
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> int:
        batch = {"batch": [
            {"type": "identify", "userId": "racer", "traits": {"name": f"R{i}"}},
            {"type": "track", "messageId": f"m{i}", "userId": "racer", "event": "x",
             "timestamp": "2024-04-30T12:00:00Z"}]}
        return httpx.post(f"{api.url}/v1/batch", json=batch, headers=BASIC, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, range(16))) == {200}
    assert stored(db, "SELECT count(*) FROM events") == [(16,)]
    assert stored(db, "SELECT customer_id FROM customers") == [("racer",)]


def test_single_message_endpoints_of_the_other_types(api: Served, db: sa.Engine) -> None:
    """SDKs that do not batch post each type to its own path: page and screen become events,
    group and alias are accepted and ignored."""
    for kind in ("page", "screen", "group", "alias"):
        reply = httpx.post(f"{api.url}/v1/{kind}", headers=BASIC, json={
            "messageId": f"m-{kind}", "userId": "u9", "name": "Home", "groupId": "g",
            "previousId": "old", "timestamp": "2024-04-30T12:00:00Z"})
        assert reply.status_code == 200, reply.text
    assert stored(db, "SELECT event_id, type FROM events ORDER BY event_id") == [
        ("m-page", "page"), ("m-screen", "screen")]


def test_a_page_without_properties_keeps_its_name() -> None:
    """Segment's HTTP API lets `properties` out; the page's `name` is kept as a property
    all the same (it was dropped unless a `properties` object came with it)."""
    result = mapped({"type": "page", "messageId": "p", "userId": "u", "name": "Home"},
                    {"type": "screen", "messageId": "s", "userId": "u", "name": "Cart",
                     "properties": None})
    assert [row["properties"] for _, row in result.events] == [{"name": "Home"},
                                                               {"name": "Cart"}]


def test_the_browser_librarys_paths_and_write_key_in_the_body(api: Served, db: sa.Engine
                                                              ) -> None:
    """analytics.js posts each call to a one-letter path (/v1/t, /v1/i, ..., /v1/b for a
    batch) as text/plain with the write key in the body, from another origin."""
    def post(path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{api.url}/v1/{path}", content=json.dumps(body),
                          headers={"Content-Type": "text/plain",
                                   "Origin": "https://shop.example"})

    identify = {"writeKey": TOKEN, "type": "identify", "userId": "b1", "messageId": "i1",
                "traits": {"email": "b1@example.com"}}
    track = {"writeKey": TOKEN, "type": "track", "userId": "b1", "messageId": "t1",
             "event": "Order Completed", "properties": {"total": 12},
             "timestamp": "2024-04-30T12:00:00Z"}
    assert post("i", identify).status_code == 200
    reply = post("t", track)
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "*"
    assert post("b", {"writeKey": TOKEN, "batch": [
        {**track, "messageId": "t2", "writeKey": None}]}).status_code == 200
    assert post("t", {**track, "writeKey": "wrong", "messageId": "t3"}).status_code == 401
    assert post("t", {**track, "writeKey": None, "messageId": "t4"}).status_code == 401
    preflight = httpx.options(f"{api.url}/v1/t", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200
    assert stored(db, "SELECT event_id, customer_id, type FROM events ORDER BY event_id") == [
        ("t1", "b1", "purchase"), ("t2", "b1", "purchase")]
    assert stored(db, "SELECT customer_id, email FROM customers") == [("b1", "b1@example.com")]
