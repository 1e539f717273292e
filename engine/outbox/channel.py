"""One connector during one dispatch pass: opened on first use, down after a connection error.

A connector is opened lazily, when the first row for it is claimed, and closed once at the end
of the pass. The dispatcher runs at most `connector.concurrency` sends at once (read after
`open`, which may change it: the email connector sizes it to its connection pool). When the peer itself fails
(`TransientError(connection=True)`, or `open` failing), the channel goes down: nothing more is
sent through it in this pass, the rows waiting for it are put back without using an attempt, and
the claim skips its kind, so an outage costs one attempt of one row, not every message's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


class Channel:
    """A connector instance and its state for one pass."""

    def __init__(self, kind: str, connector: Any) -> None:
        self.kind, self.connector = kind, connector
        self.opened = False
        self.down: str | None = None  # why it stopped taking sends in this pass
        self.blamed: int | None = None  # the action that carries the outage (open or send)
        self._lock = asyncio.Lock()

    @property
    def retry(self) -> tuple[int, float, float]:
        """(attempts, first delay, growth) of this connector."""
        attempts, first, growth = self.connector.retry
        return int(attempts), float(first), float(growth)

    async def open(self, settings: Any) -> str | None:
        """Open once; the error that keeps this channel from sending, or None."""
        async with self._lock:
            if not self.opened and self.down is None:
                try:
                    await self.connector.open(settings)
                except Exception as exc:  # noqa: BLE001  (any failure to open: down, say why)
                    self.go_down(f"cannot open the {self.kind} connector: {_text(exc)}")
                else:
                    self.opened = True
        return self.down

    def go_down(self, why: str) -> None:
        """Take no more sends in this pass."""
        if self.down is None:
            log.warning("%s connector down for this pass: %s", self.kind, why)
            self.down = why

    async def close(self) -> None:
        """Release what open took; a failing close is logged, never raised."""
        if not self.opened:
            return
        self.opened = False
        try:
            await self.connector.close()
        except Exception:  # noqa: BLE001  (closing must not hide the pass's outcomes)
            log.exception("closing the %s connector failed", self.kind)


def _text(exc: BaseException) -> str:
    message = str(exc)
    return message if message and type(exc).__module__ == "engine.errors" else repr(exc)


class KeptChannels:
    """Channels kept open from one dispatch pass to the next (the daemon passes them in), so a
    pass sends on the SMTP sessions the last one opened instead of connecting, greeting and
    quitting again: at a few messages per pass that handshake cost more than the messages. A
    channel that went down in a pass is closed at its end; the next pass opens a new one."""

    def __init__(self, connectors: dict[str, Any]) -> None:
        self.connectors = connectors
        self.channels: dict[str, Channel] = {}

    def take(self, kind: str) -> Channel:
        """This kind's open channel, or a new one."""
        if kind not in self.channels:
            self.channels[kind] = Channel(kind, self.connectors[kind])
        return self.channels[kind]

    async def settle(self) -> None:
        """After a pass: close and forget the channels that went down in it."""
        for kind, channel in list(self.channels.items()):
            if channel.down is not None:
                del self.channels[kind]
                await channel.close()

    async def close(self) -> None:
        """Close every channel (the daemon is stopping)."""
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            await channel.close()
