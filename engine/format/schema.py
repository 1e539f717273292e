"""The playbook JSON Schema, generated from the models and the registries, never kept by hand.

`retain schema` prints it; editors use it through the `# yaml-language-server: $schema=...`
modeline to complete and check playbooks. Every trigger, operator and connector contributes its
own params schema, so a new kind appears here by being registered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from engine.format.conditions import OPERATORS, condition_schema
from engine.format.durations import DURATION_PATTERN
from engine.format.playbook import PlaybookDocument
from engine.format.registry import load_connectors
from engine.format.triggers import TRIGGERS

SCHEMA_ID = "https://retain.dev/schema/playbook.schema.json"
SCHEMA_FILE = "playbook.schema.json"


def _hoist(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Move a sub-schema's `$defs` to the root so its `#/$defs/...` references still resolve."""
    for name, definition in schema.pop("$defs", {}).items():
        if defs.setdefault(name, definition) != definition:
            raise ValueError(f"two different schema definitions are both named {name!r}")
    return schema


def _model(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    return _hoist(model.model_json_schema(), defs)


def _one_of_kinds(kinds: Mapping[str, dict[str, Any]], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": dict(kinds),
            "additionalProperties": False, "minProperties": 1, "maxProperties": 1}


def _event_condition_schema() -> dict[str, Any]:
    ops = {name: cls.value_schema for name, cls in OPERATORS.items()}
    op_map = {"type": "object", "properties": ops, "additionalProperties": False,
              "minProperties": 1}
    ref = {"$ref": "#/$defs/event_condition"}
    return {"type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": {"any": {"type": "array", "items": ref}, "all": {"type": "array",
                           "items": ref}, "not": ref},
            "additionalProperties": op_map}


def playbook_schema(connectors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole format as one JSON Schema (draft 2020-12)."""
    connectors = load_connectors() if connectors is None else connectors
    defs: dict[str, Any] = {"condition": condition_schema(),
                            "event_condition": _event_condition_schema()}
    root = _model(PlaybookDocument, defs)
    triggers = {}
    for name, cls in TRIGGERS.items():
        params = _model(cls.Params, defs)
        if name == "event":
            params["properties"]["where"] = {"type": "array",
                                             "items": {"$ref": "#/$defs/event_condition"}}
        triggers[name] = {**params, "description": (cls.__doc__ or "").strip()}
    actions = {"wait": {"type": "string", "pattern": DURATION_PATTERN,
                        "description": "Sleep before the next step, like 3d."}}
    for name, connector in connectors.items():
        actions[name] = {**_model(connector.Params, defs),
                         "description": (connector.__doc__ or "").strip()}
    root["properties"]["trigger"] = _one_of_kinds(triggers, "Exactly one trigger kind.")
    root["properties"]["when"] = {"type": "array", "items": {"$ref": "#/$defs/condition"},
                                  "description": "Every item must hold."}
    root["properties"]["actions"] = {"type": "array", "minItems": 1,
                                     "items": _one_of_kinds(actions, "One step.")}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "Retain playbook", **root, "$defs": defs}


def schema_text(connectors: Mapping[str, Any] | None = None) -> str:
    """The schema as the exact text `retain schema` prints and `retain init` writes."""
    return json.dumps(playbook_schema(connectors), indent=2, sort_keys=True) + "\n"
