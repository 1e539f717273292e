"""Segment's HTTP tracking API messages -> Retain's customer and event rows (pure, no database).

Pipelines that already speak Segment's protocol (Segment, RudderStack, Jitsu and their SDKs)
send to Retain unchanged, so this module only renames: what a row then means, and whether it is
valid, is decided by engine/sync/rows.py like for any file row. The mapping (issue 13):

- `track`: `messageId` -> event_id, `userId` -> customer_id, `event` -> type through the
  `[segment] events` map (a name not in it is kept as it is), `timestamp` -> occurred_at,
  `properties` -> properties; `amount` is the property `amount`, else the first of
  `[segment] amount` present (Segment's e-commerce spec: `total`, then `revenue`).
- `page` / `screen`: events of type `page` / `screen`, their `name` kept as a property.
- `identify`: traits `email`, `name` (or `firstName` + `lastName`), `birthday`, `createdAt`,
  `address.country` and `context.timezone` -> customer columns; other traits -> attributes.
- `group` and `alias`: accepted and ignored (Retain has no accounts or identity graph).
- a message with an `anonymousId` and no `userId`: skipped and counted; Retain acts on known
  customers only, and Segment sends the `userId` once the person is identified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.sync.rows import blank

PAGE_TYPES = ("page", "screen")
IGNORED_TYPES = ("group", "alias")
TRAIT_COLUMNS = {"email": "email", "birthday": "birthday", "createdAt": "created_at"}
NAME_TRAITS = ("name", "firstName", "lastName")


@dataclass(frozen=True)
class Rejected:
    """One item of a request that was not kept: its index in the request, the field, why."""

    index: int
    field: str | None
    message: str


@dataclass
class Mapped:
    """A request's messages as rows: each with its index in the request, plus what was left out."""

    customers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    anonymous: int = 0  # only an anonymousId: skipped
    ignored: int = 0  # group and alias


def map_messages(messages: Iterable[tuple[int, Any]], events: Mapping[str, str],
                 amount: tuple[str, ...], received: datetime) -> Mapped:
    """Map Segment messages, each with its index in the request (a batch's `batch` list, or
    one message), to rows.

    `received` stands in for a message without `timestamp` (Segment's own fallback is the
    time it received the message).
    """
    mapped = Mapped()
    for index, message in messages:
        _map_one(index, message, mapped, events, amount, received)
    return mapped


def _map_one(index: int, message: Any, mapped: Mapped, events: Mapping[str, str],
             amount: tuple[str, ...], received: datetime) -> None:
    if not isinstance(message, dict):
        mapped.rejected.append(Rejected(index, None, "expected a JSON object"))
        return
    kind = message.get("type")
    if kind in IGNORED_TYPES:
        mapped.ignored += 1
        return
    if kind not in ("track", "identify", *PAGE_TYPES):
        mapped.rejected.append(Rejected(index, "type", f"unknown message type {kind!r}: expected "
                                        "track, identify, page, screen, group or alias"))
        return
    if blank(message.get("userId")):
        if not blank(message.get("anonymousId")):
            mapped.anonymous += 1
        else:
            mapped.rejected.append(Rejected(index, "userId", "missing userId"))
        return
    if kind == "identify":
        mapped.customers.append((index, identify_row(message)))
    else:
        mapped.events.append((index, event_row(message, events, amount, received)))


def event_row(message: dict[str, Any], events: Mapping[str, str], amount: tuple[str, ...],
              received: datetime) -> dict[str, Any]:
    """A track, page or screen message as an event row (not yet checked: rows.py does that)."""
    kind = message.get("type")
    properties = message.get("properties")
    properties = dict(properties) if isinstance(properties, dict) else properties
    if kind == "track":
        name = message.get("event")
        kind = events.get(name, name) if isinstance(name, str) else name
    elif not blank(message.get("name")) and (properties is None or isinstance(properties, dict)):
        properties = properties or {}  # Segment lets `properties` out: the name is kept anyway
        properties.setdefault("name", message["name"])
    if isinstance(properties, dict) and blank(properties.get("amount")):
        found = next((properties[key] for key in amount if not blank(properties.get(key))), None)
        if found is not None:
            properties["amount"] = found
    when = message.get("timestamp") or message.get("originalTimestamp") or received
    return {"event_id": message.get("messageId"), "customer_id": message.get("userId"),
            "type": kind, "occurred_at": when, "properties": properties}


def identify_row(message: dict[str, Any]) -> dict[str, Any]:
    """An identify message as a customer row: known traits to columns, the rest to attributes."""
    traits = message.get("traits")
    traits = traits if isinstance(traits, dict) else {}
    row: dict[str, Any] = {"customer_id": message.get("userId")}
    for trait, column in TRAIT_COLUMNS.items():
        if trait in traits:
            row[column] = traits[trait]
    if isinstance(row.get("birthday"), str) and len(row["birthday"]) > 10:
        row["birthday"] = row["birthday"][:10]  # Segment sends dates as ISO date-times
    name = _name(traits)
    if name is not None:
        row["name"] = name
    attributes = {key: value for key, value in traits.items()
                  if key not in TRAIT_COLUMNS and key not in NAME_TRAITS and key != "address"}
    address = traits.get("address")
    if isinstance(address, dict):
        if "country" in address:
            row["country"] = address["country"]
        rest = {key: value for key, value in address.items() if key != "country"}
        if rest:
            attributes["address"] = rest
    elif address is not None:
        attributes["address"] = address
    context = message.get("context")
    if isinstance(context, dict) and not blank(context.get("timezone")):
        row["timezone"] = context["timezone"]
    if attributes:
        row["attributes"] = attributes
    return row


def _name(traits: dict[str, Any]) -> Any:
    """`name`, else `firstName lastName` (either alone), else None (the name is not touched)."""
    if not blank(traits.get("name")):
        return traits["name"]
    parts = [traits.get(key) for key in ("firstName", "lastName")]
    given = [str(part).strip() for part in parts if not blank(part)]
    return " ".join(given) if given else None
