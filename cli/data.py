"""`retain sync customers|events FILE` and `retain customer show` (the latter in a later issue)."""

from __future__ import annotations

import typer

sync_app = typer.Typer(help="Ingest customers or events from CSV or JSONL.", no_args_is_help=True)
