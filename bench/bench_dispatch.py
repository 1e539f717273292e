"""Benchmark the dispatcher: what claiming and recording cost per message, and email end to end.

- **overhead**: N email rows due in a fresh outbox, dispatched through a connector whose `send`
  returns at once: everything measured is the dispatcher's own work (claim in batches with a
  lease, judge suppressions, record the outcomes, `email_sent` events and `last_emailed_at`, one
  transaction per batch). Rows are written before the clock starts. Wall time and this
  process's CPU per message; on SQLite, and on PostgreSQL with `--pg URL`.
- **email** (when the email connector's sending side is installed): the same frozen payloads as
  bench/bench_email.py, sent by `dispatch()` through `EmailConnector` to a local aiosmtpd,
  against bench_email's bare aiosmtplib loop over the same number of connections, in
  alternating rounds; the fastest of each counts. Target (issue 12): dispatch >= 80% of bare.
  Next to the rates, this process's CPU per message in the fastest round of each (the server's
  is not counted; the dispatcher's includes its database threads): noise moves it far less.

    python bench/bench_dispatch.py [--messages 2000] [--rounds 3] [--pg URL] [--no-email]
                                   [--payload-bytes 6000,100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from connectors.base import Delivery, Sent
from connectors.email import EmailConnector
from engine.outbox.dispatch import dispatch
from engine.store.open import open_store
from engine.store.tables import actions
from engine.store.tables import payloads as action_payloads

AS_OF = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
CUSTOMER = ("INSERT INTO customers (customer_id, email, tags, file_tags, tags_added, "
            "tags_removed, attributes, purchase_count, total_spent, points_balance) VALUES "
            "(:id, :email, '[]', '[]', '[]', '[]', '{}', 0, 0, 0)")


class NoSend(EmailConnector):
    """Delivers nothing, at once: the dispatcher's own cost is all that is left."""

    concurrency = 8

    async def open(self, settings: Any) -> None:
        return None

    async def send(self, delivery: Delivery) -> Sent:
        return Sent(detail="250 (not sent)")


TABLES = ("action_attempts", "action_payloads", "events", "actions", "suppressions", "customers")


def fill(engine: sa.Engine, payloads: list[dict[str, Any]]) -> None:
    """An empty outbox, then one due email row per payload (and its customer). PostgreSQL's
    tables are truncated and analyzed: emptied by DELETE, each round's dead rows stayed in the
    tables and their indexes (a scan of `actions` by status read 350,000 dead index entries
    after a few runs), so later rounds and runs measured the bench's own garbage. A TRUNCATE
    that deadlocks with autovacuum (40P01) is tried again."""
    for attempt in range(3):
        try:
            return _fill(engine, payloads)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == 2:
                raise


def _fill(engine: sa.Engine, payloads: list[dict[str, Any]]) -> None:
    postgresql = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        if postgresql:
            connection.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
        for table in () if postgresql else TABLES:
            connection.execute(sa.text(f"DELETE FROM {table}"))
        connection.execute(sa.text(CUSTOMER), [
            {"id": f"c{n}", "email": f"c{n}@example.com"} for n in range(len(payloads))])
        ids = connection.execute(
            sa.insert(actions).returning(actions.c.id, sort_by_parameter_order=True), [
                {"playbook_id": "bench", "customer_id": f"c{n}", "connector": "email",
                 "idempotency_key": f"bench:c{n}", "status": "planned", "attempts": 0,
                 "next_attempt_at": AS_OF, "created_at": AS_OF, "stage": 0, "step": 0}
                for n in range(len(payloads))]).scalars().all()
        connection.execute(sa.insert(action_payloads), [
            {"action_id": ident, "payload": payload}
            for ident, payload in zip(ids, payloads, strict=True)])
        if postgresql:
            connection.execute(sa.text(f"ANALYZE {', '.join(TABLES)}"))


def timed(engine: sa.Engine, settings: Any, connector: type[EmailConnector], count: int
          ) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one dispatch pass that must send every row."""
    started, cpu = time.perf_counter(), time.process_time()
    report = dispatch(engine, settings, AS_OF, connectors={"email": connector})
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if report.total("sent") != count:
        raise SystemExit(f"dispatch sent {report.total('sent')} of {count}: {report.to_json()}")
    return wall, cpu


def overhead(url: str, count: int, rounds: int, size: int) -> dict[str, Any]:
    payloads = [{"address": f"c{n}@example.com", "to": f"C {n} <c{n}@example.com>",
                 "subject": "We miss you", "message": "x" * size} for n in range(count)]
    engine = open_store(url)
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        fill(engine, payloads)
        best = min(best, timed(engine, None, NoSend, count))
    engine.dispose()
    return {"db": engine.dialect.name, "messages": count, "size": size,
            "per_s": round(count / best[0]),
            "wall_us": round(best[0] / count * 1e6), "cpu_us": round(best[1] / count * 1e6)}


def email(url: str, count: int, rounds: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_email import FROM, bare_send, make_payloads, start_server, wire_message

    payloads = [{k: v for k, v in p.items() if not k.startswith("_")}
                for p in make_payloads(count)]
    prebuilt = [(e.sender, e.recipient, data) for e, data in map(wire_message, payloads)]
    engine = open_store(url)
    server, port = start_server()
    rows = []
    try:
        for connections in (8, 1):
            settings = SimpleNamespace(
                email_transport=None, email_dir=None, email_from=FROM, caps={}, quiet_hours={},
                timezone="UTC",
                smtp=SimpleNamespace(host="127.0.0.1", port=port, username=None, password=None,
                                     tls="none", connections=connections, timeout=30.0,
                                     validate_certs=True))
            bare = engine_best = (float("inf"), float("inf"))
            for _ in range(rounds):
                started, cpu = time.perf_counter(), time.process_time()
                asyncio.run(bare_send(prebuilt, "127.0.0.1", port, connections))
                bare = min(bare, (time.perf_counter() - started, time.process_time() - cpu))
                fill(engine, payloads)
                engine_best = min(engine_best, timed(engine, settings, EmailConnector, count))
            rows.append({"db": engine.dialect.name, "connections": connections,
                         "bare_per_s": round(count / bare[0]),
                         "dispatch_per_s": round(count / engine_best[0]),
                         "ratio": round(bare[0] / engine_best[0], 2),
                         "bare_cpu_us": round(bare[1] / count * 1e6),
                         "dispatch_cpu_us": round(engine_best[1] / count * 1e6)})
    finally:
        server.terminate()
        server.wait(5)
        engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg", help="also on this PostgreSQL URL (its tables are emptied)")
    parser.add_argument("--no-email", action="store_true")
    parser.add_argument("--payload-bytes", type=lambda text: [int(n) for n in text.split(",")],
                        default=[6000], help="message sizes of the overhead rows (6000: about "
                        "bench_email's messages)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        urls = [f"sqlite:///{folder}/bench.db"] + ([args.pg] if args.pg else [])
        print("| db | messages | payload bytes | dispatch msg/s (no send) | wall µs/msg "
              "| CPU µs/msg |")
        print("|---|---|---|---|---|---|")
        for url in urls:
            for size in args.payload_bytes:
                row = overhead(url, args.messages, args.rounds, size)
                print(f"| {row['db']} | {row['messages']:,} | {size:,} | {row['per_s']:,} "
                      f"| {row['wall_us']} | {row['cpu_us']} |")
        if args.no_email:
            return
        try:
            from connectors.email import wire_message  # noqa: F401  (the sending side)
        except ImportError:
            print("\n(email: the email connector's sending side is not installed; skipped)")
            return
        print("\n| db | connections | bare msg/s | dispatch msg/s | dispatch / bare "
              "| bare CPU µs/msg | dispatch CPU µs/msg |")
        print("|---|---|---|---|---|---|---|")
        for url in urls:
            for row in email(url, args.messages, args.rounds):
                print(f"| {row['db']} | {row['connections']} | {row['bare_per_s']:,} "
                      f"| {row['dispatch_per_s']:,} | {row['ratio']:.2f} "
                      f"| {row['bare_cpu_us']} | {row['dispatch_cpu_us']} |")


if __name__ == "__main__":
    main()
