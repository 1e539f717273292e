"""`retain validate`, `retain schema` and `retain init`."""

from __future__ import annotations


def validate() -> None:
    """Check playbooks and their templates (being built in issue 2)."""
    raise NotImplementedError


def schema() -> None:
    """Print the playbook JSON Schema (being built in issue 2)."""
    raise NotImplementedError


def init() -> None:
    """Scaffold a project (being built in issue 2)."""
    raise NotImplementedError
