"""A customer's address or name that no email can carry: the dry-run and the live plan agree.

The customer file accepts any `x@y.z` without spaces, so an address like `<a>@x.example`,
`a,b@x.example` or a non-ASCII local part reaches the planner, and so does a name with a line
break. The live plan cannot build that message (connectors/email.py `payload`); the dry-run
must not show it as planned, and the live plan must dead-letter that one action, never stop
the run.
"""

from __future__ import annotations

from email.headerregistry import Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_caps_quiet import person, planner_at, rules_of, utc
from test_planner import playbook

from connectors.email import PLAIN_ADDRESS
from engine.store.status import DEAD, PLANNED, SUPPRESSED

PLAIN = '  - email: { subject: "Hello", body: "We miss you" }\n'


def link(address: str) -> str:
    return "http://127.0.0.1:8765/unsubscribe?token=t"


@pytest.mark.parametrize(("address", "name"), [
    ("<a>@x.example", "Ann"),  # the email package cannot parse it (HeaderParseError)
    ("a,b@x.example", "Ann"),
    ("\u00e4@x.example", "Ann"),  # a non-ASCII local part
    ("ann@x.example", "Ann\nBcc: x@evil.example"),  # not in the subject: only To carries it
])
def test_dry_run_and_live_both_dead_letter_what_cannot_be_addressed(
        tmp_path: Path, address: str, name: str) -> None:
    pb = playbook(tmp_path, actions=PLAIN)
    at = utc("2026-01-15T10:00:00")
    dry = planner_at(pb, at, rules_of()).enrollment("c1", "o", person("c1", address, name),
                                                     None, {}).actions[0]
    live = planner_at(pb, at, rules_of(), unsubscribe=link).enrollment(
        "c1", "o", person("c1", address, name), None, {}).actions[0]
    assert (dry.status, dry.error) == (live.status, live.error) == (DEAD, True)
    assert dry.reason == live.reason
    assert live.reason is not None and live.reason.startswith("customer c1, actions[0].email:")


def test_a_good_address_is_planned_and_a_suppressed_bad_one_stays_suppressed(
        tmp_path: Path) -> None:
    pb = playbook(tmp_path, actions=PLAIN)
    at = utc("2026-01-15T10:00:00")
    for pl in (planner_at(pb, at, rules_of()), planner_at(pb, at, rules_of(), unsubscribe=link)):
        assert pl.enrollment("c1", "o", person("c1", "ann@x.example"), None, {}
                             ).actions[0].status == PLANNED
        assert pl.enrollment("c2", "o", person("c2", "<a>@x.example"), None,
                             {"<a>@x.example": "bounced"}).actions[0].status == SUPPRESSED


@settings(max_examples=300, deadline=None)
@given(address=st.from_regex(PLAIN_ADDRESS, fullmatch=True),
       name=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                    max_size=20))
def test_an_address_the_fast_path_passes_is_one_the_parser_passes(address: str,
                                                                  name: str) -> None:
    """`recipient_problem` skips parsing an address of plain ASCII dot-atoms: that is only
    right if the email package accepts every such address, so ask the package."""
    parsed = Address(display_name=name, addr_spec=address)
    assert parsed.username.isascii()
    assert parsed.addr_spec == address


@pytest.mark.parametrize("address", ["a..b@x.example", ".a@x.example", "a.@x.example",
                                     "a@x..example", "a b@x.example", '"a"@x.example',
                                     "a@[127.0.0.1]", "\u00e4@x.example", "<a>@x.example"])
def test_anything_else_goes_through_the_parser(address: str) -> None:
    """Addresses off the fast path: the regex refuses them, so the parser judges them."""
    assert PLAIN_ADDRESS.fullmatch(address) is None
