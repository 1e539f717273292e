"""The `tag` action: add tags to a customer or take them away, from a playbook.

The seeds' "move the customer into the low-activity pool, then start the wake-up plan": one
playbook tags, another selects on the tag (`when: [{tags: {contains: low-activity}}]`).

Tags a playbook sets are kept apart from the tags the customer file brings (DESIGN 2.3,
engine/outbox/tags.py): a later `retain sync customers` replaces the file's tags, never the
playbooks', and `customer.tags` in conditions sees both. The connector sends nothing itself:
`send` returns the write, and the dispatcher applies it in the transaction that records the
outcome, so the action takes effect exactly once.

Tags are plain names, never templates: a condition compares them literally, and a tag that
depended on the customer could not be selected on by another playbook.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from connectors.base import (
    Connector,
    ConnectorParams,
    Delivery,
    Render,
    RenderFile,
    Sent,
    Write,
    expect,
)
from engine import PermanentError, Problem, TemplateChecker

TAG_PATTERN = r"^[^\s,{}]([^,{}\x00-\x1f\x7f]{0,98}[^\s,{}])?(?![\s\S])"
r"""A tag as a customer file can carry it: no comma (the CSV separator), no line break or other
control character, no space at either end; no brace, so it cannot be taken for a template. At
most 100 characters. `(?![\s\S])` ends the input in JSON Schema's regular expressions and
Python's alike (`$` also matches before a final line break in Python's)."""
_TAG = re.compile(TAG_PATTERN)
TAG_SCHEMA = {"type": "string", "pattern": TAG_PATTERN, "maxLength": 100}


def tag_problem(tag: str) -> str | None:
    """Why `tag` cannot be a tag, in words; None when it can."""
    if "{" in tag or "}" in tag:
        return f"tag {tag!r} looks like a template; tags are plain names"
    if not tag.strip():
        return "a tag cannot be empty"
    if tag != tag.strip():
        return f"tag {tag!r} starts or ends with a space"
    if "," in tag:
        return f"tag {tag!r} has a comma, which separates tags in a customer file"
    if len(tag) > 100:
        return f"tag {tag[:20]!r}... is longer than 100 characters"
    if not _TAG.fullmatch(tag):
        return f"tag {tag!r} has a line break or another control character"
    return None


def _plain_name(tag: str) -> str:
    problem = tag_problem(tag)
    if problem:
        raise ValueError(problem)
    return tag


def _once_each(tags: list[str]) -> list[str]:
    repeated = sorted({tag for tag in tags if tags.count(tag) > 1})
    if repeated:
        raise ValueError(f"{', '.join(map(repr, repeated))} given twice")
    return tags


Tag = Annotated[str, AfterValidator(_plain_name), WithJsonSchema(TAG_SCHEMA)]
Tags = Annotated[list[Tag], AfterValidator(_once_each)]


class TagParams(ConnectorParams):
    """Tags to add and tags to remove; at least one of them, no tag in both."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["add"], "properties": {"add": {"minItems": 1}}},
        {"required": ["remove"], "properties": {"remove": {"minItems": 1}}}]})

    add: Tags = Field(default_factory=list, json_schema_extra={"uniqueItems": True},
                      description="Tags the customer gets.")
    remove: Tags = Field(default_factory=list, json_schema_extra={"uniqueItems": True},
                         description="Tags the customer loses, file tags included.")

    @model_validator(mode="after")
    def _something_to_do(self) -> TagParams:
        if not self.add and not self.remove:
            raise ValueError("tag needs a tag to add or to remove")
        both = sorted(set(self.add) & set(self.remove))
        if both:
            raise ValueError(f"{', '.join(map(repr, both))} is both added and removed")
        return self


class TagConnector(Connector):
    """Add or remove customer tags, kept apart from the tags of the customer file.

    ```yaml
    - tag: { add: [low-activity], remove: [active] }
    ```
    """

    kind: ClassVar[str] = "tag"
    local: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = TagParams

    def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
        """Nothing beyond the model: tags are plain names, checked when parsed."""
        expect(params, TagParams)
        return []

    def plan(self, params: BaseModel, render: Render, render_file: RenderFile,
             due_at: datetime) -> dict[str, Any]:
        """The tags added and removed, as the dry-run shows them and the outbox keeps them."""
        tag = expect(params, TagParams)
        return {"add": list(tag.add), "remove": list(tag.remove)}

    def payload_template(self, params: BaseModel, due_at: datetime) -> dict[str, Any] | None:
        """The tags added and removed: the same for every customer."""
        tag = expect(params, TagParams)
        return {"add": list(tag.add), "remove": list(tag.remove)}

    async def send(self, delivery: Delivery) -> Sent:
        """The write that applies the tags, for the dispatcher to make with the outcome."""
        add, remove = delivery.payload.get("add", []), delivery.payload.get("remove", [])
        if not isinstance(add, list) or not isinstance(remove, list) or not (add or remove):
            raise PermanentError(f"action {delivery.action_id}: the tag payload has no tags to"
                                 f" add or remove: {dict(delivery.payload)!r}")
        return Sent(detail=summary(add, remove), writes=(Write("tags", {
            "customer_id": delivery.customer_id, "add": list(add), "remove": list(remove)}),))


def summary(add: list[str], remove: list[str]) -> str:
    """`+low-activity -active`: what a tag action does, in one line."""
    return " ".join([*(f"+{tag}" for tag in add), *(f"-{tag}" for tag in remove)])
