"""The JSON Schema of a playbook test file (`*.test.yaml`), generated, never kept by hand.

`retain schema --tests` prints it and `retain init` writes it beside the tests as
`test.schema.json`, so an editor completes and checks a test file that starts with
`# yaml-language-server: $schema=test.schema.json`. It is model.py's models, made more
precise where they take free-form values the loader (load.py) checks afterwards: the steps,
the action kinds an expectation lists (one per installed connector, from the registry), times
relative to the test's clock, caps and quiet hours. The loader (and sync, for a row) stays
the judge: the schema refuses nothing they accept, and most of what they refuse (an unknown
key, above all).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine.format.durations import DURATION_PATTERN
from engine.format.registry import connector_names
from engine.playtest.model import ACTION_LISTS, RELATIVE_PATTERN, Expect, TestFile

TEST_SCHEMA_ID = "https://retain.dev/schema/test.schema.json"
TEST_SCHEMA_FILE = "test.schema.json"

ISO_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+(Z|[+-][0-9:]+)?)?$"
CAP_PATTERN = r"^\s*[0-9]*[1-9][0-9]*\s*/\s*[0-9]+[mhdw]\s*$"
QUIET_PATTERN = r"^\s*([01][0-9]|2[0-3]):[0-5][0-9]\s*-\s*([01][0-9]|2[0-3]):[0-5][0-9]\s*$"

TIME = {"type": "string", "anyOf": [{"pattern": RELATIVE_PATTERN}, {"pattern": ISO_PATTERN}],
        "description": "relative to the test's clock (-45d, +2h, now) or ISO 8601 "
                       "(2026-01-05T10:00:00Z; naive is UTC)"}


def _customer_row() -> dict[str, Any]:
    return {"type": "object", "required": ["customer_id"],
            "description": "a customer as `retain sync customers` reads one (docs/DATA.md); "
                           "other keys become attributes",
            "properties": {"customer_id": {"type": "string", "minLength": 1},
                           "created_at": {"$ref": "#/$defs/time"}}}


def _event_row() -> dict[str, Any]:
    return {"type": "object", "required": ["customer_id", "type"],
            "description": "an event as `retain sync events` reads one (docs/DATA.md); `at` "
                           "is its time (default: the clock now), other keys are properties",
            "properties": {"customer_id": {"type": "string", "minLength": 1},
                           "type": {"type": "string", "minLength": 1},
                           "at": {"$ref": "#/$defs/time"}}}


def _action_item(kinds: Iterable[str]) -> dict[str, Any]:
    """`{KIND: {customer: ID, field: value}}`, KIND an installed connector."""
    fields = {"type": "object", "required": ["customer"], "properties": {
        "customer": {"type": "string", "description": "the customer's id"},
        "text": {"type": "string", "description": "a part of an email's plain text"},
        "reason": {"type": "string", "description": "a part of why it was not sent"},
        "at": {"$ref": "#/$defs/time", "description": "when it is due"}},
        "description": "the frozen payload's fields (subject, to, title, amount, ...) to match"}
    return {"type": "object", "minProperties": 1, "maxProperties": 1,
            "additionalProperties": False,
            "properties": {kind: fields for kind in kinds},
            "description": "one action: KIND: {customer: ID, field: value, ...}"}


def _step() -> dict[str, Any]:
    """`run`, or a mapping of one step kind to its value."""
    one = {"type": "object", "minProperties": 1, "maxProperties": 1,
           "additionalProperties": False, "properties": {
               "run": {"type": "null"},
               "advance": {"type": "string", "pattern": DURATION_PATTERN,
                           "description": "move the clock on, like 3d"},
               "events": {"type": "array", "items": {"$ref": "#/$defs/event_row"},
                          "description": "events to sync at the clock now"},
               "customers": {"type": "array", "items": {"$ref": "#/$defs/customer_row"},
                             "description": "customers to add or change"},
               "unsubscribe": {"type": "string", "pattern": "@",
                               "description": "an address unsubscribes (retain unsubscribe)"},
               "expect": {"$ref": "#/$defs/Expect"}}}
    return {"type": ["string", "object"], "if": {"type": "string"}, "then": {"const": "run"},
            "else": one,
            "description": "run | {advance: 3d} | {events: [...]} | {customers: [...]} | "
                           "{unsubscribe: ADDRESS} | {expect: {...}}"}


def playtest_schema(kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """The test file format as one JSON Schema (draft 2020-12); `kinds`: the action kinds an
    expectation may name (default: the installed connectors)."""
    kinds = connector_names() if kinds is None else sorted(kinds)
    root = TestFile.model_json_schema()
    defs: dict[str, Any] = root.pop("$defs")
    expect = defs["Expect"] = Expect.model_json_schema()
    defs.update(expect.pop("$defs", {}))
    defs["time"] = TIME
    defs["customer_row"] = _customer_row()
    defs["event_row"] = _event_row()
    defs["action"] = _action_item(kinds)
    for key in ACTION_LISTS:
        expect["properties"][key] = {
            "type": ["array", "null"], "items": {"$ref": "#/$defs/action"},
            "description": f"exactly the actions the last run made {key}"
                           + (" (planned, deferred or retrying)" if key == "due" else "")
                           + ", each matched on the fields it names"}
    settings = defs["TestSettings"]["properties"]
    settings["caps"]["additionalProperties"] = {"type": "string", "pattern": CAP_PATTERN}
    settings["quiet_hours"]["additionalProperties"] = {"type": "string",
                                                      "pattern": QUIET_PATTERN}
    for holder in (root, defs["TestCase"]):
        props = holder["properties"]
        props["customers"]["items"] = {"$ref": "#/$defs/customer_row"}
        props["events"]["items"] = {"$ref": "#/$defs/event_row"}
    defs["TestCase"]["properties"]["steps"]["items"] = {"$ref": "#/$defs/step"}
    defs["step"] = _step()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": TEST_SCHEMA_ID,
            "title": "Retain playbook test", **root, "$defs": defs}


def playtest_schema_text(kinds: Iterable[str] | None = None) -> str:
    """The schema as the exact text `retain schema --tests` prints and `retain init` writes."""
    return json.dumps(playtest_schema(kinds), indent=2, sort_keys=True) + "\n"
