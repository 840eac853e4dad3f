"""The sweep grammar: ``key=v1,v2`` words expanded into validated experiment configurations.

A sweep is a list of *axes*; each axis comes from one word on the command line (or one entry of
a sweep file's ``sweep:`` list) and the points of the sweep are the cartesian product of the
axes, the first axis varying slowest. Words (shell quoting needed only around parentheses)::

    matching=bipartite,pruning      two values: an axis of length 2
    r=8                             one value: a fixed override
    'r=range(0,17,4)'               0, 4, 8, 12, 16 (Python's range: end excluded)
    r=[8,8,4,4,0,0]                 a bracketed list stays ONE value (here, a per-layer r)
    r+schedule=6+decreasing,8+constant
                                    zip: keys joined by '+' take values joined by '+'; the
                                    pairs are walked together instead of crossed
    tome.options.gflops=0.5         dotted paths reach every field

Values are read as YAML scalars (``8`` an int, ``0.5`` a float, ``true`` a bool, ``null`` or
``none`` a None where the field takes one); text fields keep the word as written. Short keys
are built from the configuration dataclasses themselves, so a field added to ``ToMeConfig``
becomes a key without touching this file; keyword options of the matching and schedule
plug-ins (``gflops``, ...) are short keys for ``tome.options.<name>``.

Nothing runs here: :func:`expand` returns fully validated :class:`Point` objects or raises a
``ValueError`` naming every bad key or value, with did-you-mean suggestions.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import json
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from tome_lab.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    ToMeConfig,
    config_hash,
    from_dict,
    to_dict,
)

# The sub-configurations of an ExperimentConfig, by field name.
SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "tome": ToMeConfig, "eval": EvalConfig}

# Short keys that are not a unique field name: the names researchers type for the usual axes.
ALIASES: dict[str, str] = {
    "model": "model.name",
    "data": "data.name",
    "dataset": "data.name",
    "data_path": "data.path",
    "path": "data.path",
}

_OPTIONS_PREFIX = "tome.options."
_NONE_WORDS = ("none", "null", "~")


@dataclass(frozen=True)
class Axis:
    """One sweep axis: ``keys`` (dotted paths) and the tuples of values they take together.

    Attributes:
        keys: dotted paths (one, or several for a zip axis).
        labels: the keys as the user typed them (used in names and tables).
        values: one tuple per step of the axis, one entry per key.
        texts: the values as typed, for readable names (same shape as ``values``).
    """

    keys: tuple[str, ...]
    labels: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    texts: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Point:
    """One point of a sweep, validated.

    Attributes:
        config: the full, resolved configuration.
        overrides: dotted path -> value set by the sweep words.
        labels: short label -> value as typed, in word order (the point's readable name).
        key: a hash of the resolved configuration (equal configurations, equal keys).
    """

    config: ExperimentConfig
    overrides: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    key: str = ""

    @property
    def name(self) -> str:
        """Readable name, e.g. ``matching=pruning__r=8`` (``default`` with no words)."""
        return "__".join(f"{k}={v}" for k, v in self.labels.items()) or "default"

    @property
    def dirname(self) -> str:
        """Folder name of the point: its readable name, filesystem-safe, then its hash."""
        safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", re.sub(r"[\[\]() ]", "", self.name))[:80]
        return f"{safe}-{self.key}"


# --------------------------------------------------------------------------- configuration dicts
# (De)serialisation and hashing live with the configuration (tome_lab.config); these names
# stay for the sweep's callers.

config_to_dict = to_dict


def config_from_dict(d: Mapping[str, Any]) -> ExperimentConfig:
    """Builds (and so validates) an :class:`ExperimentConfig` from :func:`config_to_dict` data.

    Raises:
        ValueError: a field is unknown or a value is rejected by the configuration classes.
    """
    return from_dict(ExperimentConfig, d)


# --------------------------------------------------------------------------- keys

def _field_types() -> dict[str, Any]:
    """Dotted path -> annotation for every field of ExperimentConfig (sections flattened)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ExperimentConfig):
        cls = SECTIONS.get(f.name)
        if cls is None:
            out[f.name] = typing.get_type_hints(ExperimentConfig)[f.name]
            continue
        hints = typing.get_type_hints(cls)
        for sub in dataclasses.fields(cls):
            if f.name == "tome" and sub.name == "options":
                continue  # reached through its own keys, see plugin_options()
            out[f"{f.name}.{sub.name}"] = hints[sub.name]
    return out


def plugin_options() -> list[str]:
    """Keyword options taken by any registered matching or schedule plug-in."""
    from tome_lab.registry import MATCHING, SCHEDULES

    names: set[str] = set()
    for registry in (MATCHING, SCHEDULES):
        for plugin in registry.names():
            params = list(inspect.signature(registry.get(plugin)).parameters.values())[2:]
            names.update(p.name for p in params
                         if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    return sorted(names)


def key_table() -> dict[str, str]:
    """Every accepted key -> its dotted path: dotted paths, short keys, aliases, options."""
    types = _field_types()
    table = {path: path for path in types}
    leaves: dict[str, list[str]] = {}
    for path in types:
        leaves.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    for leaf, paths in leaves.items():
        if len(paths) == 1:  # only unambiguous field names become short keys
            table.setdefault(leaf, paths[0])
    for opt in plugin_options():
        table.setdefault(opt, _OPTIONS_PREFIX + opt)
        table.setdefault(_OPTIONS_PREFIX + opt, _OPTIONS_PREFIX + opt)
    table.update(ALIASES)
    return dict(sorted(table.items()))


def resolve_key(key: str, table: Mapping[str, str] | None = None) -> str:
    """The dotted path a key names.

    Raises:
        ValueError: the key is unknown; the message suggests close keys and lists short ones.
    """
    table = key_table() if table is None else table
    k = key.strip()
    if k in table:
        return table[k]
    if k.startswith(_OPTIONS_PREFIX) and k[len(_OPTIONS_PREFIX):].isidentifier():
        return k  # an option no plug-in knows yet: ToMeConfig names the valid ones
    close = difflib.get_close_matches(k, list(table), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    short = sorted(s for s in table if "." not in s)
    raise ValueError(f"unknown key {key!r}.{hint} Short keys: {', '.join(short)}; or a dotted "
                     f"path such as tome.r, data.limit, eval.speed_batches")


# --------------------------------------------------------------------------- values

def split_top(text: str, sep: str) -> list[str]:
    """Splits ``text`` at ``sep`` outside brackets, parentheses, braces and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth != 0 or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    parts.append("".join(cur))
    return parts


_RANGE = re.compile(r"^range\((.*)\)$")


def _expand_range(text: str) -> list[int] | None:
    m = _RANGE.match(text.strip())
    if not m:
        return None
    try:
        args = [int(a) for a in m.group(1).split(",")]
    except ValueError:
        raise ValueError(f"range takes integers: range(a, b[, step]), got {text!r}") from None
    if not 1 <= len(args) <= 3 or (len(args) == 3 and args[2] == 0):
        raise ValueError(f"range takes range(b), range(a, b) or range(a, b, step != 0), "
                         f"got {text!r}")
    values = list(range(*args))
    if not values:
        raise ValueError(f"{text!r} is empty")
    return values


def _choices(path: str) -> tuple[list[str], Any] | None:
    """The valid names for a name-valued field, and a function resolving aliases, if any.

    A ``tome.<field>`` (or ``data.name``) is name-valued when ``tome_lab.registry`` holds a
    registry of that kind (``matching``, ``schedule``, ``feature``, ... ``dataset``), so new
    plug-in kinds are checked here without editing this file.
    """
    from tome_lab import registry as reg
    from tome_lab.config import _DTYPES
    from tome_lab.merge import DISTANCES

    if path == "tome.distance":
        return list(DISTANCES), None
    if path == "eval.dtype":
        return list(_DTYPES), None
    if path == "data.name":
        kind = "dataset"  # the registry imports the dataset plug-ins on its first lookup
    elif path.startswith("tome."):
        kind = path.split(".", 1)[1]
    else:
        return None
    for obj in vars(reg).values():
        if isinstance(obj, reg.Registry) and obj.kind == kind and obj.names():
            return obj.names(), obj.canonical
    return None


def check_choice(path: str, value: Any) -> Any:
    """A name-valued field's value resolved to its registered name (aliases resolved).

    Raises:
        ValueError: an unknown name, with did-you-mean hints and the valid names.
    """
    found = _choices(path)
    if found is None or not isinstance(value, str):
        return value
    valid, canonical = found
    if canonical is not None:
        return canonical(value)  # the registry's own did-you-mean error
    if value not in valid:
        close = difflib.get_close_matches(value, valid, n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown {path} {value!r}.{hint} Valid: {', '.join(valid)}")
    return value


def _allows(annotation: Any, kind: type) -> bool:
    args = typing.get_args(annotation)
    return annotation is kind or kind in args


def parse_value(text: str, path: str) -> Any:
    """One value as typed, converted for the field at ``path``.

    Raises:
        ValueError: the text is not valid YAML.
    """
    annotation = _field_types().get(path, Any)
    raw = text.strip()
    if raw == "":
        raise ValueError(f"empty value for {path}")
    if raw.lower() in _NONE_WORDS and _allows(annotation, type(None)):
        return None
    if _allows(annotation, str) and not raw.startswith(("[", "{")):
        value = raw[1:-1] if len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
        return check_choice(path, value)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"cannot read value {raw!r} for {path}: {err}") from None
    if isinstance(value, list):
        value = tuple(value)
    return value


# --------------------------------------------------------------------------- words and axes

def parse_word(word: str, table: Mapping[str, str] | None = None) -> Axis:
    """One ``key=values`` word as an :class:`Axis`.

    Raises:
        ValueError: no ``=``, an unknown key, a bad range, or zip values of the wrong arity.
    """
    table = key_table() if table is None else table
    if "=" not in word:
        raise ValueError(f"sweep words are key=value[,value...], got {word!r}")
    lhs, rhs = word.split("=", 1)
    labels = tuple(k.strip() for k in lhs.split("+"))
    if any(not k for k in labels):
        raise ValueError(f"empty key in {word!r}")
    keys = tuple(resolve_key(k, table) for k in labels)
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key appears twice in {word!r}")
    values: list[tuple[Any, ...]] = []
    texts: list[tuple[str, ...]] = []
    for item in split_top(rhs, ","):
        if len(keys) == 1:
            rng = _expand_range(item)
            if rng is not None:
                values.extend((v,) for v in rng)
                texts.extend((str(v),) for v in rng)
                continue
            values.append((parse_value(item, keys[0]),))
            texts.append((item.strip(),))
            continue
        parts = split_top(item, "+")
        if len(parts) != len(keys):
            raise ValueError(
                f"zip word {word!r}: {item!r} has {len(parts)} value(s) for {len(keys)} keys "
                f"{'+'.join(labels)}; write one value per key joined by '+'")
        values.append(tuple(parse_value(p, k) for p, k in zip(parts, keys, strict=True)))
        texts.append(tuple(p.strip() for p in parts))
    return Axis(keys, labels, tuple(values), tuple(texts))


def parse_words(words: Iterable[str], table: Mapping[str, str] | None = None) -> list[Axis]:
    """Words -> axes; a later word that sets a key of an earlier one replaces that axis.

    This lets a command line override an axis of a sweep file (``--config f.yaml r=8``).

    Raises:
        ValueError: a bad word, or a word that sets only part of an earlier zip axis.
    """
    table = key_table() if table is None else table
    axes: list[Axis] = []
    for word in words:
        axis = parse_word(word, table)
        for i, old in enumerate(axes):
            common = set(old.keys) & set(axis.keys)
            if not common:
                continue
            if set(old.keys) - set(axis.keys):
                raise ValueError(f"{word!r} overrides part of the zip axis "
                                 f"{'+'.join(old.labels)}; override all of its keys together")
            axes[i] = None  # type: ignore[call-overload]
        axes = [a for a in axes if a is not None]
        axes.append(axis)
    return axes


def _set_path(d: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def expand(words: Sequence[str], base: ExperimentConfig | Mapping[str, Any] | None = None
           ) -> list[Point]:
    """Expands sweep words over a base configuration and validates every point.

    Args:
        words: ``key=values`` words (see the module docstring).
        base: the configuration the words modify (a config, its dict form, or None for the
            defaults).

    Returns:
        The points, first axis slowest, duplicates (equal resolved configs) dropped.

    Raises:
        ValueError: every distinct problem found, one per line, before anything runs.
    """
    if base is None:
        base = ExperimentConfig()
    base_dict = config_to_dict(base) if not isinstance(base, Mapping) else config_to_dict(base)
    axes = parse_words(words)
    points: list[Point] = []
    errors: dict[str, list[str]] = {}  # message -> names of the points it hit
    seen: set[str] = set()
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        d = json.loads(json.dumps(base_dict))  # a deep copy of plain data
        overrides: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for axis, i in zip(axes, combo, strict=True):
            for key, label, value, text in zip(axis.keys, axis.labels, axis.values[i],
                                               axis.texts[i], strict=True):
                _set_path(d, key, list(value) if isinstance(value, tuple) else value)
                overrides[key] = value
                labels[label] = text
        name = "__".join(f"{k}={v}" for k, v in labels.items()) or "default"
        tome = d.get("tome", {})
        # an option set to null is left unset, so a zip axis can give one to some points only
        tome["options"] = {k: v for k, v in (tome.get("options") or {}).items() if v is not None}
        if isinstance(tome.get("schedule"), list):  # schedule=[8,8,4,4]: an explicit per-layer r
            tome["r"], tome["schedule"] = tome["schedule"], "list"
        try:
            cfg = config_from_dict(d)
        except (ValueError, TypeError) as err:
            errors.setdefault(str(err), []).append(name)
            continue
        key = config_hash(cfg)
        if key in seen:
            continue
        seen.add(key)
        points.append(Point(cfg, overrides, labels, key))
    if errors:
        lines = []
        for msg, names in errors.items():
            more = f" (and {len(names) - 1} more point(s))" if len(names) > 1 else ""
            lines.append(f"{names[0]}{more}: {msg}")
        raise ValueError("\n".join(lines))
    return points
