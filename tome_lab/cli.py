"""One command-line system for every command: jsonargparse over the configuration sections.

A command's configuration is a dataclass of sections (``ExperimentConfig``,
``TrainRunConfig``, ...; see :mod:`tome_lab.config`). :func:`build_parser` turns it into a
parser with ``--<section>.<field>`` flags documented from the dataclasses' docstrings,
``--config FILE`` (YAML; the ``config.yaml`` of a sweep point loads unchanged) and
``--print_config``; :func:`parse` reads a command line into the validated configuration.

Short aliases (``-r 8``, ``--device cuda``, ``--no-speed``) are rewritten to the dotted flags
before parsing (:func:`expand_aliases`); each command lists its own in ``--help``.

Exit status: 0 success; 2 a bad command line or bad input found while setting up (a flag, a
value, a model name, a data path, a checkpoint), with a one-line message; 1 and a traceback
for anything else (a genuine bug must not be dressed up as a usage error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tome_lab.config import from_dict

if TYPE_CHECKING:
    from tome_lab.launch import LaunchConfig

C = TypeVar("C")

# An alias is a flag taking a value (-> a dotted flag) or a switch (-> a flag and its value).
Alias = str | tuple[str, str]

# Aliases every command that has the section understands (kept from the earlier commands).
MODEL_ALIASES: dict[str, Alias] = {
    "--model": "--model.name", "--checkpoint": "--model.checkpoint",
    "--pretrained": ("--model.pretrained", "true"),
    "--no-pretrained": ("--model.pretrained", "false"),
}
DATA_ALIASES: dict[str, Alias] = {
    "--data": "--data.name", "--dataset": "--data.name", "--data-path": "--data.path",
    "--split": "--data.split", "--limit": "--data.limit", "--workers": "--data.num_workers",
}
TOME_ALIASES: dict[str, Alias] = {
    "-r": "--tome.r", "--r": "--tome.r", "--tome-r": "--tome.r",
    "--matching": "--tome.matching", "--schedule": "--tome.schedule",
    "--prop-attn": ("--tome.prop_attn", "true"), "--no-prop-attn": ("--tome.prop_attn", "false"),
}
EVAL_ALIASES: dict[str, Alias] = {
    "--device": "--eval.device", "--dtype": "--eval.dtype", "--threads": "--eval.threads",
    "--no-speed": ("--eval.speed", "false"), "--speed-batches": "--eval.speed_batches",
    "--compile": ("--eval.compile", "true"),
}

# Flags whose value is a list: several values after the alias (``-r 8 8 4``) or a comma list
# (``--r 0,8,16``) become one YAML list.
LIST_FLAGS = ("--tome.r", "--bench.r", "--bench.matching")
_INT = re.compile(r"^-?\d+$")


class UsageError(Exception):
    """Bad input found while setting a command up; the command exits 2 with its message."""


def section_aliases(section: str, cls: type) -> dict[str, Alias]:
    """The dashed spellings of a command's own section: ``--a-field VALUE`` ->
    ``--<section>.a_field VALUE``; a boolean field is a switch, ``--a-field`` (true) and
    ``--no-a-field`` (false)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Alias] = {}
    for f in dataclasses.fields(cls):
        dashed = f.name.replace("_", "-")
        if hints[f.name] is bool:
            out[f"--{dashed}"] = (f"--{section}.{f.name}", "true")
            out[f"--no-{dashed}"] = (f"--{section}.{f.name}", "false")
        else:
            out[f"--{dashed}"] = f"--{section}.{f.name}"
    return out


def expand_aliases(argv: Sequence[str], aliases: Mapping[str, Alias]) -> list[str]:
    """Rewrites alias flags in ``argv`` to the dotted flags they stand for.

    ``--flag=value`` and ``--flag value`` both work; a list flag takes every following integer
    (``-r 8 8 4``) or a comma list (``--r 0,8,16``) as one list. Anything else passes through.
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        target = aliases.get(name)
        if target is None:
            out.append(arg)
            i += 1
            continue
        if isinstance(target, tuple):
            out.extend(target)
            i += 1
            continue
        i += 1
        if eq:
            values = [inline]
        elif target in LIST_FLAGS:
            values = args[i:i + 1]
            i += len(values)
            while values and i < len(args) and _INT.match(args[i]):
                values.append(args[i])
                i += 1
        else:
            values = args[i:i + 1]
            i += len(values)
        out.append(target)
        if target in LIST_FLAGS and values:
            items = [v for part in values for v in part.split(",") if v.strip()]
            bracketed = len(values) == 1 and values[0].strip().startswith("[")
            if bracketed or (target == "--tome.r" and len(items) == 1):
                out.append(values[0])
            else:
                out.append("[" + ",".join(items) + "]")
        else:
            out.extend(values)
    return out


def _alias_help(aliases: Mapping[str, Alias]) -> str:
    rows = []
    for flag, target in aliases.items():
        rows.append(f"{flag} = {target if isinstance(target, str) else ' '.join(target)}")
    return "Aliases: " + "; ".join(rows) + "."


def build_parser(cls: type, prog: str, description: str,
                 aliases: Mapping[str, Alias] | None = None,
                 extra: Callable[[Any], None] | None = None) -> Any:
    """The parser of a command whose configuration is the dataclass ``cls``.

    Args:
        cls: a dataclass whose fields are sections (and top-level scalars such as ``seed``).
        prog: the command, e.g. ``python -m tome_lab.evaluate``.
        description: what it does (shown by ``--help``).
        aliases: the command's short flags (listed at the end of ``--help``).
        extra: adds the command's own non-configuration flags (``--json``, sweep words).

    Returns:
        A ``jsonargparse.ArgumentParser`` with ``--config``, ``--print_config`` and one
        ``--<section>.<field>`` flag per field, each with its documentation.
    """
    import argparse

    from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    epilog = _alias_help(aliases) if aliases else None
    parser = ArgumentParser(prog=prog, description=description, formatter_class=Formatter,
                            epilog=epilog)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="A YAML file of any options below (e.g. the config.yaml of a "
                             "sweep point); flags after it override it.")
    if extra is not None:
        extra(parser)
    parser.add_class_arguments(cls, None)
    return parser


def config_of(cls: type[C], namespace: Any) -> C:
    """The validated configuration ``cls`` in a parsed namespace.

    Raises:
        UsageError: a value the configuration classes reject.
    """
    ns = namespace.as_dict()
    data = {f.name: ns[f.name] for f in dataclasses.fields(cls) if f.name in ns}
    try:
        return from_dict(cls, data)
    except ValueError as err:
        raise UsageError(str(err)) from None


def parse(parser: Any, cls: type[C], argv: Sequence[str] | None,
          aliases: Mapping[str, Alias] | None = None) -> tuple[C, Any]:
    """Parses a command line into its validated configuration and the raw namespace.

    Raises:
        SystemExit: ``--help`` / ``--print_config`` (0) or a bad flag (2), from jsonargparse.
        UsageError: a value the configuration classes reject.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(expand_aliases(args, aliases or {}))
    return config_of(cls, ns), ns


@contextlib.contextmanager
def setting_up() -> Iterator[None]:
    """Turns the errors of bad input met while setting up (a value, a name, a missing file,
    bad data) into :class:`UsageError`. Wrap model, data and ToMe construction in it, never
    the run itself."""
    try:
        yield
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        raise UsageError(str(err)) from err


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Turns a data error met while running (an unreadable image) into :class:`UsageError`;
    everything else propagates with its traceback."""
    from tome_lab.data import DataError

    try:
        yield
    except DataError as err:
        raise UsageError(str(err)) from err


def field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of a dataclass docstring, by field name."""
    docs: dict[str, str] = {}
    name = None
    for line in (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        head, sep, text = line.strip().partition(": ")
        top = line.startswith(" " * 8) and not line.startswith(" " * 9)
        if sep and top and head.isidentifier():
            name = head
            docs[name] = text
        elif name and line.strip():
            docs[name] += " " + line.strip()
    return docs


def add_launch_arguments(parser: Any) -> None:
    """Adds the launcher flags of the commands that run points (``ablate``, ``search``):
    ``--launcher``, ``--launch.<field>`` for each LaunchConfig field, --no-wait, --rerun."""
    from tome_lab.launch import LaunchConfig

    parser.add_argument("--launcher", type=str, default="inline",
                        help="Where the points run: inline (this process), local (a fresh "
                             "process per point), slurm (one job array), or a launcher YAML "
                             "file such as launch/gpu-cluster.yaml.")
    hints = typing.get_type_hints(LaunchConfig)
    docs = field_docs(LaunchConfig)
    for f in dataclasses.fields(LaunchConfig):
        if f.name in ("launcher", "wait"):
            continue
        hint = {"sbatch": dict[str, Any], "setup": list[str]}.get(f.name, hints[f.name])
        parser.add_argument(f"--launch.{f.name}", type=hint | None, default=None,
                            help=f"{docs.get(f.name, '')} (Overrides --launcher's value.)")
    parser.add_argument("--no_wait", "--no-wait", action="store_true",
                        help="Submit (local, slurm) and return; python -m tome_lab.launch "
                             "status FOLDER shows the states and the table later.")
    parser.add_argument("--rerun", type=str | None, default=None,
                        help="Run finished points again: failed (the failed ones) or all.")


def launch_config(args: Any) -> LaunchConfig:
    """The LaunchConfig of a command line parsed with :func:`add_launch_arguments`:
    ``--launcher`` then ``--launch.*`` flags.

    Raises:
        ValueError: a bad launcher name, file or value.
    """
    from tome_lab.launch import LaunchConfig

    ns = args.as_dict()
    given = {k: v for k, v in (ns.get("launch") or {}).items() if v is not None}
    if ns.get("no_wait"):
        given["wait"] = False
    return LaunchConfig.parse(ns.get("launcher") or "inline", **given)


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Runs a command's body; returns its exit status.

    ``SystemExit`` from the parser keeps its status (0 for ``--help``, 2 for a bad flag);
    :class:`UsageError` prints ``<prog>: error: <message>`` and returns 2; any other
    exception propagates (traceback, status 1).
    """
    try:
        status = body()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)
