"""Seeded generator of realistic made-up customers and events for the sync benchmark.

Real datasets (shared/data) top out at ~25,000 customers and have no feedback or logins, so the
1,000,000-customer target needs generated data. It imitates what a retention team exports:

- customers sign up over two years (more of them recently: the business grows), each with email,
  name, birthday, one of a handful of real time zones and its country, a segment, tags and a
  `plan` column that lands in `attributes`; a few cells are empty, as in real exports;
- events per customer are heavily skewed (log-normal: most have a handful, a few have hundreds,
  ~8% none at all), averaging ~9; each customer is active from sign-up until they lapse
  (exponential lifetime), some come back after a gap, so inactivity gaps exist for playbooks;
- types: page_view, login, purchase (`amount`), feedback (`score` 0-10, mostly promoters).

Output streams to disk in blocks of customers (constant memory at any size); within a block the
events are sorted by time, so the file looks like an export of interleaved activity rather than
one customer after another. The same seed gives byte-identical files.

    python bench/gen_data.py --customers 100000 --out bench/out/data --seed 1 [--format jsonl]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

END = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_DAYS = 730
START = END - timedelta(days=SPAN_DAYS)
BLOCK = 1000
ZONES = [  # (time zone, country, weight)
    ("Europe/London", "GB", 30), ("America/New_York", "US", 20), ("America/Los_Angeles", "US", 10),
    ("Europe/Berlin", "DE", 12), ("Europe/Paris", "FR", 8), ("Europe/Oslo", "NO", 4),
    ("Asia/Tokyo", "JP", 6), ("Australia/Sydney", "AU", 5), ("America/Sao_Paulo", "BR", 5),
]
FIRST = ["Ada", "Bjorn", "Chen", "Dara", "Elif", "Farah", "Goran", "Hana", "Ivan", "Jon", "Kemi",
         "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tomas", "Una", "Yuki"]
LAST = ["Smith", "Jensen", "Garcia", "Okafor", "Muller", "Rossi", "Tanaka", "Silva", "Nguyen",
        "Haddad", "Kowalski", "Berg", "Dubois", "Patel", "Larsen", "Moreau", "Ito", "Costa"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "shop.example"]
SEGMENTS = (["bronze", "silver", "gold", ""], [50, 30, 12, 8])
PLANS = (["free", "basic", "premium"], [55, 35, 10])
TAGS = ["newsletter", "mobile", "wholesale", "gift_buyer", "beta", "vip"]
TYPES = (["page_view", "login", "purchase", "feedback"], [45, 30, 20, 5])
PAGES = ["/", "/pricing", "/products", "/cart", "/account", "/help"]
SCORES = (list(range(11)), [2, 1, 1, 2, 2, 4, 6, 10, 18, 24, 30])
CUSTOMER_COLUMNS = ["customer_id", "email", "name", "created_at", "birthday", "timezone",
                    "country", "segment", "tags", "plan"]
EVENT_COLUMNS = ["event_id", "customer_id", "type", "occurred_at", "amount", "score", "page"]
MU = math.log(9.7) - 0.5  # log-normal with sigma 1: mean ~9.7 before the 8% of silent customers
FEW = (list(range(7)), [22, 20, 17, 15, 11, 8, 7])
"""The `few` shape: 0-6 events per customer, ~2.25 on average (a shop where most people buy
once or twice), so per-customer work (facts, RFM) weighs more than per-event work."""
SHAPES = ("many", "few")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_customer(rng: random.Random, number: int) -> dict[str, Any]:
    """One customer in the standard shape (tags as a list; `plan` is an extra attribute)."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    zone, country, _ = rng.choices(ZONES, weights=[w for *_, w in ZONES])[0]
    created = START + timedelta(seconds=SPAN_DAYS * 86400 * math.sqrt(rng.random()))
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(55 * 365))
    return {
        "customer_id": f"c{number:07d}",
        "email": "" if rng.random() < 0.03 else f"{first}.{last}{number}@{rng.choice(DOMAINS)}".lower(),
        "name": f"{first} {last}",
        "created_at": _iso(created),
        "birthday": "" if rng.random() < 0.1 else born.isoformat(),
        "timezone": zone,
        "country": country,
        "segment": rng.choices(*SEGMENTS)[0],
        "tags": rng.sample(TAGS, rng.choices([0, 1, 2], [50, 35, 15])[0]),
        "plan": rng.choices(*PLANS)[0],
    }


def _event_times(rng: random.Random, created: datetime, count: int) -> list[datetime]:
    """`count` times from sign-up to lapse; ~15% of lapsed customers come back once later."""
    lifetime = min(rng.expovariate(1 / 300) * 86400, (END - created).total_seconds())
    times = [created + timedelta(seconds=rng.uniform(0, lifetime)) for _ in range(count)]
    comeback = created + timedelta(seconds=lifetime + rng.expovariate(1 / 120) * 86400)
    if count > 3 and comeback < END and rng.random() < 0.15:
        for index in range(min(3, count // 4)):  # a short burst after the gap
            times[index] = min(comeback + timedelta(hours=rng.uniform(0, 72)), END)
    if times:
        times[0] = created  # the first visit is the sign-up
    return times


def make_events(rng: random.Random, customer: dict[str, Any],
                shape: str = "many") -> Iterator[dict[str, Any]]:
    """A customer's events (without ids), in the standard shape with a `properties` dict.

    `shape`: "many" (skewed, ~8.5 on average) or "few" (0-6, ~2.25 on average)."""
    if shape == "few":
        count = rng.choices(*FEW)[0]
    else:
        count = 0 if rng.random() < 0.08 else min(2000, max(1, int(rng.lognormvariate(MU, 1.0))))
    created = datetime.fromisoformat(customer["created_at"])
    types = rng.choices(*TYPES, k=count)
    for kind, moment in zip(types, _event_times(rng, created, count), strict=True):
        if kind == "purchase":
            properties: dict[str, Any] = {"amount": round(rng.lognormvariate(3.4, 0.8), 2)}
        elif kind == "feedback":
            properties = {"score": rng.choices(*SCORES)[0]}
        elif kind == "page_view":
            properties = {"page": rng.choice(PAGES)}
        else:
            properties = {}
        yield {"customer_id": customer["customer_id"], "type": kind, "occurred_at": moment,
               "properties": properties}


class _Writer:
    """One output file in CSV (flat columns) or JSONL (standard shape with `properties`)."""

    def __init__(self, handle: TextIO, fmt: str, columns: list[str]) -> None:
        self.fmt, self.handle, self.columns = fmt, handle, columns
        if fmt == "csv":
            self.csv = csv.writer(handle, lineterminator="\n")
            self.csv.writerow(columns)

    def customer(self, row: dict[str, Any]) -> None:
        if self.fmt == "csv":
            # Tags as one comma-separated cell, the way spreadsheets export lists.
            self.csv.writerow([",".join(v) if k == "tags" else v for k, v in row.items()])
        else:
            cleaned = {k: v for k, v in row.items() if v not in ("", None)}
            self.handle.write(json.dumps(cleaned, separators=(",", ":")) + "\n")

    def event(self, row: dict[str, Any]) -> None:
        row = {**row, "occurred_at": _iso(row["occurred_at"])}
        if self.fmt == "csv":
            flat = {**row, **row.pop("properties")}
            self.csv.writerow([flat.get(column, "") for column in self.columns])
        else:
            if not row["properties"]:
                del row["properties"]
            self.handle.write(json.dumps(row, separators=(",", ":")) + "\n")


def generate(customers: int, out: Path, seed: int = 1, fmt: str = "csv",
             shape: str = "many") -> dict[str, Any]:
    """Write `out/customers.<fmt>` and `out/events.<fmt>`; returns their paths and row counts."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {name: out / f"{name}.{fmt}" for name in ("customers", "events")}
    counts: dict[str, int] = {"customers": 0, "events": 0, **{t: 0 for t in TYPES[0]}}
    with paths["customers"].open("w", encoding="utf-8", newline="") as chandle, \
            paths["events"].open("w", encoding="utf-8", newline="") as ehandle:
        cwriter = _Writer(chandle, fmt, CUSTOMER_COLUMNS)
        ewriter = _Writer(ehandle, fmt, EVENT_COLUMNS)
        for block_start in range(1, customers + 1, BLOCK):
            block: list[dict[str, Any]] = []
            for number in range(block_start, min(block_start + BLOCK, customers + 1)):
                customer = make_customer(rng, number)
                cwriter.customer(customer)
                block.extend(make_events(rng, customer, shape))
            block.sort(key=lambda event: event["occurred_at"])
            for event in block:
                counts["events"] += 1
                counts[event["type"]] += 1
                ewriter.event({"event_id": f"e{counts['events']:09d}", **event})
            counts["customers"] += min(BLOCK, customers + 1 - block_start)
    return {"format": fmt, "seed": seed, "shape": shape, **{k: str(v) for k, v in paths.items()}, "counts": counts}


def main(argv: list[str] | None = None) -> None:
    """CLI entry: generate, then print what was written as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/data"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    parser.add_argument("--shape", choices=SHAPES, default="many",
                        help="events per customer: many (~8.5, skewed) or few (0-6, ~2.25)")
    args = parser.parse_args(argv)
    print(json.dumps(generate(args.customers, args.out, args.seed, args.format, args.shape),
                     indent=2))


if __name__ == "__main__":
    main()
