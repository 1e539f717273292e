"""The customer field catalog: the single truth for "does this field exist" and "does this operator fit".

Conditions, templates and (later) the SQL compiler all ask this module; `attributes.NAME` is any
extra column from the customer file, whose type is only known at run time (`any`).
"""

from __future__ import annotations

from enum import StrEnum

from engine.errors import did_you_mean


class FieldType(StrEnum):
    """What kind of value a field holds; operators declare which kinds they fit."""

    TEXT = "text"
    NUMBER = "number"
    TIME = "time"
    DATE = "date"
    LIST = "list"
    ANY = "any"


CUSTOMER_FIELDS: dict[str, FieldType] = {
    # The customer's own columns.
    "customer_id": FieldType.TEXT,
    "email": FieldType.TEXT,
    "name": FieldType.TEXT,
    "created_at": FieldType.TIME,
    "birthday": FieldType.DATE,
    "timezone": FieldType.TEXT,
    "country": FieldType.TEXT,
    "segment": FieldType.TEXT,
    "tags": FieldType.LIST,
    # Derived facts kept up to date by sync.
    "last_active_at": FieldType.TIME,
    "first_purchase_at": FieldType.TIME,
    "last_purchase_at": FieldType.TIME,
    "purchase_count": FieldType.NUMBER,
    "total_spent": FieldType.NUMBER,
    "last_feedback_score": FieldType.NUMBER,
    "last_feedback_at": FieldType.TIME,
    "points_balance": FieldType.NUMBER,
    "last_emailed_at": FieldType.TIME,
    "rfm_score": FieldType.TEXT,
    "rfm_segment": FieldType.TEXT,
}

ATTRIBUTE_PREFIX = "attributes."

# Event properties with a known type; any other property is `any`.
EVENT_PROPERTIES: dict[str, FieldType] = {"amount": FieldType.NUMBER, "score": FieldType.NUMBER}

# Dates that recur yearly: an age test (`within`, `older_than`) compares the year too, so it
# selects nonsense; the `date` trigger follows their month and day.
YEARLY_DATE_FIELDS = frozenset({"birthday"})

# Customer fields a `date` trigger can fire on (month and day of a date or time).
DATE_TRIGGER_FIELDS = [name for name, kind in CUSTOMER_FIELDS.items()
                       if kind in (FieldType.DATE, FieldType.TIME)]


def customer_field_type(name: str) -> FieldType | None:
    """The type of a customer field or `attributes.NAME`; None for an unknown field."""
    if name.startswith(ATTRIBUTE_PREFIX) and len(name) > len(ATTRIBUTE_PREFIX):
        return FieldType.ANY
    return CUSTOMER_FIELDS.get(name)


def unknown_field_message(name: str) -> str:
    """The message for a field that is not in the catalog, with a suggestion."""
    hint = did_you_mean(name, CUSTOMER_FIELDS)
    if not hint:
        hint = f" (customer fields are {', '.join(CUSTOMER_FIELDS)}, or attributes.NAME)"
    return f"unknown field {name!r}{hint}"
