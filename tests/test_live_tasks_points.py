"""Tasks and points through `retain run`, exactly once, on both databases (RELIABILITY 2's
in-database half, DESIGN 2.4): ledger rows and `points_balance` kept in one transaction, a
`points_awarded` event at the business time that another playbook enrolls on in the next run,
and `retain tasks list/done` on what the run created.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from live_support import Project, customer, project, purchase

from engine.store import status as st
from engine.store.tables import actions, customers, enrollments, events, points, tasks

__all__ = ["project"]  # fixture
T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:05:00Z"
REWARD = """priority: 20
trigger:
  event: { type: purchase }
reentry: always
actions:
  - points: { amount: 10, reason: purchase }
  - task: { title: "Thank {{ customer.name }}", assignee: sales, due_in: 2d }
"""
MILESTONE = """trigger:
  event: { type: points_awarded }
reentry: always
actions:
  - task: { title: "Points for {{ customer.name }}", assignee: loyalty }
"""


def balances(project: Project) -> dict[str, int]:
    return {row["customer_id"]: row["points_balance"] for row in project.rows(customers)}


def test_points_and_tasks_once_and_points_awarded_wakes_another_playbook(
        project: Project) -> None:
    project.playbook("reward", REWARD)
    project.playbook("milestone", MILESTONE)
    project.customers(customer("ann"), customer("bob"), customer("cy"))
    project.events(purchase("p1", "ann", "2024-05-01T09:00:00Z"),
                   purchase("p2", "ann", "2024-05-01T09:30:00Z"),
                   purchase("p3", "bob", "2024-05-01T08:00:00Z"))

    first = {line["id"]: line for line in project.json("run", "--as-of", T0)["playbooks"]}
    assert first["reward"]["entered"] == 3
    assert first["reward"]["dispatched"] == {st.SENT: 6}
    assert first["milestone"]["entered"] == 0  # no points_awarded before this run's dispatch
    ledger = project.rows(points)
    assert sorted((p["customer_id"], p["amount"], p["reason"]) for p in ledger) == [
        ("ann", 10, "purchase"), ("ann", 10, "purchase"), ("bob", 10, "purchase")]
    assert balances(project) == {"ann": 20, "bob": 10, "cy": 0}
    made = project.rows(tasks)
    assert sorted((t["customer_id"], t["title"], t["assignee"]) for t in made) == [
        ("ann", "Thank Ann", "sales"), ("ann", "Thank Ann", "sales"), ("bob", "Thank Bob", "sales")]
    due = datetime(2024, 5, 3, 10, 0, tzinfo=UTC)
    assert {t["due_at"].astimezone(UTC) for t in made} == {due}
    awarded = project.rows(events, events.c.type == "points_awarded")
    assert len(awarded) == 3
    assert {e["occurred_at"].astimezone(UTC) for e in awarded} == {
        datetime(2024, 5, 1, 10, 0, tzinfo=UTC)}  # the business time, not the wall clock

    # the next run (at once, or later) enrolls the milestone playbook on those events; the
    # reward playbook has nothing new: no ledger line, task or balance changes twice
    later = {line["id"]: line for line in project.json("run", "--as-of", T0)["playbooks"]}
    assert later["milestone"]["entered"] == 3  # one per points_awarded event
    assert (later["reward"]["entered"], later["reward"]["dispatched"]) == (0, {})
    milestone = [t for t in project.rows(tasks) if t["playbook_id"] == "milestone"]
    assert sorted(t["customer_id"] for t in milestone) == ["ann", "ann", "bob"]
    assert {e["event_id"] for e in project.rows(enrollments, enrollments.c.playbook_id
                                                == "milestone")} == {
        e["event_id"] for e in awarded}
    assert len(project.rows(points)) == 3 and len(project.rows(tasks)) == 6
    assert balances(project) == {"ann": 20, "bob": 10, "cy": 0}
    for moment in (T0, T1):  # then nothing is new, at once or a little later
        again = project.json("run", "--as-of", moment)
        assert all(line["entered"] == 0 and not line["dispatched"]
                   for line in again["playbooks"])
    assert len(project.rows(points)) == 3 and len(project.rows(tasks)) == 6
    assert {a["status"] for a in project.rows(actions)} == {st.SENT}


def test_tasks_list_and_done(project: Project) -> None:
    project.playbook("reward", REWARD)
    project.customers(customer("ann"), customer("bob"))
    project.events(purchase("p1", "ann", "2024-05-01T09:00:00Z"),
                   purchase("p3", "bob", "2024-05-01T08:00:00Z"))
    project.retain("run", "--as-of", T0)
    listed = project.json("tasks", "list", "--assignee", "sales")
    assert sorted(t["customer_id"] for t in listed["tasks"]) == ["ann", "bob"]
    assert project.json("tasks", "list", "--assignee", "nobody")["tasks"] == []
    _, text, _ = project.retain("tasks", "list")
    assert "Thank Ann" in text and "Thank Bob" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    ann = next(t for t in listed["tasks"] if t["customer_id"] == "ann")
    project.retain("tasks", "done", str(ann["id"]))
    still = project.json("tasks", "list", "--open")
    assert [t["customer_id"] for t in still["tasks"]] == ["bob"]
    closed = next(t for t in project.rows(tasks) if t["id"] == ann["id"])
    assert closed["status"] == st.TASK_DONE and closed["done_at"] is not None
    code, _, err = project.retain("tasks", "done", "9999", ok=False)
    assert code == 1 and "9999" in err
    with project.db().connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() == 2
