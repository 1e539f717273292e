"""The `points` action: award (or, negative, deduct) loyalty points.

It sends nothing itself: `send` returns the ledger line as a `Write`; the dispatcher inserts it
once per idempotency key and, only then, updates the balance and records `points_awarded`, all
in the outcome's transaction (engine/outbox/writes.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, StrictInt, field_validator

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


class PointsParams(ConnectorParams):
    """A whole, non-zero number of points and why, for the customer's ledger."""

    amount: StrictInt = Field(description="Whole points; negative deducts.",
                              json_schema_extra={"not": {"const": 0}})
    reason: str | None = Field(None, min_length=1, description="Shown in the ledger.")

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("amount must not be 0")
        return value


class PointsConnector(Connector):
    """Award loyalty points.

    ```yaml
    - points: { amount: 200, reason: winback bonus }
    ```
    """

    kind = "points"
    local = True
    Params = PointsParams

    def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
        """Nothing beyond the model: points have no templates."""
        expect(params, PointsParams)
        return []

    def plan(self, params: BaseModel, render: Render, render_file: RenderFile,
             due_at: datetime) -> dict[str, Any]:
        """The amount and reason, as the ledger will get them."""
        points = expect(params, PointsParams)
        return {"amount": points.amount, "reason": points.reason}

    def payload_template(self, params: BaseModel, due_at: datetime) -> dict[str, Any] | None:
        """The amount and reason: the same for every customer."""
        points = expect(params, PointsParams)
        return {"amount": points.amount, "reason": points.reason}

    async def send(self, delivery: Delivery) -> Sent:
        """The ledger line for the dispatcher to write, exactly once by the action's key."""
        amount = delivery.payload.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
            raise PermanentError(f"action {delivery.action_id}: points payload has no whole, "
                                 f"non-zero amount: {amount!r}")
        values = {"amount": amount, "reason": delivery.payload.get("reason")}
        return Sent(detail=f"{amount:+d} points", writes=(Write("points", values),))
