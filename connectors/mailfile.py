"""The file transport of the email connector: each message becomes one `.eml` file in a folder.

For development and the demo (`RETAIN_EMAIL_TRANSPORT=file`, `RETAIN_EMAIL_DIR`), the way web
frameworks offer a file mail backend: open the files with any mail client. The file name is a
hash of the Message-ID, so a re-send (a retry, a recovered claim) overwrites the same file
instead of adding a second one, and the write is atomic (a temporary file renamed into place),
so a reader never sees half a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from engine import TransientError

if TYPE_CHECKING:
    from connectors.email import Envelope


def eml_name(message_id: str) -> str:
    """`<32 hex>.eml`: the same for every send of one Message-ID."""
    return f"{hashlib.sha256(message_id.encode()).hexdigest()[:32]}.eml"


class MailFolder:
    """Writes messages into `folder` (created when missing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransientError(f"cannot create the mail folder {folder} (RETAIN_EMAIL_DIR): "
                                 f"{exc.strerror or exc}", connection=True) from exc

    async def deliver(self, envelope: Envelope, data: bytes) -> str:
        """Write one message; returns where it is."""
        path = self.folder / eml_name(envelope.message_id)
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            raise TransientError(f"cannot write {path}: {exc.strerror or exc}",
                                 connection=True) from exc
        return f"written to {path}"

    async def close(self) -> None:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; the folder's readers should see it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
