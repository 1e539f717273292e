"""The daemon's HTTP API over real HTTP, against a real uvicorn server, on both databases."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from api_support import SECRET_KEY, TOKEN, Served, serve
from prometheus_client.parser import text_string_to_metric_families

from engine.consent import unsubscribe_token
from engine.store.tables import actions, customers, events, suppressions

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = "2024-05-01T10:00:00Z"


@pytest.fixture
def api(db: sa.Engine) -> Iterator[Served]:
    with serve(db) as served:
        yield served


def event(event_id: str, customer_id: str = "c1", **extra: object) -> dict[str, object]:
    return {"event_id": event_id, "customer_id": customer_id, "type": "purchase",
            "occurred_at": NOW, "amount": 10, **extra}


def rows(db: sa.Engine, table: sa.Table, *columns: str) -> list[tuple[object, ...]]:
    with db.connect() as connection:
        return [tuple(row) for row in connection.execute(
            sa.select(*(table.c[name] for name in columns)).order_by(table.c[columns[0]]))]


def test_events_kept_and_bad_items_named(api: Served, db: sa.Engine) -> None:
    body = [event("e1"), {"event_id": "e2", "customer_id": "c1", "type": "purchase",
                          "occurred_at": "yesterday"}, "text", event("e3", amount=-5)]
    response = httpx.post(f"{api.url}/v1/events", json=body, headers=AUTH)
    assert response.status_code == 422
    answer = response.json()
    assert answer["accepted"] == 1
    assert "1 item(s) kept" in answer["detail"]
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
        (1, "occurred_at"), (2, None), (3, "amount")]
    assert rows(db, events, "event_id", "customer_id") == [("e1", "c1")]
    # the customer the event named was created, its facts refreshed, the loop told
    assert rows(db, customers, "customer_id", "purchase_count", "total_spent") == [("c1", 1, 10.0)]
    assert api.ingested == [{"c1"}]


def test_one_object_all_good_is_200(api: Served, db: sa.Engine) -> None:
    response = httpx.post(f"{api.url}/v1/events", json=event("e1"), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}


def test_duplicates_kept_once_conflicts_rejected(api: Served, db: sa.Engine) -> None:
    assert httpx.post(f"{api.url}/v1/events", json=event("e1"), headers=AUTH).status_code == 200
    again = httpx.post(f"{api.url}/v1/events", json=[event("e1"), event("e1", amount=11)],
                       headers=AUTH)
    assert again.status_code == 422
    answer = again.json()
    assert answer["accepted"] == 1 and answer["duplicates"] == 1
    [conflict] = answer["rejected"]
    assert conflict["index"] == 1 and conflict["field"] == "event_id"
    assert conflict["message"].startswith("conflict: event_id 'e1' has other contents")
    assert rows(db, events, "event_id", "amount") == [("e1", 10.0)]


def test_a_rejected_event_creates_no_customer(api: Served, db: sa.Engine) -> None:
    """An event for an unknown customer creates the customer only when the event is kept: one
    rejected as a conflict (its id already stored with another customer) left a customer
    behind that nothing names, and told the loop to evaluate it."""
    assert httpx.post(f"{api.url}/v1/events", json=event("e1", "c1"),
                      headers=AUTH).status_code == 200
    again = httpx.post(f"{api.url}/v1/events", json=[event("e1", "c2"), event("e2", "c3")],
                       headers=AUTH)
    assert again.status_code == 422
    assert [r["index"] for r in again.json()["rejected"]] == [0]
    assert rows(db, customers, "customer_id") == [("c1",), ("c3",)]
    assert api.ingested == [{"c1"}, {"c3"}]


def test_customers_one_or_many(api: Served, db: sa.Engine) -> None:
    one = httpx.post(f"{api.url}/v1/customers", headers=AUTH,
                     json={"customer_id": "c1", "email": "Ann@Example.com", "plan": "gold"})
    assert one.status_code == 200, one.text
    many = httpx.post(f"{api.url}/v1/customers", headers=AUTH, json=[
        {"customer_id": "c2", "timezone": "Mars/Olympus"}, {"customer_id": "c3", "name": "Bo"}])
    assert many.status_code == 422
    assert [(r["index"], r["field"]) for r in many.json()["rejected"]] == [(0, "timezone")]
    assert rows(db, customers, "customer_id", "email", "name") == [
        ("c1", "Ann@Example.com", None), ("c3", None, "Bo")]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_missing_or_wrong_token_is_401(api: Served, db: sa.Engine,
                                       headers: dict[str, str]) -> None:
    response = httpx.post(f"{api.url}/v1/events", json=event("e1"), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert rows(db, events, "event_id") == []


def test_not_json_is_400_and_shapes_422(api: Served) -> None:
    bad = httpx.post(f"{api.url}/v1/events", content=b"{not json", headers=AUTH)
    assert bad.status_code == 400
    scalar = httpx.post(f"{api.url}/v1/events", json=5, headers=AUTH)
    assert scalar.status_code == 422


def test_oversized_body_is_413(api: Served, db: sa.Engine) -> None:
    from engine.daemon.api import MAX_BODY

    body = json.dumps([event(f"e{i}", note="x" * 500) for i in range(MAX_BODY // 500)])
    response = httpx.post(f"{api.url}/v1/events", content=body, headers=AUTH)
    assert response.status_code == 413
    assert rows(db, events, "event_id") == []


def test_gzip_body_and_gzip_bomb(api: Served, db: sa.Engine) -> None:
    headers = {**AUTH, "Content-Encoding": "gzip"}
    packed = gzip.compress(json.dumps([event("e1"), event("e2")]).encode())
    response = httpx.post(f"{api.url}/v1/events", content=packed, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    bomb = gzip.compress(b"[" + b" " * 200_000_000 + b"]", compresslevel=9)
    assert len(bomb) < 300_000
    assert httpx.post(f"{api.url}/v1/events", content=bomb, headers=headers).status_code == 413
    broken = httpx.post(f"{api.url}/v1/events", content=b"not gzip", headers=headers)
    assert broken.status_code == 400


def test_unsubscribe_page_then_post(api: Served, db: sa.Engine) -> None:
    with db.begin() as connection:
        connection.execute(sa.insert(customers).values(customer_id="c1", email="ann@example.com"))
    token = unsubscribe_token("ann@example.com", SECRET_KEY.encode())
    page = httpx.get(f"{api.url}/unsubscribe", params={"token": token})
    assert page.status_code == 200
    assert '<form method="post"' in page.text and "<button" in page.text
    assert rows(db, suppressions, "email") == []  # a GET never unsubscribes
    done = httpx.post(f"{api.url}/unsubscribe", params={"token": token},
                      data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert rows(db, suppressions, "email", "reason") == [("ann@example.com", "unsubscribed")]


@pytest.mark.parametrize("token", ["", "garbage", "YW5uQGV4YW1wbGUuY29t.AAAA"])
def test_bad_unsubscribe_token_is_400_and_changes_nothing(api: Served, db: sa.Engine,
                                                          token: str) -> None:
    assert httpx.get(f"{api.url}/unsubscribe", params={"token": token}).status_code == 400
    assert httpx.post(f"{api.url}/unsubscribe", params={"token": token}).status_code == 400
    assert rows(db, suppressions, "email") == []


def test_livez_readyz(db: sa.Engine) -> None:
    with serve(db) as api:
        assert httpx.get(f"{api.url}/livez").json() == {"status": "ok"}
        assert httpx.get(f"{api.url}/readyz").status_code == 200
    with serve(db, ready=False) as api:
        answer = httpx.get(f"{api.url}/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "not ready", "database": True, "playbooks": False}


def test_readyz_without_database(tmp_path: object) -> None:
    broken = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with serve(broken) as api:
        answer = httpx.get(f"{api.url}/readyz")
    assert answer.status_code == 503 and answer.json()["database"] is False


def test_metrics_text_parses(api: Served, db: sa.Engine) -> None:
    httpx.post(f"{api.url}/v1/events", json=[event("e1"), event("e2")], headers=AUTH)
    with db.begin() as connection:
        connection.execute(sa.insert(actions).values(
            playbook_id="p", customer_id="c1", connector="email", idempotency_key="k1",
            status="planned", next_attempt_at=sa.func.current_timestamp(),
            created_at=sa.func.current_timestamp()))
    text = httpx.get(f"{api.url}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert all(name.startswith("retain_") for name in families)
    [ingested] = [s for s in families["retain_events_ingested"].samples
                  if s.name.endswith("_total")]
    assert ingested.value == 2
    [depth] = families["retain_outbox_depth"].samples
    assert depth.labels == {"connector": "email"} and depth.value == 1
    assert "retain_outbox_oldest_due_age_seconds" in families
    assert "retain_last_successful_cycle_timestamp_seconds" in families


def test_openapi_lists_the_routes(api: Served) -> None:
    paths = httpx.get(f"{api.url}/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/events", "/v1/customers", "/v1/track", "/v1/identify",
                          "/v1/page", "/v1/screen", "/v1/group", "/v1/alias",
                          "/v1/batch", "/unsubscribe", "/livez", "/readyz", "/metrics"}


def test_facts_refreshed_rfm_left_to_the_schedule(api: Served, db: sa.Engine) -> None:
    body = [event("e1"), event("e2", "c2", amount=99)]
    assert httpx.post(f"{api.url}/v1/events", json=body, headers=AUTH).status_code == 200
    assert rows(db, customers, "customer_id", "total_spent", "rfm_score") == [
        ("c1", 10.0, None), ("c2", 99.0, None)]
