"""Retain engine: playbooks, customer state, evaluation and planning.

The names below are the engine's public API for connectors (in-tree and third-party, loaded from
the `retain.connectors` entry-point group): a connector imports them from `engine` and nothing
from the subpackages, so the engine's internals can move without breaking a connector
(tests/test_architecture.py enforces it). They load lazily (PEP 562), so `import engine.x` costs
no more than module `x` itself.

- Errors: `RetainError`, `Location`, `Problem`, `TemplateError`, `ConnectorError`,
  `TransientError` (worth retrying), `PermanentError` (dead-letter).
- Templates: `TemplateChecker` (validate-time checks of a connector's template fields),
  `render`, `render_file` (sandboxed Jinja2, strict undefined), `Inline` (a payload value
  rendered per customer, in a `payload_template`), `header_problem` (line breaks in
  header values), `ENV_REFERENCE`, `env_var_problems`, `expand_env` (`${VAR}` from the
  environment, never from YAML).
- Values: `Duration` (a pydantic-ready `15m 12h 30d 2w` duration).
- Time: `iso` (the one spelling of an instant in output and keys), `utcnow` (the real clock, for
  what follows it: leases, heartbeats, a webhook's timestamp).
- Settings: `Settings` (what `Connector.open(settings)` receives; docs/CONFIG.md).

The CLI imports the subpackages directly; docs/ARCHITECTURE.md says which may import which.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "RetainError": "engine.errors", "Location": "engine.errors", "Problem": "engine.errors",
    "TemplateError": "engine.errors", "ConnectorError": "engine.errors",
    "TransientError": "engine.errors", "PermanentError": "engine.errors",
    "TemplateChecker": "engine.format.template_checks", "render": "engine.format.templates",
    "render_file": "engine.format.templates", "header_problem": "engine.format.templates",
    "ENV_REFERENCE": "engine.format.templates", "env_var_problems": "engine.format.templates",
    "expand_env": "engine.format.templates", "Duration": "engine.format.durations",
    "Inline": "engine.format.templates", "iso": "engine.clock", "utcnow": "engine.clock",
    "Settings": "engine.config",
}
__all__ = [
    "ENV_REFERENCE", "ConnectorError", "Duration", "Inline", "Location", "PermanentError",
    "Problem", "RetainError", "Settings", "TemplateChecker", "TemplateError", "TransientError",
    "env_var_problems", "expand_env", "header_problem", "iso", "render", "render_file", "utcnow",
]

if TYPE_CHECKING:
    from engine.clock import iso, utcnow
    from engine.config import Settings
    from engine.errors import (
        ConnectorError,
        Location,
        PermanentError,
        Problem,
        RetainError,
        TemplateError,
        TransientError,
    )
    from engine.format.durations import Duration
    from engine.format.template_checks import TemplateChecker
    from engine.format.templates import (
        ENV_REFERENCE,
        Inline,
        env_var_problems,
        expand_env,
        header_problem,
        render,
        render_file,
    )


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(module), name)
