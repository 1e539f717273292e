"""The one entry point a command calls: sync a file of one kind, or a public data set's file."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from engine.errors import DataFileError
from engine.sync.batches import Progress
from engine.sync.ingest import sync_customers, sync_events
from engine.sync.report import SyncReport
from engine.sync.suppressions import sync_suppressions

KINDS = ("customers", "events", "suppressions")


def sync_file(engine: sa.Engine, kind: str, path: Path, fmt: str | None = None,
              progress: Progress | None = None, dataset: str | None = None) -> SyncReport:
    """Sync `path` as `kind`; with `dataset` (a key of engine.sync.datasets.DATASETS) the file is
    that public data set in its original form, mapped to Retain's rows on the way in."""
    if dataset is not None:
        from engine.sync.datasets import sync_dataset

        return sync_dataset(engine, dataset, kind, path, progress)
    if kind not in KINDS:
        raise DataFileError(f"unknown kind of sync {kind!r}; use one of {', '.join(KINDS)}")
    function = {"customers": sync_customers, "events": sync_events,
                "suppressions": sync_suppressions}[kind]
    return function(engine, path, fmt, progress=progress)
