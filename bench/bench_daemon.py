"""Benchmark `retain daemon` end to end: event-to-delivered-email latency, and batch ingest.

A real daemon process (SQLite file, or PostgreSQL with `--pg URL`) serves the API on 127.0.0.1
and sends to an aiosmtpd in its own process that writes down when each message arrived.

- **latency**: events posted one per request at a steady rate (default 200/s) for `--seconds`,
  each for its own customer, each one entering an event-triggered playbook that sends an email
  (subject: the customer id). Latency = the email's arrival at the SMTP server - the moment the
  request was sent. p50, p99, max. Target (issue 13): p50 < 100 ms, p99 < 500 ms on SQLite.
- **ingest**: `--ingest-events` events that trigger nothing, posted to `/v1/events` in batches of
  100 by 4 concurrent clients; events per second over the whole. Target: >= 5,000/s. Beside it,
  in the same minute, `retain sync events` of the same rows from a JSONL file (the bulk path) as
  the reference a reader can hold the API's rate against.

    python bench/bench_daemon.py [--rate 200] [--seconds 20] [--ingest-events 50000]
                                 [--base 100000] [--pg URL] [--no-sqlite]

`--base N` loads N customers with `retain sync customers` first, and the events go to them
(the realistic case) instead of to customers the bench posts. The daemon's CPU per event is
printed beside the rates: on a shared machine the rates say what the daemon got, CPU per event
what it costs. BENCH_PROFILE=FILE runs the daemon under cProfile (see PROFILED).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token-0123456789"
PLAYBOOK = """id: welcome
name: Welcome on signup
trigger:
  event: { type: signup, lookback: 1d }
actions:
  - email: { subject: "{{ customer.customer_id }}", body: "Welcome aboard." }
"""


DAEMON = "from cli.main import main; main()"
PROFILED = """
import atexit, cProfile, functools, os, pstats, threading
import engine.daemon.api as api, engine.daemon.loop as loop, engine.outbox.dispatch as dispatch
totals, lock = [], threading.Lock()

def profiled(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        profile = cProfile.Profile()
        profile.enable()
        try:
            return function(*args, **kwargs)
        finally:
            profile.disable()
            with lock:
                totals.append(profile)
    return wrapper

api.ingest_items = profiled(api.ingest_items)
loop.react = profiled(loop.react)
dispatch.claim_due = profiled(dispatch.claim_due)
dispatch.record = profiled(dispatch.record)

def dump():
    if totals:
        stats = pstats.Stats(totals[0])
        for other in totals[1:]:
            stats.add(other)
        stats.dump_stats(os.environ["BENCH_PROFILE"])

atexit.register(dump)
from cli.main import main
main()
"""
"""The daemon under cProfile when BENCH_PROFILE=FILE is set (the bench only, never the
product): the database work runs in worker threads, which a plain `python -m cProfile` of the
main thread would not see, so each ingest, reaction, claim and record is profiled where it
runs and the stats are merged into FILE at exit (read with `python -m pstats FILE`)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_smtp(port: int, out: str) -> None:
    """The SMTP side (run as its own process): one line `arrival-time subject` per message."""
    from aiosmtpd.controller import Controller

    handle = open(out, "a", buffering=1, encoding="utf-8")  # noqa: SIM115  (lives as long as the server)

    class Recorder:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            arrived = time.time()
            subject = ""
            for line in envelope.original_content.split(b"\r\n"):
                if line.lower().startswith(b"subject:"):
                    subject = line[8:].strip().decode()
                    break
                if not line:
                    break
            handle.write(f"{arrived:.6f} {subject}\n")
            return "250 2.0.0 Ok: queued"

    controller = Controller(Recorder(), hostname="127.0.0.1", port=port)
    controller.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the daemon exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the daemon did not become ready")


def arrivals(path: Path) -> dict[str, float]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        moment, _, subject = line.partition(" ")
        found.setdefault(subject, float(moment))
    return found


async def post(client: Any, body: Any) -> Any:
    """POST /v1/events, sent again when the connection broke: uvicorn closes a keep-alive
    connection idle for 5 s, and a request the pool put on it that moment fails with a
    ReadError that says nothing about the daemon. Sending again is safe: events carry their
    ids (a same-content duplicate is accepted, kept once); the latency still counts from the
    first try."""
    import httpx

    for attempt in range(3):
        try:
            return await client.post("/v1/events", json=body)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def post_steady(url: str, rate: float, ids: list[str]) -> dict[str, float]:
    """One event per customer, one request each, at `rate` per second; when each was sent."""
    import httpx

    sent: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=30) as client:
        async def one(cid: str, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            sent[cid] = time.time()
            reply = await post(client, {
                "event_id": f"s-{cid}", "customer_id": cid, "type": "signup",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            if reply.status_code >= 300:
                raise SystemExit(f"POST /v1/events -> {reply.status_code}: {reply.text}")

        start = time.monotonic() + 0.5
        await asyncio.gather(*(one(cid, start + n / rate) for n, cid in enumerate(ids)))
    return sent


async def post_batches(url: str, batches: list[list[dict[str, Any]]], clients: int = 4) -> float:
    """Every batch posted by `clients` concurrent senders; the seconds it took."""
    import httpx

    queue = iter(batches)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        async def sender() -> None:
            for batch in queue:
                reply = await post(client, batch)
                if reply.status_code >= 300:
                    raise SystemExit(f"POST /v1/events -> {reply.status_code}: {reply.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(clients)))
        return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(url: str, label: str, args: argparse.Namespace) -> dict[str, Any]:
    """One database: the daemon started on `url`, latency then ingest measured."""
    import httpx

    root = Path(tempfile.mkdtemp(prefix="retain-bench-daemon-"))
    (root / "playbooks").mkdir()
    (root / "playbooks" / "welcome.yaml").write_text(PLAYBOOK, encoding="utf-8")
    smtp_port, api_port = free_port(), free_port()
    received = root / "received.txt"
    received.touch()
    smtp = subprocess.Popen([sys.executable, __file__, "--serve-smtp", str(smtp_port),
                             str(received)])
    env = {**os.environ, "RETAIN_SMTP_HOST": "127.0.0.1", "RETAIN_SMTP_PORT": str(smtp_port),
           "RETAIN_SMTP_TLS": "none", "RETAIN_EMAIL_FROM": "Bench <bench@example.com>",
           "RETAIN_SECRET_KEY": "bench-secret-key-of-enough-length", "RETAIN_API_TOKEN": TOKEN}
    count = int(args.rate * args.seconds)
    ids = [f"b{n:06}" for n in range(max(count, args.base))]
    if args.base:
        load_base(url, root, ids)
    ids = ids[:count]
    log = (root / "daemon.log").open("wb")
    code = PROFILED if os.environ.get("BENCH_PROFILE") else DAEMON
    daemon = subprocess.Popen([sys.executable, "-c", code,
                               "--db", url, "daemon", "playbooks",
                               "--listen", f"127.0.0.1:{api_port}"],
                              cwd=root, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_ready(base, daemon)
        for start in range(0, count if not args.base else 0, 100):
            reply = httpx.post(f"{base}/v1/customers", timeout=60,
                               headers={"Authorization": f"Bearer {TOKEN}"},
                               json=[{"customer_id": cid, "email": f"{cid}@example.com",
                                      "created_at": "2024-01-01T00:00:00Z"}
                                     for cid in ids[start:start + 100]])
            reply.raise_for_status()
        time.sleep(2)  # the reactions to those customers are over before the clock starts
        cpu = cpu_seconds(daemon.pid)
        sent = asyncio.run(post_steady(base, args.rate, ids))
        deadline = time.monotonic() + 60
        while len(arrivals(received)) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        got = arrivals(received)
        steady_cpu = cpu_seconds(daemon.pid) - cpu
        latencies = [(got[cid] - sent[cid]) * 1000 for cid in ids if cid in got]
        events = [{"event_id": f"v-{n}", "customer_id": ids[n % count], "type": "page_view",
                   "occurred_at": "2026-01-01T00:00:00Z", "properties": {"path": f"/p/{n % 50}"}}
                  for n in range(args.ingest_events)]
        cpu = cpu_seconds(daemon.pid)
        seconds = asyncio.run(post_batches(base, [events[i:i + 100]
                                                  for i in range(0, len(events), 100)]))
        ingest_cpu = cpu_seconds(daemon.pid) - cpu
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        smtp.send_signal(signal.SIGTERM)
        smtp.wait(10)
    sync_rate = sync_reference(url, root, ids, args.ingest_events)
    return {"db": label, "events": count, "delivered": len(latencies),
            "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
            "ingest_per_s": round(args.ingest_events / seconds),
            "sync_per_s": sync_rate, "base": args.base,
            "cpu_ms_event": round(steady_cpu * 1000 / count, 2),
            "cpu_ms_ingested": round(ingest_cpu * 1000 / max(1, args.ingest_events), 3)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc). The machine may be
    shared: CPU per event says what the daemon costs whatever the others take."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_base(url: str, root: Path, ids: list[str]) -> None:
    """A base of existing customers, loaded by `retain sync customers` before the daemon
    starts: events for customers a large table already holds are the realistic case."""
    path = root / "base.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for cid in ids:
            out.write(json.dumps({"customer_id": cid, "email": f"{cid}@example.com",
                                  "created_at": "2024-01-01T00:00:00Z"}) + "\n")
    subprocess.run([sys.executable, "-c", DAEMON, "--db", url, "sync", "customers", str(path)],
                   cwd=root, check=True, capture_output=True)


def sync_reference(url: str, root: Path, ids: list[str], n: int) -> int:
    """`retain sync events` of n similar rows from a file, into the same database: events/s."""
    path = root / "reference.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for k in range(n):
            out.write(json.dumps({"event_id": f"r-{k}", "customer_id": ids[k % len(ids)],
                                  "type": "page_view", "occurred_at": "2026-01-01T00:00:00Z",
                                  "properties": {"path": f"/p/{k % 50}"}}) + "\n")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", DAEMON, "--db", url,
                    "sync", "events", str(path)], cwd=root, check=True, capture_output=True)
    return round(n / (time.perf_counter() - started))


def fresh_pg(url: str) -> str:
    """A new schema in the PostgreSQL database, for one run."""
    import sqlalchemy as sa

    schema = f"bench_daemon_{os.getpid()}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-smtp", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--ingest-events", type=int, default=50_000)
    parser.add_argument("--base", type=int, default=0,
                        help="customers loaded by sync before the daemon starts (e.g. 100000)")
    parser.add_argument("--pg", help="also on this PostgreSQL URL (a fresh schema is made)")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args(argv)
    if args.serve_smtp:
        serve_smtp(int(args.serve_smtp[0]), args.serve_smtp[1])
        return
    rows = []
    if not args.no_sqlite:
        folder = Path(tempfile.mkdtemp(prefix="retain-bench-db-"))
        rows.append(measure(f"sqlite:///{folder / 'retain.db'}", "sqlite", args))
    if args.pg:
        rows.append(measure(fresh_pg(args.pg), "postgresql", args))
    print(f"rate {args.rate:g}/s for {args.seconds:g} s; base {args.base:,} customers; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| db | events | delivered | p50 ms | p99 ms | max ms | daemon CPU ms/event | "
          "API ingest ev/s | daemon CPU ms/ingested | sync ev/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['db']} | {row['events']:,} | {row['delivered']:,} | {row['p50_ms']} | "
              f"{row['p99_ms']} | {row['max_ms']} | {row['cpu_ms_event']} | "
              f"{row['ingest_per_s']:,} | {row['cpu_ms_ingested']} | {row['sync_per_s']:,} |")


if __name__ == "__main__":
    main()
