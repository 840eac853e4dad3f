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

import shutil
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tome_lab import cli, launch, preflight, results
from tome_lab.config import ExperimentConfig
from tome_lab.sweep import Point, expand, key_table

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
skips finished points, ok or failed (--rerun failed|all runs them again). Every point is
checked against its model (on the meta device) before anything runs.

Launchers: --launcher inline (default: this process) | local (a fresh process per point,
--launch.parallel at a time) | slurm (one job array) | FILE.yaml (see launch/), and any
--launch.<field> on top; --no-wait submits and returns (python -m tome_lab.launch status DIR).
Exit status: 0 all points ok, 1 some point failed, 2 bad command line.
"""


# --------------------------------------------------------------------------- running

def point_dir(folder: Path, point: Point) -> Path:
    """The folder of ``point`` in ``folder``: an existing one with its hash, else a new name."""
    return launch.point_dir(folder, point)


def run_sweep(points: Sequence[Point], folder: str | Path, fn: PointFn | str | None = None,
              progress: bool = True, launcher: launch.LaunchConfig | None = None,
              rerun: str | None = None) -> list[dict[str, Any]]:
    """Runs every point of a sweep that has no finished result (see :func:`tome_lab.launch.run`).

    Args:
        points: validated points (see :func:`tome_lab.sweep.expand`).
        folder: the sweep folder; created if missing.
        fn: the point function (a callable runs inline only), or ``module:function``; None
            means :func:`tome_lab.evaluate.evaluate`.
        progress: show a tqdm progress bar on stderr.
        launcher: where the points run; None: inline, in this process.
        rerun: None (reuse finished results, ok or failed), ``"failed"`` or ``"all"``.

    Returns:
        One record per point, in order, each with ``"ran"`` (False: a finished result was
        reused), ``"dir"`` (the point's folder) and ``"state"``.
    """
    return launch.run(points, folder, DEFAULT_FN if fn is None else fn, launcher, rerun=rerun,
                      progress=progress)


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
        cli.add_launch_arguments(parser)

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
        launcher = cli.launch_config(args)
        if args.rerun not in (None, *launch.RERUN):
            raise ValueError(f"--rerun takes {' or '.join(launch.RERUN)}, got {args.rerun!r}")
        if not args.dry_run:
            launch.resolve_fn(args.fn)
        if launcher.launcher == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--launcher slurm needs Slurm's sbatch on PATH; for a one-node "
                             "test cluster run launch/slurm-local.sh as root")
        # everything that needs the model, on the meta device: nothing runs if a point is bad
        preflight.check_points(points)
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
        records = run_sweep(points, folder, args.fn, progress=args.progress,
                            launcher=launcher, rerun=args.rerun)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished points are kept in {folder}; run the same command "
              f"again to resume", file=sys.stderr)
        return 130
    except RuntimeError as err:  # submission failed: nothing was queued
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not launcher.wait and any(r["state"] in ("queued", "running") for r in records):
        return 0  # launch printed the job ids and the status command
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
