"""Three `retain run` processes at once over the same database (a cron that overlaps itself, or two
replicas), on both databases: every enrollment is written once and every email arrives once,
by Message-ID, at a real aiosmtpd (DESIGN 3, RELIABILITY principle 1-2).
"""

from __future__ import annotations

import pytest
from live_support import Mailbox, Project, customer, mailbox, project, purchase, smtp_env
from test_live_crash import retain_process

from engine.store import status as st
from engine.store.tables import actions, customers, enrollments

__all__ = ["mailbox", "project"]  # fixtures
N = 150
PLAYBOOK = """trigger:
  inactive: { days: 30 }
actions:
  - email: { subject: "Hi {{ customer.name }}", body: "Hello. {{ unsubscribe_url }}" }
  - points: { amount: 5, reason: hello }
"""


def test_three_runs_at_once_enroll_and_send_each_thing_once(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    project.playbook("winback", PLAYBOOK)
    names = [f"c{n:03d}" for n in range(N)]
    project.customers(*(customer(cid) for cid in names))
    project.events(*(purchase(f"p{cid}", cid, "2024-03-01T10:00:00Z") for cid in names))
    smtp_env(monkeypatch, mailbox.start().port)
    runs = [retain_process(project.url, "run", "--as-of", "2024-05-01T10:00:00Z",
                           cwd=project.root) for _ in range(3)]
    results = [(p.wait(timeout=120), p.communicate()) for p in runs]
    for code, (out, err) in results:
        assert code == 0, (out.decode() + err.decode())[-2000:]
    assert len(project.rows(enrollments)) == N
    rows = project.rows(actions)
    assert len(rows) == 2 * N
    assert {r["status"] for r in rows} == {st.SENT}
    counts = mailbox.by_message_id()
    assert len(counts) == N and set(counts.values()) == {1}
    balances = {r["customer_id"]: r["points_balance"]
                for r in project.rows(customers)}
    assert set(balances.values()) == {5}
