"""Benchmark email sending: messages/s through the engine against a bare aiosmtplib loop.

Both sides send the same N messages (the same bytes: `wire_message` of the same frozen payloads,
a realistic multipart text + HTML of about 6 KB) to one local aiosmtpd server that accepts and
discards them (`aiosmtpd.handlers.Sink`, in its own process, so the server does not share the
interpreter lock with the clients), over the same number of connections (8 and 1), in
alternating rounds in the same minute. The fastest round of each side counts (the machine is
shared and noisy); the ratio engine/bare is the number to read, and next to it the CPU time the
sending process spent per message (the server's is not counted), which noise moves far less.

- **bare**: the messages built *before* the clock starts; per connection one task with its own
  `aiosmtplib.SMTP`, `sendmail` in a loop. No payload, no building, no pool, no classification.
- **engine**: `engine_send` below, the one function to swap for the full dispatcher later (claim,
  send, record): today `EmailConnector.open` (the SMTP pool), then `send(Delivery)` of each frozen
  payload by `connector.concurrency` workers, then `close`.
- **build at send** (`--build-at-send`, for the record): the engine, but each message is built
  from its fields (`build_message`, serialised) just before its send, as if the payload froze
  only the fields: what freezing the whole message at commit saves.

    python bench/bench_email.py [--messages 2000] [--rounds 3] [--connections 8,1]
                                [--build-at-send] [--json]

The target (issue 12): the engine at least 80% of the bare loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiosmtplib

from connectors.base import Delivery
from connectors.email import WIRE, EmailConnector, EmailParams, build_message, wire_message
from engine.config import Settings, SmtpSettings

FROM = "Shop <news@shop.example>"
DUE = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
TEXT = ("Hello {name},\n\nWe have not seen you for a while. " + "Here is what is new. " * 60
        + "\n\nUnsubscribe: {url}\n")
HTML = ("<html><body><p>Hello {name},</p>" + "<p>We have not seen you for a while.</p>" * 80
        + "<a href=\"{url}\">unsubscribe</a></body></html>\n")

Payloads = Sequence[dict[str, Any]]
Engine = Callable[[Payloads, Settings], Awaitable[None]]


def make_payloads(count: int) -> list[dict[str, Any]]:
    """N frozen payloads, as a live run's commit stores them (plain JSON), each with its bodies
    under `_text` / `_html` for the build-at-send variant (the connector ignores them)."""
    connector = EmailConnector()
    connector.from_address = FROM
    params = EmailParams(subject="We miss you, {{ customer.name }}", template="winback")
    payloads = []
    for i in range(count):
        name, url = f"Customer {i}", f"https://shop.example/unsubscribe?token={i:064x}"

        def render(source: str, *, header: bool = False, html: bool = False,
                   name: str = name) -> str:
            return source.replace("{{ customer.name }}", name)

        def render_file(file: str, name: str = name, url: str = url) -> str:
            return (HTML if file.endswith(".html.j2") else TEXT).format(name=name, url=url)

        payload = json.loads(json.dumps(connector.payload(
            params, render, render_file, DUE, key=f"bench:c{i}:o:0:0",
            customer={"customer_id": f"c{i}", "email": f"c{i}@example.com", "name": name},
            unsubscribe_url=url)))
        payloads.append({**payload, "_text": render_file("x.txt.j2"),
                         "_html": render_file("x.html.j2")})
    return payloads


async def engine_send(payloads: Payloads, settings: Settings) -> None:
    """The engine's side: swap this for the dispatcher (claim, send, record) when it lands."""
    connector = EmailConnector()
    await connector.open(settings)
    queue = iter(enumerate(payloads, start=1))

    async def worker() -> None:
        for action_id, payload in queue:
            await connector.send(Delivery(action_id=action_id, key=f"k{action_id}",
                                          customer_id=f"c{action_id}", playbook_id="bench",
                                          payload=payload, as_of=DUE, attempt=1))

    try:
        await asyncio.gather(*(worker() for _ in range(connector.concurrency)))
    finally:
        await connector.close()


async def build_at_send(payloads: Payloads, settings: Settings) -> None:
    """The engine as if only the fields were frozen: build each message before sending it."""
    def rebuild(payload: dict[str, Any]) -> dict[str, Any]:
        message = build_message(from_address=payload["from"], to=payload["to"],
                                subject=payload["subject"], text=payload["_text"],
                                html=payload["_html"], message_id=payload["message_id"],
                                unsubscribe_url=payload["unsubscribe_url"], date=payload["date"])
        return {**payload, "message": message.as_bytes(policy=WIRE).decode()}

    await engine_send(_Lazy(payloads, rebuild), settings)


class _Lazy(Sequence[dict[str, Any]]):
    """The payloads, each passed through `change` when the engine reads it (at its send)."""

    def __init__(self, items: Payloads, change: Callable[[dict[str, Any]], dict[str, Any]]):
        self.items, self.change = items, change

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        return self.change(self.items[index])


async def bare_send(messages: Sequence[tuple[str, str, bytes]], host: str, port: int,
                    connections: int) -> None:
    """The baseline: prebuilt bytes, one aiosmtplib session per connection, sendmail in a loop."""
    queue = iter(messages)

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
        await client.connect()
        for sender, recipient, data in queue:
            await client.sendmail(sender, [recipient], data)
        await client.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    """aiosmtpd with the Sink handler in its own process; returns it once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-c",
                               "aiosmtpd.handlers.Sink", "-l", f"127.0.0.1:{port}"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, port
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit(f"aiosmtpd did not start on 127.0.0.1:{port}")


def measure(args: argparse.Namespace, engine: Engine = engine_send) -> list[dict[str, Any]]:
    """Per connection count: each side's best messages/s over the rounds, and the ratios."""
    payloads = make_payloads(args.messages)
    prebuilt = []
    for payload in payloads:
        envelope, data = wire_message(payload)
        prebuilt.append((envelope.sender, envelope.recipient, data))
    sides: dict[str, Callable[[Settings, int], Awaitable[None]]] = {
        "bare": lambda settings, port: bare_send(prebuilt, "127.0.0.1", port,
                                                 settings.smtp.connections),
        "engine": lambda settings, port: engine(payloads, settings)}
    if args.build_at_send:
        sides["build_at_send"] = lambda settings, port: build_at_send(payloads, settings)
    server, port = start_server()
    rows = []
    try:
        for connections in args.connections:
            settings = Settings(email_from=FROM, smtp=SmtpSettings(
                host="127.0.0.1", port=port, tls="none", connections=connections))
            best = dict.fromkeys(sides, float("inf"))
            cpu = dict.fromkeys(sides, float("inf"))
            for _ in range(args.rounds):
                for side, run in sides.items():
                    started, cpu_started = time.perf_counter(), time.process_time()
                    asyncio.run(run(settings, port))
                    best[side] = min(best[side], time.perf_counter() - started)
                    cpu[side] = min(cpu[side], time.process_time() - cpu_started)
            rate = {side: args.messages / seconds for side, seconds in best.items()}
            row: dict[str, Any] = {"connections": connections, "messages": args.messages}
            for side, value in rate.items():
                row[f"{side}_per_s"] = round(value)
                row[f"{side}_cpu_us"] = round(cpu[side] / args.messages * 1e6)
                if side != "bare":
                    row[f"{side}_ratio"] = round(value / rate["bare"], 3)
            rows.append(row)
    finally:
        server.terminate()
        server.wait(5)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=lambda text: [int(n) for n in text.split(",")],
                        default=[8, 1])
    parser.add_argument("--build-at-send", action="store_true",
                        help="also measure building each message just before its send")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = measure(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    size = len(wire_message(make_payloads(1)[0])[1])
    print(f"{args.messages} messages of {size:,} bytes, best of {args.rounds} rounds")
    extra = args.build_at_send
    print("msg/s: wall clock, best round; CPU: this process (the clients), µs per message")
    print("| conn. | bare msg/s | engine msg/s | engine / bare | bare CPU | engine CPU |"
          + (" build at send msg/s | / bare | CPU |" if extra else ""))
    print("|---|---|---|---|---|---|" + ("---|---|---|" if extra else ""))
    for row in rows:
        line = (f"| {row['connections']} | {row['bare_per_s']:,} | {row['engine_per_s']:,} "
                f"| {row['engine_ratio']:.2f} | {row['bare_cpu_us']} | {row['engine_cpu_us']} |")
        if extra:
            line += (f" {row['build_at_send_per_s']:,} | {row['build_at_send_ratio']:.2f} "
                     f"| {row['build_at_send_cpu_us']} |")
        print(line)
    met = all(row["engine_ratio"] >= 0.8 for row in rows)
    print(f"\ntarget engine >= 80% of bare: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
