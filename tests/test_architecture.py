"""The import and side-effect rules of docs/ARCHITECTURE.md, checked on every module's AST.

`violations()` reads source files, never imports them, so a breach is found even in a module no
test loads, and in imports inside functions (lazy imports count: a lazy `import rich` in the
engine still ties it to a terminal). The planted-violation tests show each rule can fail.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("engine", "connectors", "cli")

# Which engine packages each package may import (besides itself). `engine` alone is the public
# API of engine/__init__.py. Top-level modules errors, clock, config are packages of their own.
ALLOWED: dict[str, set[str]] = {
    "engine.errors": set(),
    "engine.clock": set(),
    "engine.config": {"engine.errors", "engine.format.durations", "engine.consent"},
    "engine.consent": {"engine.errors"},
    "engine.store": {"engine.errors", "engine.clock", "engine.config"},
    "engine.format": {"engine.errors", "engine.clock", "engine.store.tables",
                      "engine.store.dialect", "engine.store.facts"},
    "engine.sync": {"engine.errors", "engine.clock", "engine.config", "engine.store",
                    "engine.format"},
    "engine.query": {"engine.errors", "engine.clock", "engine.store.tables",
                     "engine.store.dialect", "engine.store.facts", "engine.store.status",
                     "engine.format"},
    "engine.plan": {"engine.errors", "engine.clock", "engine.store.tables",
                    "engine.store.dialect", "engine.store.facts", "engine.store.status",
                    "engine.format", "engine.query"},
    "engine.reports": {"engine.errors", "engine.clock", "engine.store.tables",
                       "engine.store.dialect", "engine.store.facts", "engine.format",
                       "engine.query"},
    "engine.demo": {"engine.errors", "engine.clock", "engine.config", "engine.store",
                    "engine.sync"},
    "engine.outbox": {"engine.errors", "engine.clock", "engine.config", "engine.consent",
                      "engine.store", "engine.format", "engine.query", "engine.plan",
                      "connectors.base"},  # the dispatcher hands connectors a Delivery
    "engine.daemon": {"engine.errors", "engine.clock", "engine.config", "engine.consent",
                      "engine.store", "engine.format", "engine.sync", "engine.query",
                      "engine.plan", "engine.outbox"},
    "engine.playtest": {"engine.errors", "engine.clock", "engine.config", "engine.store",
                        "engine.format", "engine.sync", "engine.query", "engine.plan",
                        "engine.outbox", "connectors.base"},  # records what dispatch sends
    "connectors": set(),  # only the public names of engine/__init__.py, see _allowed
}
TERMINAL = {"typer", "rich", "click"}
WRITERS = ("engine.store", "engine.sync", "engine.outbox", "engine.daemon")  # may write
WRITE_SQL = re.compile(r"^\s*(insert|update|delete|create|drop|alter|analyze|vacuum|truncate)\b",
                       re.IGNORECASE)
WRITE_CALLS = {"insert", "update", "delete", "create_all", "drop_all"}
CONNECT_CALLS = {"connect", "begin", "execute", "exec_driver_sql", "create_engine", "scalar",
                 "scalars"}


def module_name(path: Path) -> str:
    """`engine/format/triggers.py` -> `engine.format.triggers`."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, str]:
    """Every scanned module's source by module name (migration scripts are Alembic's)."""
    found = {}
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if "migrations" not in path.parts:
                found[module_name(path)] = path.read_text(encoding="utf-8")
    return found


def package_of(module: str) -> str:
    """The rule key a module falls under: the longest ALLOWED key that prefixes it."""
    keys = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return max(keys, key=len) if keys else module.split(".")[0]


def _imports(tree: ast.AST, module: str) -> Iterator[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every import, relative ones resolved."""
    top_level = {id(node) for node in getattr(tree, "body", [])}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            for alias in node.names:  # `from engine import x` may name a submodule x
                yield node.lineno, f"{base}.{alias.name}" if base == "engine" else base, \
                    id(node) in top_level


def _allowed(importer: str, imported: str) -> bool:
    package = package_of(importer)
    if imported == package or imported.startswith(package + "."):
        return True
    if package not in ALLOWED:
        return True  # cli and the engine's public API module may use any engine part
    if package == "connectors":  # `from engine import Name`: the public API only
        return imported.startswith("engine.") and imported.count(".") == 1 and \
            imported.split(".")[1] not in _ENGINE_PACKAGES
    for permitted in ALLOWED[package]:
        if imported == permitted or imported.startswith(permitted + "."):
            return True
    return False


_ENGINE_PACKAGES = {"errors", "clock", "config", "store", "format", "sync", "query", "plan",
                    "reports", "demo", "outbox", "dispatch", "daemon", "playtest"}


def _is_type_checking(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside `if TYPE_CHECKING:` (they never run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def violations(modules: Mapping[str, str]) -> list[str]:
    """Every breach of the rules in `modules` (name -> source), as `module:line: rule`."""
    found: list[str] = []
    for module, source in sorted(modules.items()):
        tree = ast.parse(source)
        skipped = _is_type_checking(tree)
        package = package_of(module)
        for line, imported, top in _imports(tree, module):
            if line in skipped:
                continue
            root = imported.split(".")[0]
            where = f"{module}:{line}"
            if module.startswith("engine") and root in TERMINAL:
                found.append(f"{where}: the engine imports {root} (terminal code lives in cli/)")
            if root == "matplotlib" and top:
                found.append(f"{where}: matplotlib imported at module level (only when drawn)")
            elif root == "matplotlib" and not module.startswith("engine.reports"):
                found.append(f"{where}: matplotlib imported outside engine/reports")
            if root in {"engine", "connectors", "cli"} and not _allowed(module, imported):
                found.append(f"{where}: {package} may not import {imported}")
            if root == "cli" and not module.startswith("cli"):
                found.append(f"{where}: only cli imports cli")
        found.extend(_side_effects(module, tree))
    return found


def _side_effects(module: str, tree: ast.AST) -> Iterator[str]:
    writer = module.startswith(WRITERS) or module.startswith("engine.demo") or \
        not module.startswith("engine")
    pure = module.startswith("engine.format")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            owner = node.func.value if isinstance(node.func, ast.Attribute) else None
            if not writer and name in WRITE_CALLS and isinstance(owner, ast.Name) and \
                    owner.id in {"sa", "sqlalchemy", "metadata"}:
                yield f"{module}:{node.lineno}: {owner.id}.{name}() writes outside store/sync/outbox"
            if pure and name in CONNECT_CALLS and owner is not None:
                yield f"{module}:{node.lineno}: format calls .{name}() (format never touches a db)"
        if not writer and isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                WRITE_SQL.match(node.value) and _looks_like_sql(node.value):
            yield f"{module}:{node.lineno}: SQL that writes outside store/sync/outbox"


def _looks_like_sql(text: str) -> bool:
    """A statement, not a word in a message: `UPDATE customers SET`, `CREATE INDEX ...`."""
    return bool(re.match(r"^\s*(insert\s+into|update\s+\w+\s+set|delete\s+from|create\s+"
                         r"(temporary\s+|unique\s+)?(table|index)|drop\s+(table|index)|alter\s+"
                         r"table|analyze\b|vacuum\b|truncate\b)", text, re.IGNORECASE))


# --- the tree as it is ---------------------------------------------------------------------------


def test_the_tree_keeps_the_rules() -> None:
    assert violations(sources()) == []


def test_engine_import_loads_no_terminal_or_charting_library() -> None:
    """Importing every engine module (as the CLI would) pulls in neither rich, typer nor matplotlib."""
    modules = [m for m in sources() if m.startswith("engine")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({'rich', 'typer', 'click', 'matplotlib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.strip()
    assert out == "[]"


# --- each rule fails on a planted violation ------------------------------------------------------


def planted(name: str, source: str) -> list[str]:
    """The violations of one planted module."""
    return violations({name: source})


def test_planted_terminal_import_in_engine_fails() -> None:
    found = planted("engine.query.bad", "def f():\n    import rich\n")
    assert found == ["engine.query.bad:2: the engine imports rich (terminal code lives in cli/)"]


def test_planted_matplotlib_at_module_level_fails() -> None:
    found = planted("engine.reports.bad", "import matplotlib\n")
    assert found == ["engine.reports.bad:1: matplotlib imported at module level (only when drawn)"]


def test_planted_format_opening_a_connection_fails() -> None:
    found = planted("engine.format.bad", "from engine.store.open import open_store\n"
                    "def f(engine):\n    with engine.connect() as c:\n        pass\n")
    assert found == ["engine.format.bad:1: engine.format may not import engine.store.open",
                     "engine.format.bad:3: format calls .connect() (format never touches a db)"]


def test_planted_write_in_query_fails() -> None:
    found = planted("engine.query.bad", "import sqlalchemy as sa\n"
                    "def f(c, t):\n    c.execute(sa.update(t))\n"
                    "    c.exec_driver_sql('INSERT INTO customers VALUES (1)')\n")
    assert found == ["engine.query.bad:3: sa.update() writes outside store/sync/outbox",
                     "engine.query.bad:4: SQL that writes outside store/sync/outbox"]


def test_planted_query_importing_sync_fails() -> None:
    found = planted("engine.query.bad", "from engine.sync.facts import refresh_facts\n")
    assert found == ["engine.query.bad:1: engine.query may not import engine.sync.facts"]


def test_planted_connector_using_internals_fails() -> None:
    found = planted("connectors.bad", "from engine.format.templates import render\n"
                    "from engine import render_file\nfrom engine import format\n")
    assert found == ["connectors.bad:1: connectors may not import engine.format.templates",
                     "connectors.bad:3: connectors may not import engine.format"]


def test_planted_demo_import_outside_cli_fails() -> None:
    found = planted("engine.plan.bad", "from engine.demo.build import build_demo\n")
    assert found == ["engine.plan.bad:1: engine.plan may not import engine.demo.build"]
