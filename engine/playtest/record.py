"""The connectors a test dispatches with: the real ones, but nothing leaves the machine.

In-database connectors (task, points, tag: `Connector.local`) run as they are: their writes are
what a test checks. The webhook connector runs as it is too (it expands, signs and judges the
answer) over an httpx transport that records each request and answers 200. Any other connector
(email, a third party's) is the same class with `open`, `send` and `close` replaced: `send`
records the delivery, whose payload was frozen at commit, and reports it sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.base import Delivery, Sent


@dataclass
class Recorder:
    """What would have gone over the network, in the order it was sent."""

    deliveries: list[tuple[str, Delivery]] = field(default_factory=list)  # (kind, delivery)
    requests: list[Any] = field(default_factory=list)  # httpx.Request, webhooks


def test_connectors(settings: Any, recorder: Recorder) -> dict[str, Any]:
    """Every installed connector, configured with `settings`, recording instead of sending."""
    from engine.format.registry import make_connectors

    made = make_connectors(settings)
    for kind, connector in list(made.items()):
        if getattr(connector, "local", False):
            continue
        if hasattr(connector, "transport"):  # the webhook connector: a recording transport
            made[kind] = _recording_transport(type(connector), recorder)()
            continue
        made[kind] = _recording(type(connector), recorder)()
        if hasattr(made[kind], "configure"):
            made[kind].configure(settings)
    return made


def _recording_transport(cls: type, recorder: Recorder) -> type:
    """`cls` (the webhook connector) opening over the recording transport: made when its
    first request is dispatched, so a run without webhooks never imports httpx (~85 ms)."""

    async def open_(self: Any, settings: Any) -> None:
        self.transport = _transport(recorder)
        await cls.open(self, settings)

    return type(f"Recording{cls.__name__}", (cls,), {"open": open_})


def _transport(recorder: Recorder) -> Any:
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        recorder.requests.append(request)
        return httpx.Response(200, text="recorded by retain test")

    return httpx.MockTransport(answer)


def _recording(cls: type, recorder: Recorder) -> type:
    """`cls` with a send that records (and an open and close that touch no network)."""

    async def open_(self: Any, settings: Any) -> None:
        if hasattr(self, "configure"):
            self.configure(settings)

    async def send(self: Any, delivery: Delivery) -> Sent:
        recorder.deliveries.append((self.kind, delivery))
        return Sent(detail="recorded by retain test")

    async def close(self: Any) -> None:
        return None

    return type(f"Recording{cls.__name__}", (cls,), {"open": open_, "send": send,
                                                      "close": close})
