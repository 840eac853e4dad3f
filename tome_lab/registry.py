"""One generic registry for every kind of plug-in (matching, schedules, attention, ...).

Plug-ins register themselves with one decorator in their own file; lookups by an unknown
name raise a ``ValueError`` with did-you-mean suggestions and the list of valid names.
The design follows timm's ``register_model`` and lm-evaluation-harness' registries.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with aliases and helpful errors.

    Args:
        kind: what the registry holds, used in error messages ("matching", "schedule").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (and optional aliases)."""

        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return deco

    def canonical(self, name: str) -> str:
        """Resolves an alias to its registered name; raises ``ValueError`` if unknown."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} must be a name (str), got {name!r}")
        key = name.strip().lower()
        if key in self._items:
            return key
        if key in self._aliases:
            return self._aliases[key]
        valid = sorted(self._items)
        close = difflib.get_close_matches(key, valid + sorted(self._aliases), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(valid)}")

    def get(self, name: str) -> T:
        """Returns the object registered under ``name`` or one of its aliases."""
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names, sorted (aliases excluded)."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def import_submodules(package: str) -> None:
    """Imports every module of ``package`` so that their decorators run."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


# The registries of tome_lab. Each plug-in package fills its own at import.
MATCHING: Registry = Registry("matching")
SCHEDULES: Registry = Registry("schedule")
ATTENTION: Registry = Registry("attention")
FEATURES: Registry = Registry("feature")
COMBINE: Registry = Registry("combine")
PARTITIONS: Registry = Registry("partition")
DATASETS: Registry = Registry("dataset")
