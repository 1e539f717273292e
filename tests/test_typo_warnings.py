"""Typos that select nothing: event types and properties the synced data never had are warned
of, with a did-you-mean, at file:line:column (engine/format/references.py, query/vocabulary.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Cli

from engine.format.references import Vocabulary, references, unseen
from engine.format.validation import load_valid_playbooks
from engine.query import vocabulary
from engine.query.vocabulary import read_vocabulary, typo_warnings
from engine.sync.ingest import ingest_customers, ingest_events

TYPOS = """\
id: typos
name: Typos
trigger:
  event:
    type: suport_ticket
    where:
      - priorty: { eq: high }
when:
  - events: { type: purchse, count: { gte: 1 } }
  - events: { type: purchase, sum: { field: amout, gt: 10 } }
goal: { event: purchase, within: 14d }
actions:
  - task: { title: "Call {{ customer.name }}" }
"""
CLEAN = """\
id: clean
name: Clean
trigger:
  event:
    type: support_ticket
    where:
      - priority: { eq: high }
      - channel: { eq: phone }
when:
  - events: { sum: { field: amount, gt: 10 } }
  - events: { sum: { field: coupon, gt: 0 } }
actions:
  - task: { title: "Call {{ customer.name }}" }
"""
INACTIVE = """\
id: lapsed
name: Lapsed
trigger:
  inactive: { days: 30, activity: [purchase, logn] }
actions:
  - task: { title: "Call {{ customer.name }}" }
"""


def load(tmp_path: Path, *texts: str) -> list:  # type: ignore[type-arg]
    for index, text in enumerate(texts):
        (tmp_path / f"p{index}.yaml").write_text(text, encoding="utf-8")
    return load_valid_playbooks([tmp_path], env={})


SYNCED = Vocabulary(frozenset({"purchase", "support_ticket", "login"}),
                    {"support_ticket": frozenset({"priority", "channel"}),
                     "purchase": frozenset({"coupon"})})


def test_each_unseen_name_is_warned_with_a_did_you_mean(tmp_path: Path) -> None:
    [playbook] = load(tmp_path, TYPOS)
    found = [(problem.path, problem.message) for problem in unseen(references(playbook), SYNCED)]
    assert found == [
        (("trigger", "event", "type"), "event type 'suport_ticket' never seen in the synced "
         "events (did you mean 'support_ticket'?)"),
        (("when", 0, "events", "type"), "event type 'purchse' never seen in the synced events "
         "(did you mean 'purchase'?)"),
        (("when", 1, "events", "sum", "field"), "property 'amout' never seen on 'purchase' events "
         "(did you mean 'amount'?)")]
    # `where: priorty` is on a type never seen: its type's warning says it all; amount is a column


def test_unseen_properties_and_activity_types(tmp_path: Path) -> None:
    clean, lapsed = sorted(load(tmp_path, CLEAN, INACTIVE), key=lambda p: p.id)
    assert unseen(references(clean), SYNCED) == []
    [problem] = unseen(references(lapsed), SYNCED)
    assert problem.message == ("event type 'logn' never seen in the synced events "
                               "(did you mean 'login'?)")
    without_channel = Vocabulary(SYNCED.event_types, {"support_ticket": frozenset({"prio"})})
    messages = [p.message for p in unseen(references(clean), without_channel)]
    assert messages == [
        "property 'priority' never seen on 'support_ticket' events (did you mean 'prio'?)",
        "property 'channel' never seen on 'support_ticket' events (synced: amount, prio, score)",
        "property 'coupon' never seen on any synced event (synced: amount, prio, score)"]


def test_nothing_synced_yet_is_no_typo(tmp_path: Path) -> None:
    [playbook] = load(tmp_path, TYPOS)
    assert unseen(references(playbook), Vocabulary(frozenset(), {})) == []


@pytest.fixture
def synced(db: sa.Engine) -> sa.Engine:
    """Tickets with priority and channel; the channel only on the oldest ticket."""
    ingest_customers(db, [(2, {"customer_id": "c1", "email": "c1@example.com"})], "customers")
    rows = [{"event_id": f"t{n}", "customer_id": "c1", "type": "support_ticket",
             "occurred_at": f"2025-01-{n:02d}T10:00:00Z",
             "properties": {"priority": "high", **({"channel": "phone"} if n == 1 else {})}}
            for n in range(1, 6)]
    rows.append({"event_id": "p1", "customer_id": "c1", "type": "purchase",
                 "occurred_at": "2025-01-03T10:00:00Z", "amount": 20,
                 "properties": {"coupon": 1}})
    ingest_events(db, list(enumerate(rows, 2)), "events")
    return db


def test_the_vocabulary_is_read_from_the_synced_events(synced: sa.Engine, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vocabulary, "SAMPLE", 2)  # the oldest ticket, with channel, is unsampled
    typos, clean = sorted(load(tmp_path, TYPOS, CLEAN), key=lambda p: p.id, reverse=True)
    with synced.connect() as connection:
        found = read_vocabulary(connection, references(clean))
        warnings = typo_warnings(connection, [typos, clean])
    assert found.event_types == {"purchase", "support_ticket"}
    assert found.keys["support_ticket"] == {"priority", "channel"}  # channel: the bounded look
    assert [str(w) for w in warnings] == [
        f"{tmp_path / 'p0.yaml'}:5:11: trigger.event.type: event type 'suport_ticket' never seen "
        "in the synced events (did you mean 'support_ticket'?)",
        f"{tmp_path / 'p0.yaml'}:9:21: when[0].events.type: event type 'purchse' never seen in "
        "the synced events (did you mean 'purchase'?)",
        f"{tmp_path / 'p0.yaml'}:10:45: when[1].events.sum.field: property 'amout' never seen "
        "on 'purchase' events (did you mean 'amount'?)"]


def test_validate_warns_only_with_a_database(synced: sa.Engine, tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "typos.yaml").write_text(TYPOS, encoding="utf-8")
    code, out, err = cli(["validate", str(folder)])
    assert (code, err) == (0, "") and out.startswith("OK: 1 playbook valid")
    url = synced.url.render_as_string(hide_password=False)
    code, out, err = cli(["validate", "--db", url, str(folder)])
    assert code == 0 and out.startswith("OK: 1 playbook valid")
    assert err.count("warning: ") == 3 and "did you mean 'support_ticket'?" in err
    code, out, _ = cli(["--db", url, "validate", "--json", str(folder)])
    report = json.loads(out)
    assert code == 0 and report["valid"] is True
    assert [(w["line"], w["column"]) for w in report["warnings"]] == [(5, 11), (9, 21),
                                                                         (10, 45)]
    code, out, _ = cli(["--db", url, "dry-run", "--json", "--as-of", "2025-01-06", str(folder)])
    assert code == 0 and len(json.loads(out)["warnings"]) == 3
