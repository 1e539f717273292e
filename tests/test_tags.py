"""The `tag` action and playbook tags, on real SQLite and PostgreSQL.

A playbook's tags are kept apart from the customer file's: `apply_tags` (what the dispatcher
runs for a `tag` action's write) changes `tags_added` / `tags_removed`, a re-sync replaces only
`file_tags`, and `tags`, what conditions read, is always (file | added) - removed.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from conftest import Cli
from outbox_support import insert_action, select_actions

from connectors.base import Delivery, Sent, Write
from connectors.tags import TAG_SCHEMA, TagConnector, TagParams, tag_problem
from engine.errors import PermanentError
from engine.format.registry import load_connectors
from engine.format.schema import playbook_schema
from engine.format.validation import load_playbooks
from engine.outbox.tags import apply_tags, merged_tags
from engine.store.tables import customers
from engine.sync.ingest import ingest_customers, sync_customers

SYNCED = datetime(2025, 1, 1, tzinfo=UTC)
LATER = "2025-02-01T00:00:00Z"
Row = dict[str, Any]


def write_csv(folder: Path, text: str, name: str = "customers.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def tagged_db(db: sa.Engine, tmp_path: Path) -> sa.Engine:
    """c1 (vip, active), c2 (active), c3 (no tags) from a customer file."""
    sync_customers(db, write_csv(tmp_path, "customer_id,email,tags\n"
                                           'c1,a@example.com,"vip, active"\n'
                                           "c2,b@example.com,active\n"
                                           "c3,c@example.com,\n"), now=SYNCED)
    return db


def tag_columns(engine: sa.Engine, customer_id: str) -> Row:
    c = customers.c
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(c.tags, c.file_tags, c.tags_added, c.tags_removed)
            .where(c.customer_id == customer_id)).mappings().one()
    return dict(row)


def apply(engine: sa.Engine, customer_id: str, add: list[str], remove: list[str]) -> list[str]:
    with engine.begin() as connection:
        return apply_tags(connection, customer_id, add, remove)


# --- apply_tags ------------------------------------------------------------------------------


def test_a_first_sync_keeps_the_file_tags_apart(tagged_db: sa.Engine) -> None:
    assert tag_columns(tagged_db, "c1") == {"tags": ["vip", "active"],
                                            "file_tags": ["vip", "active"],
                                            "tags_added": [], "tags_removed": []}
    assert tag_columns(tagged_db, "c3")["tags"] == []


def test_apply_adds_and_removes_and_twice_is_once(tagged_db: sa.Engine) -> None:
    assert apply(tagged_db, "c1", ["low-activity"], ["active"]) == ["vip", "low-activity"]
    once = tag_columns(tagged_db, "c1")
    assert once == {"tags": ["vip", "low-activity"], "file_tags": ["vip", "active"],
                    "tags_added": ["low-activity"], "tags_removed": ["active"]}
    assert apply(tagged_db, "c1", ["low-activity"], ["active"]) == ["vip", "low-activity"]
    assert tag_columns(tagged_db, "c1") == once


def test_the_latest_action_about_a_tag_wins(tagged_db: sa.Engine) -> None:
    apply(tagged_db, "c2", ["low-activity"], ["active"])
    apply(tagged_db, "c2", ["active"], ["low-activity"])  # woken up again
    assert tag_columns(tagged_db, "c2") == {"tags": ["active"], "file_tags": ["active"],
                                            "tags_added": ["active"],
                                            "tags_removed": ["low-activity"]}


def test_apply_rolls_back_with_the_outcome(tagged_db: sa.Engine) -> None:
    """The dispatcher applies tags in the outcome's transaction: no outcome, no tags."""
    with tagged_db.connect() as connection:
        apply_tags(connection, "c3", ["low-activity"], [])
        connection.rollback()
    assert tag_columns(tagged_db, "c3")["tags"] == []


def test_apply_names_a_missing_customer_and_refuses_a_contradiction(
        tagged_db: sa.Engine) -> None:
    with pytest.raises(PermanentError, match="customer nobody not found"):
        apply(tagged_db, "nobody", ["x"], [])
    with pytest.raises(ValueError, match="customer c1: x both added and removed"):
        apply(tagged_db, "c1", ["x"], ["x"])


def test_merged_tags_keeps_the_file_order_then_the_added() -> None:
    assert merged_tags(["b", "a"], ["c", "a"], ["b"]) == ["a", "c"]
    assert merged_tags([], [], ["gone"]) == []


# --- sync ------------------------------------------------------------------------------------


def test_a_resync_replaces_the_file_tags_and_keeps_the_playbooks(tagged_db: sa.Engine,
                                                                 tmp_path: Path) -> None:
    apply(tagged_db, "c1", ["low-activity"], ["active"])
    report = sync_customers(tagged_db, write_csv(
        tmp_path, "customer_id,tags\n"
                  'c1,"newsletter, active, vip"\n'  # active again: the playbook's word stands
                  "c2,mobile\n"
                  "c3,low-activity\n", "again.csv"))
    assert (report.updated, report.unchanged) == (3, 0)
    assert tag_columns(tagged_db, "c1") == {
        "tags": ["newsletter", "vip", "low-activity"],
        "file_tags": ["newsletter", "active", "vip"],
        "tags_added": ["low-activity"], "tags_removed": ["active"]}
    assert tag_columns(tagged_db, "c2")["tags"] == ["mobile"]  # never tagged: the file's
    assert tag_columns(tagged_db, "c3")["tags"] == ["low-activity"]


def test_a_resync_that_drops_a_tag_a_playbook_added_keeps_it(tagged_db: sa.Engine,
                                                              tmp_path: Path) -> None:
    apply(tagged_db, "c2", ["vip"], [])
    sync_customers(tagged_db, write_csv(tmp_path, "customer_id,tags\nc2,vip\n", "a.csv"))
    sync_customers(tagged_db, write_csv(tmp_path, "customer_id,tags\nc2,\n", "b.csv"))
    assert tag_columns(tagged_db, "c2") == {"tags": ["vip"], "file_tags": [],
                                            "tags_added": ["vip"], "tags_removed": []}


def test_a_resync_with_the_same_file_tags_is_unchanged(tagged_db: sa.Engine,
                                                       tmp_path: Path) -> None:
    """The file is compared with the file's tags, not with what playbooks made of them."""
    apply(tagged_db, "c1", ["low-activity"], [])
    report = ingest_customers(tagged_db, [(2, {"customer_id": "c1", "tags": "vip, active"})],
                              "rows")
    assert (report.updated, report.unchanged) == (0, 1)
    assert tag_columns(tagged_db, "c1")["tags"] == ["vip", "active", "low-activity"]


def test_a_resync_without_a_tags_column_leaves_every_tag(tagged_db: sa.Engine) -> None:
    apply(tagged_db, "c1", [], ["vip"])
    ingest_customers(tagged_db, [(2, {"customer_id": "c1", "name": "Ada"})], "rows")
    assert tag_columns(tagged_db, "c1")["tags"] == ["active"]


# --- conditions see both -------------------------------------------------------------------

WAKE_UP = """\
id: wake-up
name: Wake up the low-activity pool
trigger:
  segment: {}
when:
  - tags: { contains: low-activity }
actions:
  - email: { subject: "We miss you", body: "Hello" }
"""


def entering(cli: Cli, url: str, folder: Path) -> list[str]:
    code, out, err = cli(["--db", url, "dry-run", str(folder), "--as-of", LATER, "--json"])
    assert (code, err) == (0, ""), err
    (playbook,) = json.loads(out)["playbooks"]
    return [e["customer_id"] for e in playbook["enrollments"]]


def test_a_condition_on_a_playbook_tag_matches_once_applied(
        tagged_db: sa.Engine, db_url: str, cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "wake-up.yaml").write_text(WAKE_UP)
    assert entering(cli, db_url, folder) == []
    apply(tagged_db, "c2", ["low-activity"], [])
    assert entering(cli, db_url, folder) == ["c2"]
    sync_customers(tagged_db, write_csv(tmp_path, "customer_id,tags\nc2,other\n", "b.csv"))
    assert entering(cli, db_url, folder) == ["c2"]  # a re-sync did not take it away


def test_dry_run_shows_what_a_tag_action_would_do(tagged_db: sa.Engine, db_url: str, cli: Cli,
                                                  tmp_path: Path) -> None:
    (tmp_path / "mark.yaml").write_text(
        "id: mark\nname: Mark\ntrigger: { segment: {} }\nwhen:\n  - tags: { contains: vip }\n"
        "actions:\n  - tag: { add: [low-activity], remove: [active] }\n")
    code, out, _ = cli(["--db", db_url, "dry-run", str(tmp_path / "mark.yaml"), "--as-of",
                        LATER, "--json"])
    (enrollment,) = json.loads(out)["playbooks"][0]["enrollments"]
    (action,) = enrollment["actions"]
    assert (code, action["type"], action["status"], action["fields"]) == (
        0, "tag", "planned", {"add": ["low-activity"], "remove": ["active"]})
    code, out, _ = cli(["--db", db_url, "dry-run", str(tmp_path / "mark.yaml"), "--as-of",
                        LATER])
    assert "tag at 2025-02-01 00:00: +low-activity" in out and "│ -active" in out
    assert tag_columns(tagged_db, "c1")["tags_added"] == []  # a dry-run writes nothing


def test_a_committed_tag_action_sends_the_write_that_wakes_another_playbook(
        tagged_db: sa.Engine, db_url: str, cli: Cli, tmp_path: Path) -> None:
    """Commit (`retain run --no-dispatch`), then what the dispatcher does with the row: send
    the frozen payload, apply the write it returns; the wake-up playbook then sees the tag."""
    (tmp_path / "mark.yaml").write_text(
        "id: mark\nname: Mark\ntrigger: { segment: {} }\nwhen:\n  - tags: { contains: vip }\n"
        "actions:\n  - tag: { add: [low-activity], remove: [active] }\n")
    code, out, err = cli(["--db", db_url, "run", str(tmp_path / "mark.yaml"), "--as-of", LATER,
                          "--no-dispatch"])
    assert (code, err) == (0, ""), err
    with tagged_db.connect() as connection:
        (row,) = connection.execute(select_actions()).mappings().all()
    assert (row["customer_id"], row["connector"], dict(row["payload"])) == (
        "c1", "tag", {"add": ["low-activity"], "remove": ["active"]})
    sent = asyncio.run(TagConnector().send(Delivery(
        action_id=row["id"], key=row["idempotency_key"], customer_id=row["customer_id"],
        playbook_id=row["playbook_id"], payload=row["payload"], as_of=SYNCED, attempt=1)))
    with tagged_db.begin() as connection:
        for write in sent.writes:
            assert write.kind == "tags"
            apply_tags(connection, write.values["customer_id"], write.values["add"],
                       write.values["remove"])
    folder = tmp_path / "wake"
    folder.mkdir()
    (folder / "wake-up.yaml").write_text(WAKE_UP)
    assert entering(cli, db_url, folder) == ["c1"]
    assert tag_columns(tagged_db, "c1")["tags"] == ["vip", "low-activity"]


# --- customer show -------------------------------------------------------------------------


def test_customer_show_lists_file_and_playbook_tags_apart(tagged_db: sa.Engine, db_url: str,
                                                          cli: Cli) -> None:
    apply(tagged_db, "c1", ["low-activity"], ["active"])
    code, out, _ = cli(["--db", db_url, "customer", "show", "c1", "--json"])
    profile = json.loads(out)["customer"]
    assert {k: profile[k] for k in ("tags", "file_tags", "tags_added", "tags_removed")} == {
        "tags": ["vip", "low-activity"], "file_tags": ["vip", "active"],
        "tags_added": ["low-activity"], "tags_removed": ["active"]}
    code, out, _ = cli(["--db", db_url, "customer", "show", "c1"])
    assert code == 0
    assert "vip, active; by playbooks: +low-activity -active" in out
    assert "file_tags" not in out
    code, out, _ = cli(["--db", db_url, "customer", "show", "c2"])
    assert "by playbooks" not in out
    apply(tagged_db, "c3", ["low-activity"], [])
    code, out, _ = cli(["--db", db_url, "customer", "show", "c3"])
    assert "none from the file; by playbooks: +low-activity" in out


def test_customer_show_summarises_a_tag_action(tagged_db: sa.Engine, db_url: str,
                                               cli: Cli) -> None:
    with tagged_db.begin() as connection:
        insert_action(
            connection, playbook_id="mark", customer_id="c1", connector="tag", status="sent",
            payload={"add": ["low-activity"], "remove": ["active"]}, idempotency_key="k1",
            created_at=SYNCED)
    code, out, _ = cli(["--db", db_url, "customer", "show", "c1", "--json"])
    (action,) = json.loads(out)["actions"]
    assert (action["connector"], action["summary"]) == ("tag", "+low-activity -active")
    assert "tag_payload" not in action


# --- the connector -------------------------------------------------------------------------


def test_the_connector_comes_through_the_entry_points() -> None:
    assert load_connectors()["tag"] is TagConnector
    assert load_connectors(installed=False).get("tag") is None


def test_send_returns_the_write_for_the_dispatcher() -> None:
    delivery = Delivery(action_id=7, key="mark/c1/0.0/k", customer_id="c1", playbook_id="mark",
                        payload={"add": ["low-activity"], "remove": ["active"]},
                        as_of=SYNCED, attempt=1)
    sent = asyncio.run(TagConnector().send(delivery))
    assert sent == Sent(detail="+low-activity -active", writes=(Write("tags", {
        "customer_id": "c1", "add": ["low-activity"], "remove": ["active"]}),))


def test_send_refuses_a_payload_without_tags() -> None:
    delivery = Delivery(action_id=7, key="k", customer_id="c1", playbook_id="mark",
                        payload={"add": []}, as_of=SYNCED, attempt=1)
    with pytest.raises(PermanentError, match="action 7: the tag payload has no tags"):
        asyncio.run(TagConnector().send(delivery))


@pytest.mark.parametrize(("tag", "problem"), [
    ("low-activity", None), ("big spender", None), ("x", None), ("a" * 100, None),
    ("a" * 101, "is longer than 100 characters"), ("", "cannot be empty"),
    ("tab\there", "control character"), ("new\nline", "control character"),
    ("trailing\n", "starts or ends with a space"), ("{% if %}", "looks like a template"),
])
def test_a_tag_is_a_plain_name(tag: str, problem: str | None) -> None:
    found = tag_problem(tag)
    assert found is None if problem is None else problem in (found or "")
    schema_ok = not list(jsonschema.Draft202012Validator(TAG_SCHEMA).iter_errors(tag))
    assert schema_ok == (problem is None)


def test_plan_and_payload_are_the_tags() -> None:
    params = TagParams.model_validate({"remove": ["active"]})
    planned = TagConnector().plan(params, lambda *a, **k: "", lambda name: None, SYNCED)
    assert planned == {"add": [], "remove": ["active"]}


BAD = """\
id: bad-tags
name: Bad tags
trigger:
  segment: {}
actions:
  - tag:
      add: [low-activity, "{{ customer.name }}"]
  - tag: {}
  - tag: { add: [vip], remove: [vip] }
  - tag: { remove: ["big, spender", " padded"] }
  - tag: { add: [x, x] }
  - tag: { add: low-activity }
  - tag: { add: [ok], colour: red }
"""


def test_validate_names_every_bad_tag_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad-tags.yaml"
    path.write_text(BAD)
    result = load_playbooks([path], env={})
    lines = sorted(str(issue) for issue in result.issues)
    f = str(path)
    assert lines == sorted([
        f"{f}:10:21: actions[3].tag.remove[0]: tag 'big, spender' has a comma, which separates"
        " tags in a customer file",
        f"{f}:10:37: actions[3].tag.remove[1]: tag ' padded' starts or ends with a space",
        f"{f}:11:17: actions[4].tag.add: 'x' given twice, got ['x', 'x']",
        f"{f}:12:17: actions[5].tag.add: Input should be a valid list, got 'low-activity'",
        f"{f}:13:23: actions[6].tag.colour: unknown key 'colour' (expected one of: add,"
        " remove)",
        f"{f}:7:27: actions[0].tag.add[1]: tag '{{{{ customer.name }}}}' looks like a template;"
        " tags are plain names",
        f"{f}:8:10: actions[1].tag: tag needs a tag to add or to remove, got {{}}",
        f"{f}:9:10: actions[2].tag: 'vip' is both added and removed, got {{'add': ['vip'],"
        " 'remove': ['vip']}",
    ])


@pytest.mark.parametrize("params", [
    {}, {"add": []}, {"add": ["{{ x }}"]}, {"add": ["a,b"]}, {"remove": [" x"]},
    {"add": ["x", "x"]}, {"add": "x"}, {"add": ["ok"], "colour": "red"},
])
def test_the_schema_rejects_bad_tag_params(params: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(playbook_schema())
    playbook = {"id": "x", "name": "x", "trigger": {"segment": {}}, "actions": [{"tag": params}]}
    assert list(validator.iter_errors(playbook))
    good = {**playbook, "actions": [{"tag": {"add": ["big spender"], "remove": ["active"]}}]}
    assert list(validator.iter_errors(good)) == []


def test_a_tag_applied_while_a_sync_runs_is_kept(tagged_db: sa.Engine, tmp_path: Path) -> None:
    """Sync merges with the playbook tags stored when it writes, not those it read before: an
    action that commits in between (its row lock held while sync reads) is not overwritten."""
    path = write_csv(tmp_path, "customer_id,tags\nc1,newsletter\n", "again.csv")
    failed: list[BaseException] = []

    def sync() -> None:
        try:
            sync_customers(tagged_db, path)
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            failed.append(exc)

    with tagged_db.connect() as action:
        apply_tags(action, "c1", ["low-activity"], [])  # the dispatcher's open transaction
        syncing = threading.Thread(target=sync)
        syncing.start()
        syncing.join(1.0)  # sync reads c1 and waits for the row
        assert syncing.is_alive()
        action.commit()
    syncing.join(30)
    assert failed == []
    assert tag_columns(tagged_db, "c1") == {"tags": ["newsletter", "low-activity"],
                                            "file_tags": ["newsletter"],
                                            "tags_added": ["low-activity"], "tags_removed": []}
