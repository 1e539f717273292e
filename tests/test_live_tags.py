"""The tag action through `retain run`, on both databases (docs/PLAYBOOKS.md "Tags"): one
playbook moves inactive customers into the low-activity pool, the next run starts the wake-up
playbook for them; a later `retain sync customers` replaces the file's tags and keeps the
playbook's; `customer show` shows both apart. And the `limits` brake, said with its numbers.
"""

from __future__ import annotations

from live_support import Project, customer, project, purchase

from engine.store import status as st
from engine.store.tables import actions, customers, enrollments, tasks

__all__ = ["project"]  # fixture
MARK = """priority: 50
trigger:
  inactive: { days: 60 }
actions:
  - tag: { add: [low-activity], remove: [active] }
"""
WAKE = """trigger:
  segment: {}
when:
  - tags: { contains: low-activity }
actions:
  - task: { title: "Wake up {{ customer.name }}", assignee: retention }
"""


def test_a_tag_moves_customers_into_a_pool_another_playbook_selects(project: Project) -> None:
    project.playbook("mark-low-activity", MARK)
    project.playbook("wake-up", WAKE)
    project.customers(customer("ann", tags="active, newsletter"),
                      customer("bob", tags="active"))
    project.events(purchase("p-ann", "ann", "2024-01-01T10:00:00Z"),
                   purchase("p-bob", "bob", "2024-04-25T10:00:00Z"))
    first = {p["id"]: p for p in project.json("run", "--as-of", "2024-05-01T10:00:00Z")[
        "playbooks"]}
    assert first["mark-low-activity"]["dispatched"] == {st.SENT: 1}
    tags = {r["customer_id"]: sorted(r["tags"]) for r in project.rows(customers)}
    assert tags == {"ann": ["low-activity", "newsletter"], "bob": ["active"]}

    second = {p["id"]: p for p in project.json("run", "--as-of", "2024-05-01T10:05:00Z")[
        "playbooks"]}
    assert second["wake-up"]["entered"] == 1
    assert [(t["customer_id"], t["title"]) for t in project.rows(tasks)] == [
        ("ann", "Wake up Ann")]

    # the file's tags change; the playbook's add and remove stay
    project.customers(customer("ann", tags="active, vip"), customer("bob", tags="active"),
                      name="again.csv")
    (ann,) = project.rows(customers, customers.c.customer_id == "ann")
    assert sorted(ann["tags"]) == ["low-activity", "vip"]
    shown = project.json("customer", "show", "ann")["customer"]
    assert sorted(shown["file_tags"]) == ["active", "vip"]
    assert shown["tags_added"] == ["low-activity"] and shown["tags_removed"] == ["active"]
    third = {p["id"]: p for p in project.json("run", "--as-of", "2024-05-02T10:00:00Z")[
        "playbooks"]}
    assert third["wake-up"]["entered"] == 0 and third["mark-low-activity"]["entered"] == 0
    assert len(project.rows(actions)) == 2


def test_over_its_limits_a_playbook_enrolls_no_one_and_says_why(project: Project) -> None:
    project.playbook("wake-up", "limits: { max_enrollments: 2 }\n" + WAKE)
    project.customers(*(customer(cid, tags="low-activity") for cid in ("ann", "bob", "cy")))
    _, text, _ = project.retain("run", "--as-of", "2024-05-01T10:00:00Z")
    said = " ".join(text.split())
    assert "wake-up" in said and "max_enrollments 2" in said and "3" in said
    assert project.rows(enrollments) == [] and project.rows(actions) == []
    line = project.json("run", "--as-of", "2024-05-01T10:00:00Z")["playbooks"][0]
    assert "max_enrollments 2" in line["over_limit"] and line["entered"] == 0
