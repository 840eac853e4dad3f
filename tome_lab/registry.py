"""One generic registry for every kind of plug-in (matching, schedules, attention, ...).

Plug-ins register themselves with one decorator in their own file; lookups by an unknown
name raise a ``ValueError`` with did-you-mean suggestions and the list of valid names.
The design follows timm's ``register_model`` and lm-evaluation-harness' registries.

Each registry is created with the packages that register into it, named as strings (like
entry points): the first lookup imports them, so a module that looks names up (``data``,
``config``) never imports the plug-ins, and a lower floor never names a higher one.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with aliases and helpful errors.

    Args:
        kind: what the registry holds, used in error messages ("matching", "schedule").
        plugins: the modules or packages whose import registers the plug-ins, imported on
            the first lookup (registering imports nothing).
    """

    def __init__(self, kind: str, plugins: Sequence[str] = ()) -> None:
        self.kind = kind
        self.plugins = tuple(plugins)
        self._pending = list(self.plugins)
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def _load(self) -> None:
        """Imports the plug-in packages not imported yet. A lookup made while one of them is
        importing sees what has registered so far (it does not import it again)."""
        while self._pending:
            package = self._pending.pop(0)
            try:
                importlib.import_module(package)
            except BaseException:
                self._pending.insert(0, package)
                raise

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
        self._load()
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
        self._load()
        return sorted(self._items)

    def aliases(self) -> dict[str, str]:
        """Alias -> registered name."""
        self._load()
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._load()
        return name in self._items or name in self._aliases

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


# The registries of tome_lab, each with the packages that fill it when imported.
MATCHING: Registry = Registry("matching", ["tome_lab.matching"])
SCHEDULES: Registry = Registry("schedule", ["tome_lab.schedules"])
ATTENTION: Registry = Registry("attention", ["tome_lab.attention"])
# how proportional attention is computed (the attention core), orthogonal to ATTENTION's what
ATTN_IMPL: Registry = Registry("attn_impl", ["tome_lab.attention.impl"])
FEATURES: Registry = Registry("feature", ["tome_lab.features"])
COMBINE: Registry = Registry("combine", ["tome_lab.combine"])
PARTITIONS: Registry = Registry("partition", ["tome_lab.partition"])
DATASETS: Registry = Registry("dataset", ["tome_lab.data", "tome_lab.tasks"])
# model-family adapters (tome_lab.engine.Family): timm's ViT in patch.py, the others one file each
FAMILIES: Registry = Registry("family", ["tome_lab.patch", "tome_lab.families"])

# timm's model registry is timm's own: these packages register models into it on import
# (``tome_lab.models`` imports them when it is imported, see :func:`import_plugins`).
TIMM_MODELS: tuple[str, ...] = ("tome_lab.tasks",)


def import_plugins(packages: Sequence[str]) -> None:
    """Imports plug-in packages named as strings (their modules register on import)."""
    for package in packages:
        importlib.import_module(package)
