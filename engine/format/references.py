"""What a playbook names in the synced data, and which of those names the data never had.

A typo in an event type (`event: {type: suport_ticket}`) or an event property (`where:
[{priorty: ...}]`) is valid YAML and valid SQL that selects nobody, silently. These are warnings,
not errors (the data may simply not have arrived yet): each names what was synced nearby with a
did-you-mean. Reading what was synced is engine/query/vocabulary.py's; this module is pure.

Named event types: an `event` trigger's `type`, `inactive`'s `activity`, an `events:` test's
`type`, `goal` and `exit_when`. Named properties: an `event` trigger's `where` fields and an
`events:` `sum` field (`amount` and `score` are typed columns, always there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import Problem, did_you_mean
from engine.format.conditions import EventsTest, FieldTest, leaves
from engine.format.fields import EVENT_PROPERTIES
from engine.format.playbook import Playbook
from engine.format.triggers import EventTrigger, InactiveTrigger
from engine.format.yamlsource import PathKey

LISTED = 8  # synced names listed when none is close


@dataclass(frozen=True)
class Reference:
    """One name a playbook uses: an event type, or a property of events of `event_type`."""

    path: PathKey
    name: str
    event_type: str | None = None  # for a property: the type it is read on (None: any type)
    is_property: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """What was synced: the event types, and the property keys seen on each type."""

    event_types: frozenset[str]
    keys: Mapping[str, frozenset[str]]  # event type -> property keys seen on it

    def keys_of(self, event_type: str | None) -> frozenset[str]:
        """The keys seen on one type, or on any type."""
        if event_type is not None:
            return self.keys.get(event_type, frozenset())
        return frozenset().union(*self.keys.values())


def references(playbook: Playbook) -> list[Reference]:
    """Every event type and property the playbook names, with its path."""
    found: list[Reference] = []
    trigger = playbook.trigger
    path = trigger.path
    if isinstance(trigger, EventTrigger):
        event_type = trigger.event_type_name()
        found.append(Reference((*path, "type"), event_type))
        found += [Reference((*leaf.path[:-1],), leaf.field, event_type, True)
                  for leaf in leaves(trigger.where) if isinstance(leaf, FieldTest)]
    if isinstance(trigger, InactiveTrigger):
        for index, name in enumerate(trigger.params.activity or []):  # type: ignore[attr-defined]
            found.append(Reference((*path, "activity", index), name))
    for leaf in leaves(playbook.when):
        if isinstance(leaf, EventsTest):
            if leaf.type is not None:
                found.append(Reference((*leaf.path, "type"), leaf.type))
            if leaf.sum_field:
                found.append(Reference((*leaf.path, "sum", "field"), leaf.sum_field, leaf.type,
                                       True))
    document = playbook.document
    for key, part in (("goal", document.goal), ("exit_when", document.exit_when)):
        if part is not None:
            found.append(Reference((key, "event"), part.event))
    return [ref for ref in found if not (ref.is_property and ref.name in EVENT_PROPERTIES)]


def unseen(refs: list[Reference], vocabulary: Vocabulary) -> list[Problem]:
    """A warning for each name the synced data never had, with a did-you-mean.

    Nothing when nothing was synced yet: every name would be unseen, and none is a typo.
    """
    if not vocabulary.event_types:
        return []
    problems: list[Problem] = []
    for ref in refs:
        if not ref.is_property and ref.name not in vocabulary.event_types:
            problems.append(Problem(ref.path, f"event type {ref.name!r} never seen in the synced "
                                    f"events{_hint(ref.name, vocabulary.event_types)}"))
        elif ref.is_property and (ref.event_type is None
                                  or ref.event_type in vocabulary.event_types):
            keys = vocabulary.keys_of(ref.event_type)
            if ref.name not in keys:
                on = f"{ref.event_type!r} events" if ref.event_type else "any synced event"
                hint = _hint(ref.name, keys | frozenset(EVENT_PROPERTIES))
                problems.append(Problem(ref.path, f"property {ref.name!r} never seen on {on}"
                                        f"{hint}", at="key" if ref.path[-1] == ref.name
                                        else "value"))
    return problems


def _hint(name: str, known: frozenset[str]) -> str:
    close = did_you_mean(name, sorted(known))
    if close or not known:
        return close
    shown = sorted(known)[:LISTED]
    more = ", ..." if len(known) > LISTED else ""
    return f" (synced: {', '.join(shown)}{more})"
