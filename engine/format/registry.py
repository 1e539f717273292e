"""Registries: a tiny typed one per extension kind, and the connectors found by entry points.

From c7n's PluginRegistry: `@TRIGGERS.register("inactive")` stamps `kind = "inactive"` on the
class, so the YAML name, the schema name and the class can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from engine.errors import RetainError, did_you_mean

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


class ConnectorLoadError(RetainError):
    """An installed connector plugin cannot be used (import failure, wrong type, name mismatch)."""


_registered: dict[str, type[Any]] = {}


def register_connector(cls: type[Any]) -> type[Any]:
    """Register a connector class explicitly (tests, embedding); usable as a class decorator."""
    problem = _class_problem(cls, getattr(cls, "kind", None))
    if problem:
        raise ConnectorLoadError(problem)
    _registered[cls.kind] = cls
    return cls


def unregister_connector(kind: str) -> None:
    """Forget an explicitly registered connector (test clean-up)."""
    _registered.pop(kind, None)


def load_connectors(*, installed: bool = True) -> dict[str, type[Any]]:
    """Connector classes by kind: the installed entry points, then explicit registrations.

    `installed=False` gives only the explicit ones, so a test sees exactly what it registered.
    """
    return {**(_installed() if installed else {}), **_registered}


def make_connectors(settings: Any = None) -> dict[str, Any]:
    """One instance of every connector by kind, configured with `settings` when given (the
    email sender a live payload is built with)."""
    made = {kind: cls() for kind, cls in load_connectors().items()}
    if settings is not None:
        for connector in made.values():
            connector.configure(settings)
    return made


def connector_names() -> list[str]:
    """The installed connector kinds, without importing any of them (for messages and hints)."""
    return sorted({entry.name for entry in entry_points(group=CONNECTOR_GROUP)})


@cache
def _installed() -> dict[str, type[Any]]:
    values: dict[str, str] = {}
    for entry in entry_points(group=CONNECTOR_GROUP):
        if values.setdefault(entry.name, entry.value) != entry.value:
            raise ConnectorLoadError(f"two connectors are installed as {entry.name!r} "
                                     f"({values[entry.name]} and {entry.value}); remove one")
    # The same entry point seen twice (an editable and a regular install) is loaded once.
    return {name: _load(EntryPoint(name, value, CONNECTOR_GROUP)) for name, value in sorted(values.items())}


def _load(entry: EntryPoint) -> type[Any]:
    where = f"connector entry point '{entry.name} = {entry.value}'"
    try:
        loaded = entry.load()
    except Exception as exc:  # noqa: BLE001  (a plugin's import may raise anything; say which)
        raise ConnectorLoadError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}"
                                 ) from exc
    problem = _class_problem(loaded, entry.name)
    if problem:
        raise ConnectorLoadError(f"{where}: {problem}")
    return loaded  # type: ignore[no-any-return]


def _class_problem(cls: object, name: object) -> str | None:
    """Why `cls` cannot serve as the connector called `name`, or None."""
    needed = ("check", "plan", "blocked", "preview")
    if not (isinstance(cls, type) and all(callable(getattr(cls, m, None)) for m in needed)):
        return (f"{cls!r} is not a connector class (it needs Params, kind and the methods "
                f"{', '.join(needed)}: subclass connectors.base.Connector)")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        return f"{cls.__name__}.Params is not a pydantic model"
    if params.model_config.get("extra") != "forbid":
        return f"{cls.__name__}.Params must forbid unknown keys (extra='forbid')"
    if getattr(cls, "kind", None) != name or not isinstance(name, str):
        return f"{cls.__name__}.kind is {getattr(cls, 'kind', None)!r}, expected {name!r}"
    return None
