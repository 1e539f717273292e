"""Fixes to `retain test` found while writing the sample playbooks' tests (playbooks/tests/)."""

from __future__ import annotations

from pathlib import Path

from conftest import Cli

POINTS = """\
id: points
name: Points for a purchase
trigger:
  event: { type: purchase }
actions:
  - points: { amount: 10, reason: purchase bonus }
"""

POINTS_TEST = """\
playbooks: [points]
customers:
  - { customer_id: ana, name: Ana }
events:
  - { customer_id: ana, type: purchase, at: -1h, amount: 5 }
tests:
  - name: the points reason
    steps:
      - run
      - expect:
          sent:
            - points: { customer: ana, amount: 10, reason: REASON }
"""


def _passes_then_fails(cli: Cli, tmp_path: Path, playbook: str, test: str, mark: str,
                       right: str, wrong: str) -> str:
    """`retain test` passes with `mark` in the test file replaced by `right`, and fails with
    it replaced by `wrong`; the output of the failing run."""
    path = _folder(tmp_path, playbook, test.replace(mark, right))
    code, out, _ = cli(["test", str(path)])
    assert code == 0, out
    path.write_text(test.replace(mark, wrong))
    code, out, _ = cli(["test", str(path)])
    assert code == 1
    return out


def _folder(tmp_path: Path, playbook: str, test: str) -> Path:
    (tmp_path / "playbook.yaml").write_text(playbook)
    (tmp_path / "tests").mkdir()
    path = tmp_path / "tests" / "playbook.test.yaml"
    path.write_text(test)
    return path


def test_a_points_actions_reason_is_its_payloads(cli: Cli, tmp_path: Path) -> None:
    """`reason` of a points action is the payload's reason (what the customer's ledger says),
    not the outbox's empty why-not-sent, which used to hide it."""
    out = _passes_then_fails(cli, tmp_path, POINTS, POINTS_TEST, "REASON", '"bonus"', '"birthday"')
    assert "reason: wanted 'birthday'" in out and "got    'purchase bonus'" in out


GREETING = """\
id: greeting
name: A greeting on sign-up
trigger:
  event: { type: signup }
actions:
  - email:
      subject: "Hello"
      body: |
        Dear {{ customer.name }},

        welcome.

        Unsubscribe: {{ unsubscribe_url }}
"""

GREETING_TEST = """\
playbooks: [greeting]
customers:
  - { customer_id: ana, name: Ana, email: ana@example.com }
events:
  - { customer_id: ana, type: signup, at: -1h }
tests:
  - name: the body over two paragraphs
    steps:
      - run
      - expect:
          sent:
            - email: { customer: ana, text: "Dear Ana,\\n\\nWORD." }
"""


def test_an_emails_text_has_the_templates_line_ends(cli: Cli, tmp_path: Path) -> None:
    """`text` spanning lines matches as the template wrote it (\\n), not as the message is
    encoded on the wire (CRLF), which no test file could match before."""
    out = _passes_then_fails(cli, tmp_path, GREETING, GREETING_TEST, "WORD", "welcome", "goodbye")
    assert "text: wanted 'Dear Ana,\\n\\ngoodbye.'" in out


NIGHT_TEST = """\
playbooks: [greeting]
start: 2026-01-05T23:00:00Z
settings:
  quiet_hours: { email: "21:00-08:00" }
customers:
  - { customer_id: ana, name: Ana, email: ana@example.com }
events:
  - { customer_id: ana, type: signup, at: -1h }
tests:
  - name: deferred, then deferred again
    steps:
      - run
      - expect:
          due: [{ email: { customer: ana, at: +9h } }]
      - advance: 1d                  # the next run is at night again
      - run
      - expect:
          due: [{ email: { customer: ana, at: AT } }]
"""


def test_an_action_deferred_again_is_due_in_that_run(cli: Cli, tmp_path: Path) -> None:
    """A run that moves a deferred action to a later time (quiet hours again) moved it on:
    `due` sees it with its new time (only status changes were seen before)."""
    out = _passes_then_fails(cli, tmp_path, GREETING, NIGHT_TEST, "AT", "+9h", "+10h")
    assert "at: wanted" in out and "2026-01-07T09:00:00Z" in out
    assert "got    2026-01-07T08:00:00Z" in out


NO_ADDRESS_TEST = """\
playbooks: [greeting]
customers:
  - { customer_id: ana, name: Ana }
events:
  - { customer_id: ana, type: signup, at: -1h }
tests:
  - name: no address
    steps:
      - run
      - expect:
          KEY: [{ email: { customer: ana } }]
"""


def test_an_action_wanted_under_another_key_says_what_became_of_it(cli: Cli,
                                                                    tmp_path: Path) -> None:
    """`sent: [email to ana]` when the run skipped it says so, with the reason: before, the
    message was only "wanted, not sent"."""
    out = _passes_then_fails(cli, tmp_path, GREETING, NO_ADDRESS_TEST, "KEY", "skipped", "sent")
    assert "wanted, not sent: email to ana\n      the run made it skipped (no email address)\n" \
        in out


HOOK = """\
id: hook
name: Tell the CRM about a sign-up
trigger:
  event: { type: signup }
actions:
  - webhook:
      url: "https://crm.invalid/signups"
      body: { who: "{{ customer.name }}" }
"""

HOOK_TEST = """\
playbooks: [hook]
customers:
  - { customer_id: ana, name: Ana }
events:
  - { customer_id: ana, type: signup, at: -1h }
tests:
  - name: the sign-up is posted
    steps:
      - run
      - expect:
          sent:
            - webhook: { customer: ana, url: "https://crm.invalid/signups", body: BODY }
"""


def test_a_webhook_is_sent_over_the_recording_transport(cli: Cli,
                                                        tmp_path: Path) -> None:
    """The webhook connector runs as it is (rendered, signed, its answer judged) over a
    transport that records: a host that does not resolve is still `sent`. Had the request
    gone to the network, it would be retrying and the test would fail."""
    out = _passes_then_fails(cli, tmp_path, HOOK, HOOK_TEST, "BODY", '{ who: Ana }', '{ who: Ben }')
    assert "body: wanted {'who': 'Ben'}" in out and "got    {'who': 'Ana'}" in out
