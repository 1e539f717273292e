"""A tiny typed registry per extension kind, filled by decorators, with did-you-mean on a miss.

From c7n's PluginRegistry: `@TRIGGERS.register("inactive")` stamps `kind = "inactive"` on the
class, so the YAML name, the schema name and the class can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from engine.errors import RetainError
from engine.fields import did_you_mean

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Names to classes for one extension kind (triggers, operators)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register under `name` and stamp it as the class's `kind`."""

        def decorate(cls: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            cls.kind = name  # type: ignore[attr-defined]
            self._items[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> T | None:
        """The class registered as `name`, or None."""
        return self._items.get(name)

    def unknown(self, name: object) -> str:
        """The message for a name that is not registered, listing or suggesting the choices."""
        hint = did_you_mean(str(name), self._items) or f" (expected one of: {', '.join(self)})"
        return f"unknown {self.what} {name!r}{hint}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> list[tuple[str, T]]:
        """Registered names and classes, in registration order."""
        return list(self._items.items())


CONNECTOR_GROUP = "retain.connectors"


@cache
def load_connectors() -> dict[str, Any]:
    """Connector classes by action kind, from the `retain.connectors` entry points.

    Built-ins are declared in our own pyproject.toml and found the same way as a third party's
    (CONVENTIONS 12); they are imported only when a playbook is parsed, so the CLI starts fast.
    """
    found: dict[str, Any] = {}
    for entry in sorted(entry_points(group=CONNECTOR_GROUP), key=lambda e: e.name):
        try:
            found[entry.name] = entry.load()
        except (ImportError, AttributeError) as exc:
            raise RetainError(f"connector {entry.name!r} ({entry.value}) cannot be loaded: {exc}"
                              ) from exc
    return found
