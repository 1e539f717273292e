"""What the OpenAPI document says about request bodies and authentication.

The routes read their bodies from the raw stream (engine/daemon/api.py says why), so FastAPI
cannot infer them; these fragments describe them for clients and for the API fuzzer. They are
deliberately loose (the rows are checked by engine/sync/rows.py, whose answer is a 422 naming
the item and field, not a schema error).
"""

from __future__ import annotations

from typing import Any

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "RETAIN_API_TOKEN, for /v1/events and /v1/customers"},
    "writeKey": {"type": "http", "scheme": "basic",
                 "description": "Segment's write key: RETAIN_API_TOKEN as the user name, "
                                "empty password"},
}

EVENT = {"type": "object", "required": ["event_id", "customer_id", "type", "occurred_at"],
         "properties": {"event_id": {"type": "string"}, "customer_id": {"type": "string"},
                        "type": {"type": "string"},
                        "occurred_at": {"type": "string", "format": "date-time"},
                        "amount": {"type": "number"}, "score": {"type": "number"},
                        "properties": {"type": "object"}}}
CUSTOMER = {"type": "object", "required": ["customer_id"],
            "properties": {"customer_id": {"type": "string"}, "email": {"type": "string"},
                           "name": {"type": "string"}, "birthday": {"type": "string",
                                                                    "format": "date"},
                           "created_at": {"type": "string", "format": "date-time"},
                           "timezone": {"type": "string"}, "country": {"type": "string"},
                           "segment": {"type": "string"},
                           "tags": {"type": "array", "items": {"type": "string"}},
                           "attributes": {"type": "object"}}}
SEGMENT_MESSAGE = {"type": "object", "properties": {
    "type": {"type": "string"}, "messageId": {"type": "string"}, "userId": {"type": "string"},
    "anonymousId": {"type": "string"}, "event": {"type": "string"},
    "timestamp": {"type": "string", "format": "date-time"}, "properties": {"type": "object"},
    "traits": {"type": "object"}, "context": {"type": "object"}}}


def _body(schema: dict[str, Any], security: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "security": [{security: []}]}


def _one_or_many(item: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [item, {"type": "array", "items": item}]}


EVENTS_BODY = _body(_one_or_many(EVENT), "bearer")
CUSTOMERS_BODY = _body(_one_or_many(CUSTOMER), "bearer")
SEGMENT_MESSAGE_BODY = _body(SEGMENT_MESSAGE, "writeKey")
SEGMENT_BATCH_BODY = _body({"type": "object", "required": ["batch"], "properties": {
    "batch": {"type": "array", "items": SEGMENT_MESSAGE}}}, "writeKey")

_COMMON = {400: {"description": "the body is not JSON (or not gzip as announced)"},
           401: {"description": "missing or wrong API token"},
           413: {"description": "the body (after gzip) is above the limit"},
           503: {"description": "the database is unavailable; retry"}}
INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "every item kept"},
    422: {"description": "the items listed (index, field, message) were not kept; the others were"},
    **_COMMON}
SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the valid messages were kept; the body lists the rejected ones"},
    **_COMMON}
