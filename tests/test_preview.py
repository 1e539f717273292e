"""`retain preview`: the whole message from the sample playbooks and templates, parsed back.

The sample playbooks (playbooks/) and templates (playbooks/templates) on hand-made data through
sync, on both databases; every message is read back from its wire text (`raw` in --json) with the
email package, so what is asserted is what a mail server would receive.
"""

from __future__ import annotations

import json
from datetime import timedelta
from email import message_from_string, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import REPO, Cli
from test_evaluate_triggers import AS_OF, add_customers, add_events, ago, customer

from connectors.email import PLACEHOLDER_FROM, message_id
from engine.clock import iso
from engine.plan.planner import UNSUBSCRIBE_URL, action_key
from engine.plan.preview import NOT_ENTERING
from engine.query.checks import load_valid_playbooks

SAMPLES = REPO / "playbooks"


@pytest.fixture
def shop(db: sa.Engine) -> sa.Engine:
    """ann (a name that HTML must escape) bought first 2 hours ago; bob has bought nothing; cy
    has no address; dee gave a detractor score an hour ago (made-up NPS data)."""
    add_customers(db, customer("ann", email="ann@example.com", name="Ann <O'Neil> & Co"),
                  customer("bob", email="bob@example.com", name="Bob"),
                  customer("cy", name="Cy"),
                  customer("dee", email="dee@example.com", name="Dee"))
    add_events(db, ("p-ann", "ann", "purchase", ago(hours=2), {"amount": 10.42}),
               ("p-ann2", "ann", "purchase", ago(hours=1), {"amount": 145.26}),
               ("fb-dee", "dee", "feedback", ago(hours=1), {"score": 3}))
    return db


def run_preview(cli: Cli, db_url: str, *args: str) -> tuple[int, str, str]:
    return cli(["--db", db_url, "preview", *args, "--playbooks", str(SAMPLES),
                "--as-of", iso(AS_OF)])


def preview_json(cli: Cli, db_url: str, *args: str) -> dict[str, Any]:
    code, out, err = run_preview(cli, db_url, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def parsed(document: dict[str, Any]) -> EmailMessage:
    message = message_from_string(document["message"]["raw"], policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_welcome_email_headers_and_parts(shop: sa.Engine, db_url: str, cli: Cli) -> None:
    document = preview_json(cli, db_url, "welcome-series", "ann")
    assert (document["step"], document["type"], document["enters"]) == (0, "email", True)
    assert document["occurrence"] == "p-ann" and document["notes"] == []
    message = parsed(document)
    assert message["Subject"] == "Welcome, Ann <O'Neil> & Co: thank you for your first order"
    assert message["To"].addresses[0].addr_spec == "ann@example.com"
    assert message["To"].addresses[0].display_name == "Ann <O'Neil> & Co"
    assert str(message["From"]) == PLACEHOLDER_FROM
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE_URL}>"
    assert f"List-Unsubscribe: <{UNSUBSCRIBE_URL}>" in document["message"]["raw"].splitlines()
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    (pb,) = load_valid_playbooks([SAMPLES / "welcome-series.yaml"])
    key = action_key(pb, "ann", "p-ann", 0, 0)
    assert message["Message-ID"] == message_id(key, PLACEHOLDER_FROM)
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    assert "Hello Ann <O'Neil> & Co," in text.get_content()  # type: ignore[attr-defined]
    html_text = html.get_content()  # type: ignore[attr-defined]
    assert "Hello Ann &lt;O&#39;Neil&gt; &amp; Co," in html_text
    assert f'<a href="{UNSUBSCRIBE_URL}">' in html_text
    assert document["message"]["html"] == html_text


def test_the_message_id_is_the_same_on_every_preview(shop: sa.Engine, db_url: str,
                                                     cli: Cli) -> None:
    first = parsed(preview_json(cli, db_url, "welcome-series", "ann"))["Message-ID"]
    again = parsed(preview_json(cli, db_url, "welcome-series", "ann"))["Message-ID"]
    other = parsed(preview_json(cli, db_url, "welcome-series", "ann", "--step", "2"))
    assert first == again != other["Message-ID"]


def test_later_steps_text_only_and_inline(shop: sa.Engine, db_url: str, cli: Cli) -> None:
    guide = preview_json(cli, db_url, "welcome-series", "ann", "--step", "2")
    assert guide["due_at"] == iso(AS_OF + timedelta(days=3))
    message = parsed(guide)
    assert message.get_content_type() == "text/plain" and guide["message"]["html"] is None
    assert "three tips" in message.get_content()
    inline = parsed(preview_json(cli, db_url, "welcome-series", "ann", "--step", "4"))
    assert inline["Subject"] == "How is it going, Ann <O'Neil> & Co?"
    assert "a week ago you placed your first order" in inline.get_content()


def test_a_wait_or_missing_step_is_exit_1(shop: sa.Engine, db_url: str, cli: Cli) -> None:
    code, _, err = run_preview(cli, db_url, "welcome-series", "ann", "--step", "1")
    assert code == 1 and "actions[1] is a wait" in err and "0 (email), 2 (email)" in err
    code, _, err = run_preview(cli, db_url, "welcome-series", "ann", "--step", "9")
    assert code == 1 and "actions[9] is not a step" in err


def test_text_output_and_html_file(shop: sa.Engine, db_url: str, cli: Cli,
                                   tmp_path: Path) -> None:
    target = tmp_path / "welcome.html"
    code, out, err = run_preview(cli, db_url, "welcome-series", "ann", "--html", str(target))
    assert code == 0 and err == ""
    assert "Subject: Welcome, Ann <O'Neil> & Co: thank you for your first order" in out
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in out
    assert "--- text part ---" in out and "--- html part ---" in out
    assert "Hello Ann &lt;O&#39;Neil&gt; &amp; Co," in target.read_text(encoding="utf-8")
    assert max(len(line) for line in out.splitlines()[:1]) <= 80


def test_a_customer_who_would_not_enter_is_previewed_with_a_note(
        shop: sa.Engine, db_url: str, cli: Cli) -> None:
    code, out, err = run_preview(cli, db_url, "welcome-series", "bob")
    assert code == 0 and "Subject: Welcome, Bob" in out
    assert "note: customer bob would not enter welcome-series" in err
    document = preview_json(cli, db_url, "welcome-series", "bob")
    assert document["enters"] is False and document["occurrence"] is None


def test_no_address_is_said(shop: sa.Engine, db_url: str, cli: Cli) -> None:
    document = preview_json(cli, db_url, "welcome-series", "cy")
    assert parsed(document)["To"] is None
    assert any("no email address" in note for note in document["notes"])


def test_other_kinds_show_their_payload_and_event_values(shop: sa.Engine, db_url: str,
                                                         cli: Cli) -> None:
    task = preview_json(cli, db_url, "negative-feedback", "dee", "--step", "0")
    assert task["type"] == "task" and "message" not in task
    assert task["payload"]["title"] == "Follow up with Dee: feedback score 3"
    email = parsed(preview_json(cli, db_url, "negative-feedback", "dee"))
    assert email["Subject"] == "We are sorry, Dee"


def test_unknown_playbook_or_customer_is_exit_1(shop: sa.Engine, db_url: str,
                                                cli: Cli) -> None:
    code, _, err = run_preview(cli, db_url, "welcome-serie", "ann")
    assert code == 1 and "playbook 'welcome-serie' not found" in err and "welcome-series" in err
    code, _, err = run_preview(cli, db_url, "welcome-series", "zed")
    assert code == 1 and "customer 'zed' not found" in err


def test_a_header_breaking_name_is_refused_naming_customer_and_action(
        db: sa.Engine, db_url: str, cli: Cli) -> None:
    add_customers(db, customer("evil", email="e@example.com", name="Eve\r\nBcc: x@example.com"))
    code, out, err = run_preview(cli, db_url, "welcome-series", "evil")
    assert code == 1 and "customer evil, actions[0].email" in err and "Bcc" not in out


# --- preview and dry-run: one planner ---------------------------------------------------------


def dry_run_json(cli: Cli, db_url: str, *paths: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli(["--db", db_url, "dry-run", *(paths or (str(SAMPLES),)), "--json",
                          "--as-of", iso(AS_OF)])
    return code, json.loads(out), err


def planned_actions(document: dict[str, Any], playbook: str) -> dict[str, dict[str, Any]]:
    """Each action of `playbook` in a dry-run --json document, by customer and step."""
    (part,) = [p for p in document["playbooks"] if p["id"] == playbook]
    return {f"{e['customer_id']}/{a['step']}": a for e in part["enrollments"]
            for a in e["actions"]}


def fields(action: dict[str, Any]) -> dict[str, Any]:
    """An action's rendered fields (nested under "fields" or beside key and status)."""
    return action.get("fields", action)


def test_preview_takes_key_due_time_and_status_from_the_plan(
        shop: sa.Engine, db_url: str, cli: Cli, tmp_path: Path) -> None:
    """The same planner decides both: for every action of ann's welcome series and dee's
    negative feedback, preview shows the dry-run's key, due time and status (suppressed too)."""
    path = tmp_path / "suppressed.csv"
    path.write_text("email,reason\nANN@example.com,unsubscribed\n", encoding="utf-8")
    code, _, err = cli(["--db", db_url, "sync", "suppressions", str(path)])
    assert code == 0, err
    code, document, err = dry_run_json(cli, db_url)
    assert code == 0, err
    for playbook, person, steps in (("welcome-series", "ann", (0, 2, 4)),
                                    ("negative-feedback", "dee", (0, 1))):
        plan = planned_actions(document, playbook)
        for step in steps:
            shown = preview_json(cli, db_url, playbook, person, "--step", str(step))
            action = plan[f"{person}/{step}"]
            assert (shown["key"], shown["due_at"], shown["status"], shown["reason"]) == (
                action["key"], action["run_at"], action["status"], action.get("reason"))
            if shown["type"] == "task":  # one template context: the same rendered fields
                assert shown["payload"]["title"] == fields(action)["title"]
    ann = preview_json(cli, db_url, "welcome-series", "ann")
    assert ann["status"] == "suppressed"
    assert "address is suppressed (unsubscribed): a run would not send this" in ann["notes"]


def test_a_customer_who_would_not_enter_gets_no_made_up_message_id(
        shop: sa.Engine, db_url: str, cli: Cli) -> None:
    document = preview_json(cli, db_url, "welcome-series", "bob")
    assert document["enters"] is False and document["key"] == NOT_ENTERING
    assert ["Message-ID", NOT_ENTERING] in document["message"]["headers"]
    assert parsed(document)["Message-ID"] is None  # the wire text carries none
    code, out, _ = run_preview(cli, db_url, "welcome-series", "bob")
    assert code == 0
    assert "Message-ID: (none: this customer would not enter now)" in out.splitlines()


AVERAGE = "Avg {{ customer.total_spent / (customer.purchase_count - 1) }}"


@pytest.mark.parametrize("body", ["inline", "file"])
def test_dry_run_renders_the_body_and_fails_for_whom_it_fails(
        db: sa.Engine, db_url: str, cli: Cli, tmp_path: Path, body: str) -> None:
    """A body that divides by zero for a one-time buyer: the dry-run says so for that customer
    and exits 1, as the live send would have failed; preview fails with the same words."""
    add_customers(db, customer("ann", email="ann@example.com", name="Ann"),
                  customer("bob", email="bob@example.com", name="Bob"))
    add_events(db, ("p1", "ann", "purchase", ago(days=3), {"amount": 10.0}),
               ("p2", "ann", "purchase", ago(days=2), {"amount": 20.0}),
               ("p3", "bob", "purchase", ago(days=2), {"amount": 30.0}))
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "avg.txt.j2").write_text(f"Hi,\n{AVERAGE}\n", encoding="utf-8")
    source = f'body: "{AVERAGE}"' if body == "inline" else "template: avg"
    (tmp_path / "avg.yaml").write_text(
        "id: avg\nname: Average\ntrigger:\n  segment: {}\nactions:\n"
        f'  - email: {{ subject: "Hello {{{{ customer.name }}}}", {source} }}\n', encoding="utf-8")
    code, document, err = dry_run_json(cli, db_url, str(tmp_path / "avg.yaml"))
    plan = planned_actions(document, "avg")
    assert code == 1 and plan["ann/0"]["status"] == "planned"
    assert fields(plan["ann/0"])["subject"] == "Hello Ann"
    where = "customer bob, actions[0].email: "
    located = f"{tmp_path / 'templates' / 'avg.txt.j2'}:2: " if body == "file" else ""
    reason = f"{where}{located}cannot render: float division by zero"
    assert plan["bob/0"]["status"] == "dead" and plan["bob/0"]["reason"] == reason
    assert err.splitlines() == [f"avg: {reason}"]
    code, _, err = cli(["--db", db_url, "dry-run", str(tmp_path / "avg.yaml"),
                        "--as-of", iso(AS_OF)])
    assert code == 1 and f"avg: {reason}" in err.replace("\n", "")  # folded at 80 columns
    code, _, err = cli(["--db", db_url, "preview", "avg", "bob", "--playbooks",
                        str(tmp_path / "avg.yaml"), "--as-of", iso(AS_OF)])
    assert code == 1 and reason in err
