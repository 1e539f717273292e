"""The demo database: a sample of real customers and purchases, plus clearly generated extras.

The purchases are real (a seeded sample of 1,500 customers of UCI "Online Retail", D. Chen,
CC BY 4.0; see shared/data/README.md). That data has no contact details, logins or feedback, so
names, e-mail addresses, birthdays, `login` events and `feedback` scores are generated with a
fixed seed and marked `"generated": true` in their properties. The files are shipped inside the
package (engine/demo/data/) so `retain demo` works on a machine without the raw datasets;
`build_demo_files` regenerates them byte for byte from the raw file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.sync.datasets import DATASETS, retail_rows
from engine.sync.ingest import SyncReport, sync_customers, sync_events

DEMO_DIR = Path(__file__).with_name("data")
CUSTOMERS_FILE = "customers.csv.gz"
EVENTS_FILE = "events.jsonl.gz"
DEMO_CUSTOMERS = 1500
SEED = 2011
FIRST_NAMES = ["Alice", "Ben", "Chloe", "Daniel", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jack",
               "Kiran", "Lena", "Mateo", "Nora", "Oscar", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
LAST_NAMES = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Thomas", "Roberts",
              "Walker", "Wright", "Khan", "Murphy", "Müller", "Dubois", "Rossi", "Silva"]
CUSTOMER_COLUMNS = ["customer_id", "name", "email", "birthday", "timezone", "country"]


def _gzip_text(path: Path, text: str) -> None:
    """Write gzip with a fixed header time, so regenerating gives identical bytes."""
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        packed.write(text.encode("utf-8"))


def _customer(rng: random.Random, row: dict[str, Any]) -> dict[str, Any]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 50))
    return {"customer_id": row["customer_id"], "name": f"{first} {last}",
            "email": f"{first.lower()}.{row['customer_id']}@demo.example",
            "birthday": born.isoformat(), "timezone": "Europe/London",
            "country": row.get("country", "")}


def _generated_events(rng: random.Random, customer_id: str, purchases: list[datetime],
                      end: datetime) -> list[dict[str, Any]]:
    """Logins before purchases, now and then a feedback score after one; nothing after `end`."""
    events = []
    for moment in purchases:
        for _ in range(rng.choice((0, 1, 1, 2))):
            at = moment - timedelta(days=rng.randrange(1, 10), minutes=rng.randrange(600))
            events.append(("login", at, {}))
        if rng.random() < 0.12:
            score = rng.choices(range(11), weights=(2, 1, 1, 2, 2, 4, 6, 10, 14, 16, 12))[0]
            at = min(moment + timedelta(days=rng.randrange(1, 6)), end)
            events.append(("feedback", at, {"score": score}))
    return [{"event_id": f"demo-{kind}-{customer_id}-{index}", "customer_id": customer_id,
             "type": kind, "occurred_at": at.isoformat(),
             "properties": {**props, "generated": True}}
            for index, (kind, at, props) in enumerate(events)]


def build_demo_files(shared_data: Path, out_dir: Path = DEMO_DIR) -> None:
    """Regenerate the shipped demo files from shared/data (deterministic)."""
    rng = random.Random(SEED)
    customers, events = retail_rows(shared_data / DATASETS["online_retail"],
                                    limit_customers=DEMO_CUSTOMERS, seed=SEED)
    purchases: dict[str, list[datetime]] = {}
    for _, event in events:
        if event["type"] == "purchase":
            purchases.setdefault(event["customer_id"], []).append(
                datetime.fromisoformat(event["occurred_at"]))
    end = max(max(times) for times in purchases.values())
    table = io.StringIO()
    writer = csv.DictWriter(table, CUSTOMER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    lines = [json.dumps(event, sort_keys=True) for _, event in events]
    for _, row in customers:
        writer.writerow(_customer(rng, row))
        generated = _generated_events(rng, row["customer_id"],
                                      purchases.get(row["customer_id"], []), end)
        lines += [json.dumps(event, sort_keys=True) for event in generated]
    out_dir.mkdir(parents=True, exist_ok=True)
    _gzip_text(out_dir / CUSTOMERS_FILE, table.getvalue())
    _gzip_text(out_dir / EVENTS_FILE, "\n".join(lines) + "\n")


def load_demo(engine: sa.Engine, progress: Any = None) -> tuple[SyncReport, SyncReport]:
    """Sync the shipped demo customers and events (idempotent: a second load changes nothing)."""
    customers = sync_customers(engine, DEMO_DIR / CUSTOMERS_FILE, progress=progress)
    events = sync_events(engine, DEMO_DIR / EVENTS_FILE, progress=progress)
    return customers, events
