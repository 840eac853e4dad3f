"""The ablation runner: ``python -m tome_lab.ablate matching=bipartite,pruning``.

Turns ``key=v1,v2`` words (the grammar of :mod:`tome_lab.sweep`) and ``--`` flags (jsonargparse
over the typed :class:`~tome_lab.config.ExperimentConfig`) into a validated sweep, runs every
point that has no finished result yet, keeps each result in the store of
:mod:`tome_lab.results`, writes ``results.csv`` and prints a table.

The runner takes the function that evaluates one point as a parameter (``fn``, default
:func:`tome_lab.evaluate.evaluate`), so the store, resume and failure logic is the same for
any point function (``--fn module:function`` on the command line).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tome_lab import results
from tome_lab.config import ExperimentConfig
from tome_lab.sweep import Point, config_to_dict, expand, key_table

PointFn = Callable[[ExperimentConfig], Mapping[str, Any]]

DEFAULT_FN = "tome_lab.evaluate:evaluate"

# The columns of the printed table: metric name -> (header, format).
TABLE_METRICS: dict[str, tuple[str, str]] = {
    "top1": ("top-1", "{:.2f}"),
    "gflops": ("GFLOPs", "{:.4f}"),
    "img_per_s": ("img/s", "{:.0f}"),
    "speedup": ("speed-up", "{:.2f}x"),
}

GRAMMAR = """\
Sweep words (bare key=value words; several axes expand to their cartesian product):
  matching=bipartite,pruning        an axis: one point per value
  r=8                               one value: a fixed override
  'r=range(0,17,4)'                 r = 0, 4, 8, 12, 16 (Python's range, end excluded;
                                    quote it: the shell reads parentheses)
  schedule=[8,8,4,4,2,2]            a bracketed list stays ONE value (here an explicit
                                    per-layer r, i.e. r=[...] with schedule=list)
  r+schedule=6+decreasing,8+constant
                                    ZIP: keys joined by '+' take values joined by '+', and
                                    walk together (2 points here) instead of crossing (4)
  tome.options.gflops=0.5           dotted paths reach every field; '--tome.r 8' sets the
                                    base configuration the words then modify
  A later word for the same key replaces the earlier axis, so a sweep file's axes can be
  overridden from the command line: --config ablations/matching.yaml r=4

Short keys:
  {short}
  i.e. model (model.name), data (data.name), data_path / path (data.path), and every option
  of a matching or schedule plug-in (tome.options.<name>).

Results: one folder per point under --out (default runs/<name>/), each with config.yaml and
result.json (written last, atomically: it marks the point done). Re-running the same command
skips finished points. Exit status: 0 all points ok, 1 some point failed, 2 bad command line.
"""


# --------------------------------------------------------------------------- running

def resolve_fn(spec: str) -> PointFn:
    """Imports a point function from ``module:function``.

    Raises:
        ValueError: the module or function cannot be found.
    """
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--fn takes module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load point function {spec!r}: {err}") from None
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn


def point_dir(folder: Path, point: Point) -> Path:
    """The folder of ``point`` in ``folder``: an existing one with its hash, else a new name."""
    existing = sorted(folder.glob(f"*-{point.key}"))
    return existing[0] if existing else folder / point.dirname


def run_point(point: Point, folder: Path, fn: PointFn) -> tuple[dict[str, Any], bool]:
    """Runs one point unless it has finished before; records its result atomically.

    Args:
        point: the validated point.
        folder: the sweep folder.
        fn: evaluates one configuration and returns flat metrics.

    Returns:
        The point's record and whether it ran now (False: a finished result was reused).
    """
    pdir = point_dir(folder, point)
    old = results.read_result(pdir)
    if old is not None and old.get("status") == "ok":
        return old, False
    pdir.mkdir(parents=True, exist_ok=True)
    results.remove_stale_temps(pdir)
    config = config_to_dict(point.config)
    results.write_text_atomic(pdir / results.CONFIG, yaml.safe_dump(config, sort_keys=False))
    started, t0 = results.now(), time.perf_counter()
    metrics: dict[str, Any] = {}
    error = None
    try:
        out = fn(point.config)
        if not isinstance(out, Mapping):
            raise TypeError(f"the point function returned {type(out).__name__}, not a mapping")
        metrics = dict(out)
    except Exception as err:  # a failing point is recorded; the sweep goes on
        error = {"type": type(err).__name__, "message": str(err),
                 "traceback": traceback.format_exc()}
    record = {
        "schema": results.SCHEMA,
        "status": "failed" if error else "ok",
        "key": point.key,
        "name": point.name,
        "overrides": {k: list(v) if isinstance(v, tuple) else v
                      for k, v in point.overrides.items()},
        "config": config,
        "metrics": metrics,
        "error": error,
        "env": results.environment(metrics.get("device", point.config.eval.device),
                                   metrics.get("dtype", point.config.eval.dtype)),
        "started": started,
        "finished": results.now(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    results.write_json_atomic(pdir / results.RESULT, record)
    return record, True


def run_sweep(points: Sequence[Point], folder: str | Path, fn: PointFn | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Runs every point of a sweep that has not finished, in order.

    Args:
        points: validated points (see :func:`tome_lab.sweep.expand`).
        folder: the sweep folder; created if missing.
        fn: the point function; None means :func:`tome_lab.evaluate.evaluate`.
        progress: show a tqdm progress bar on stderr.

    Returns:
        One record per point, in order, each with two added keys: ``"ran"`` (False: a
        finished result was reused) and ``"dir"`` (the point's folder).
    """
    from tqdm.auto import tqdm

    fn = resolve_fn(DEFAULT_FN) if fn is None else fn
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(points, desc="sweep", unit="point", disable=not progress, file=sys.stderr)
    for point in bar:
        bar.set_postfix_str(point.name[:40])
        record, ran = run_point(point, folder, fn)
        records.append({**record, "ran": ran, "dir": str(point_dir(folder, point))})
    bar.close()
    return records


def sweep_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The records of :func:`run_sweep` as rows of :func:`tome_lab.results.load`'s frame."""
    return pd.DataFrame([results.record_row(r, Path(r["dir"])) for r in records])


def format_table(points: Sequence[Point], records: Sequence[Mapping[str, Any]]) -> str:
    """The printed table: the swept keys, then top-1, GFLOPs, img/s and speed-up per point."""
    rows = []
    for point, rec in zip(points, records, strict=True):
        row: dict[str, Any] = dict(point.labels)
        metrics = rec.get("metrics") or {}
        for name, (header, fmt) in TABLE_METRICS.items():
            value = metrics.get(name)
            row[header] = fmt.format(value) if isinstance(value, (int, float)) else "-"
        row["status"] = rec.get("status", "?") + ("" if rec.get("ran", True) else " (reused)")
        rows.append(row)
    return pd.DataFrame(rows).to_string(index=False)


# --------------------------------------------------------------------------- command line

def build_parser() -> Any:
    """The jsonargparse parser (:func:`tome_lab.cli.build_parser` over ExperimentConfig), with
    the sweep options and the words."""
    from tome_lab import cli

    short = textwrap.fill(", ".join(sorted(k for k in key_table() if "." not in k)), width=90,
                          subsequent_indent="  ")

    def extra(parser: Any) -> None:
        parser.add_argument("words", nargs="*", default=[],
                            help="Sweep words key=v1,v2 (see above).")
        parser.add_argument("--sweep", type=list[str], default=[],
                            help="Sweep words from a config file; command-line words come "
                                 "after and replace axes of the same key.")
        parser.add_argument("--name", type=str | None, default=None,
                            help="Sweep name (folder runs/<name>); default: the config file's "
                                 "name, else the swept keys.")
        parser.add_argument("--out", type=str | None, default=None,
                            help="Sweep folder (default: runs/<name> in the current "
                                 "directory).")
        parser.add_argument("--dry_run", "--dry-run", action="store_true",
                            help="List the validated points (and which have finished) and "
                                 "exit.")
        parser.add_argument("--progress", type=bool, default=True, help="Show a progress bar.")
        parser.add_argument("--fn", type=str, default=DEFAULT_FN,
                            help="The point function, module:function, taking an "
                                 "ExperimentConfig and returning flat metrics.")

    return cli.build_parser(
        ExperimentConfig, "python -m tome_lab.ablate",
        __doc__.split("\n\n")[0] + "\n\n" + GRAMMAR.format(short=short), extra=extra)


def _sweep_name(args: Any, points: Sequence[Point]) -> str:
    if args.name:
        return args.name
    if args.config:
        return Path(str(args.config[-1])).stem
    keys = list(dict.fromkeys(k for p in points for k in p.labels))
    return "_".join(keys)[:60] if keys else "default"


def _base_dict(args: Any) -> dict[str, Any]:
    ns = args.as_dict()
    return {k: ns[k] for k in ("model", "data", "tome", "eval", "seed")}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    0: every point ok; 1: some point failed (the others are recorded); 2: a bad command line
    (nothing ran); 130: interrupted with Ctrl-C (finished points kept).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --print_config, or a bad flag (status 2)
        return int(exc.code or 0)
    words = list(args.sweep) + list(args.words)
    try:
        points = expand(words, _base_dict(args))
        fn = None if args.dry_run else resolve_fn(args.fn)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = _sweep_name(args, points)
    folder = Path(args.out) if args.out else Path("runs") / name
    if args.dry_run:
        print(f"{len(points)} point(s) in {folder}:")
        for p in points:
            done = results.read_result(point_dir(folder, p)) if folder.is_dir() else None
            state = "done" if done and done.get("status") == "ok" else "to run"
            print(f"  {p.name}  [{p.key}]  {state}")
        return 0
    print(f"sweep {name!r}: {len(points)} point(s) -> {folder}", file=sys.stderr)
    try:
        records = run_sweep(points, folder, fn, progress=args.progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished points are kept in {folder}; run the same command "
              f"again to resume", file=sys.stderr)
        return 130
    results.write_csv(sweep_frame(records), folder / "results.csv")
    print(format_table(points, records))
    ran = sum(r["ran"] for r in records)
    failed = [(p, r) for p, r in zip(points, records, strict=True) if r["status"] != "ok"]
    print(f"\n{len(points)} point(s): {ran} ran, {len(points) - ran} reused, "
          f"{len(failed)} failed. Results: {folder / 'results.csv'}")
    if failed:
        print("Failed points (traceback in each result.json):", file=sys.stderr)
        for p, r in failed:
            err = r.get("error") or {}
            print(f"  {p.name}: {err.get('type')}: {err.get('message')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
