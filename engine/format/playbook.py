"""The playbook format: pydantic models for the document, and `parse_playbook` over them.

Validation runs in layers (CONVENTIONS 4): strict YAML (yamlsource) -> the document's shape
(these models) -> the one-key unions (trigger, each condition, each action) dispatched by hand
through their registries so errors are targeted (CONVENTIONS 6) -> semantic checks. Every layer
adds `Problem`s with a path; nothing stops at the first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from engine.errors import Problem, did_you_mean
from engine.format.compile import refused_conditions
from engine.format.conditions import AllOf, ConditionParser
from engine.format.durations import Duration, Percent, parse_duration
from engine.format.triggers import TRIGGERS, Trigger
from engine.format.yamlsource import PathKey, SourceMap

ID_PATTERN = r"^[a-z0-9-]+$"


class Strict(BaseModel):
    """Unknown keys are errors everywhere in a playbook."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Every(Strict):
    """`reentry: {every: 90d}`: at most once per window, whatever the occurrence."""

    every: Duration


class Goal(Strict):
    """`goal: {event: purchase, within: 14d}`: conversion measured against the holdout."""

    event: Annotated[str, Field(min_length=1)]
    within: Duration


class ExitWhen(Strict):
    """`exit_when: {event: purchase}`: a goal event stops the remaining steps."""

    event: Annotated[str, Field(min_length=1)]


class Limits(Strict):
    """Safety brake checked before anything is done: a run over it acts on no one."""

    max_enrollments: Annotated[StrictInt, Field(ge=1)] | None = None
    max_percent: Percent | None = None


class PlaybookDocument(Strict):
    """The shape of a playbook file; `trigger`, `when` and `actions` are parsed by registries."""

    id: Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=100)]
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    enabled: StrictBool = True
    priority: StrictInt = 50
    trigger: dict[str, Any]
    when: list[Any] | None = None
    reentry: Literal["once", "always"] | Every = "once"
    holdout: Percent | None = None
    goal: Goal | None = None
    exit_when: ExitWhen | None = None
    limits: Limits | None = None
    backfill: StrictBool = True
    on_change: Literal["keep", "exit"] = "keep"
    # how often `retain daemon` evaluates it (state triggers, the event sweep); None: the
    # `[daemon] interval` setting. A schedule trigger runs at its ticks instead.
    interval: Duration | None = None
    actions: Annotated[list[Any], Field(min_length=1)]


@dataclass(frozen=True)
class Wait:
    """`wait: 3d`: the enrollment sleeps before the next step."""

    path: PathKey
    duration: timedelta


@dataclass(frozen=True)
class ActionStep:
    """A connector action (`email`, `task`, `points`, `webhook`, or a plugin's) with its params."""

    path: PathKey
    kind: str
    params: BaseModel


Step = Wait | ActionStep


@dataclass(frozen=True)
class Playbook:
    """A parsed, validated playbook: the document, its trigger, conditions and steps, its version.

    `source` is the YAML text and `templates` the text of every template file its actions use
    (None: not read, as when `parse_playbook` is called alone), so a run records exactly the
    sources it hashed into `version` (engine/outbox/versions.py).
    """

    document: PlaybookDocument
    trigger: Trigger
    when: AllOf
    steps: tuple[Step, ...]
    version: str
    file: str
    source_map: SourceMap | None = field(default=None, compare=False, repr=False)  # set by the
    # loader, so whatever is found later (a warning at dry-run) still names file:line:column
    source: str = field(default="", compare=False, repr=False)
    templates: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        """The stable key of the playbook."""
        return self.document.id


VERSION_SCHEME = "retain-playbook-1"
"""Named in every hash, so a later change of what a version covers can never collide."""


def content_version(data: Any, templates: Mapping[str, str] | None = None) -> str:
    """A playbook's version: the hash of its parsed document and the template files it uses.

    The document is hashed as canonical JSON (sorted keys, no whitespace), not as text, so a
    comment, blank lines, quoting or key order are not a new version and do not re-key the
    actions of enrollments in flight; any change of a value or of a template's text is one.
    """
    canonical = json.dumps([VERSION_SCHEME, _canonical(data), sorted((templates or {}).items())],
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """YAML data as JSON can hold it: keys as text (YAML allows `1:`), other values by repr."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def pydantic_problems(exc: ValidationError, model: type[BaseModel],
                      prefix: PathKey = ()) -> list[Problem]:
    """Pydantic errors in plain words, addressed by path (unknown keys get a did-you-mean).

    Pydantic names union members in paths (`reentry.Every`); such paths are folded onto the
    field and only the first message per field is kept, so one mistake reads as one problem.
    """
    problems: dict[tuple[PathKey, int], Problem] = {}
    for index, error in enumerate(exc.errors()):
        loc = tuple(error["loc"])
        field_loc = tuple(p for p in loc if not (isinstance(p, str) and _is_union_member(p)))
        key = ((*prefix, *field_loc), -1 if field_loc != loc else index)
        problems.setdefault(key, _problem(error, model, prefix, field_loc))
    return list(problems.values())


def _is_union_member(part: str) -> bool:
    return part[:1].isupper() or part.startswith(("literal[", "function-"))


def _problem(error: Any, model: type[BaseModel], prefix: PathKey, loc: PathKey) -> Problem:
    path = (*prefix, *loc)
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        hint = did_you_mean(str(loc[-1]), known) or f" (expected one of: {', '.join(known)})"
        return Problem(path, f"unknown key {loc[-1]!r}{hint}", at="key")
    if error["type"] == "missing":
        return Problem(path[:-1], f"missing required key {loc[-1]!r}")
    message = error["msg"].removeprefix("Value error, ")
    shown = repr(error.get("input"))
    if "input" in error and shown not in message:
        message = f"{message}, got {shown}"
    return Problem(path, message)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        if isinstance(part, int):  # an item of a list: the list's model goes on
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def one_key(raw: Any, path: PathKey, what: str) -> tuple[str, Any] | Problem:
    """A `{kind: params}` mapping's single key and value, or the problem with it."""
    if not isinstance(raw, dict) or len(raw) != 1:
        keys = list(raw) if isinstance(raw, dict) else []
        detail = f"; got {len(keys)} keys: {', '.join(map(str, keys))}" if keys else ""
        return Problem(path, f"{what} must be a mapping with exactly one kind{detail}")
    return next(iter(raw.items()))


def parse_trigger(raw: dict[str, Any], path: PathKey) -> tuple[Trigger | None, list[Problem]]:
    """Dispatch `trigger:` on its single key and validate only that kind's params."""
    picked = one_key(raw, path, "trigger")
    if isinstance(picked, Problem):
        return None, [Problem(path, f"{picked.message} (expected one of: {', '.join(TRIGGERS)})")]
    kind, params = picked
    cls = TRIGGERS.get(kind)
    if cls is None:
        return None, [Problem((*path, kind), TRIGGERS.unknown(kind), at="key")]
    try:
        trigger = cls(cls.Params.model_validate(params if params is not None else {}),
                      (*path, kind))
    except ValidationError as exc:
        return None, pydantic_problems(exc, cls.Params, (*path, kind))
    return trigger, trigger.check((*path, kind))


def parse_step(raw: Any, path: PathKey, connectors: dict[str, Any]) -> tuple[Step | None,
                                                                            list[Problem]]:
    """Dispatch one action on its single key: `wait` or a registered connector."""
    picked = one_key(raw, path, "an action")
    if isinstance(picked, Problem):
        return None, [picked]
    kind, params = picked
    if kind == "wait":
        try:
            return Wait(path, parse_duration(params if isinstance(params, str) else repr(params))), []
        except ValueError as exc:
            return None, [Problem((*path, kind), str(exc))]
    connector = connectors.get(kind)
    if connector is None:
        names = ["wait", *connectors]
        hint = did_you_mean(str(kind), names) or f" (expected one of: {', '.join(names)})"
        return None, [Problem((*path, kind), f"unknown action {kind!r}{hint}", at="key")]
    try:
        model = connector.Params.model_validate(params if params is not None else {})
    except ValidationError as exc:
        return None, pydantic_problems(exc, connector.Params, (*path, kind))
    return ActionStep(path, kind, model), []


def parse_playbook(data: Any, text: str, file: str,
                   connectors: dict[str, Any]) -> tuple[Playbook | None, list[Problem]]:
    """Validate a loaded document in layers, returning the playbook or every problem found."""
    if not isinstance(data, dict):
        return None, [Problem((), "a playbook is a mapping with id, name, trigger and actions")]
    try:
        document = PlaybookDocument.model_validate(data)
    except ValidationError as exc:
        problems = pydantic_problems(exc, PlaybookDocument)
        # Still check the unions, so one run reports every problem in the file.
        problems += _parse_parts(data, connectors)[3]
        return None, problems
    trigger, when, steps, problems = _parse_parts(data, connectors)
    if problems or trigger is None:
        return None, problems
    return Playbook(document, trigger, when, steps, content_version(data), file,
                    source=text), []


def _parse_parts(data: dict[str, Any], connectors: dict[str, Any]) -> tuple[
        Trigger | None, AllOf, tuple[Step, ...], list[Problem]]:
    problems: list[Problem] = []
    trigger = None
    if isinstance(data.get("trigger"), dict):
        trigger, found = parse_trigger(data["trigger"], ("trigger",))
        problems += found
    if trigger is not None:
        problems += trigger.refused()
    parser = ConditionParser()
    when = parser.parse_list(data.get("when"), ("when",))
    problems += parser.problems + refused_conditions(when)
    steps, found = parse_steps(data, connectors)
    return trigger, when, steps, problems + found


def parse_steps(data: dict[str, Any], connectors: dict[str, Any]) -> tuple[tuple[Step, ...],
                                                                          list[Problem]]:
    """The actions that parse, and the problems of those that do not: validation checks the
    templates of the good ones even when another part of the file is wrong."""
    problems: list[Problem] = []
    steps: list[Step] = []
    actions = data.get("actions")
    for index, raw in enumerate(actions if isinstance(actions, list) else []):
        step, found = parse_step(raw, ("actions", index), connectors)
        problems += found
        if step is not None:
            steps.append(step)
    return tuple(steps), problems
