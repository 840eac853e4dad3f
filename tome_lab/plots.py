"""Figures from result records: trade-off plots with Pareto fronts, heat maps, ablation points.

Every function takes a results DataFrame (:func:`tome_lab.results.load`, or any table with
the same columns) and returns a matplotlib ``Figure`` built without pyplot, so nothing
depends on a display; :func:`save` writes PNG or PDF with the command that made the figure in
the file's metadata. Intervals come from :mod:`tome_lab.stats` (Wilson, from ``top1`` and
``n_images``).

    python -m tome_lab.plots runs/matching --x gflops --y top1 --hue tome.matching \\
        -o matching.png
    python -m tome_lab.plots runs/r_sweep --preset speed -o speed.pdf
    python -m tome_lab.plots --list-presets

Record shape of a schedule search (issue 11; until it exists, any table of this shape):
one row per evaluated schedule with ``schedule`` (the per-layer r, a list or tuple with one
entry per block), ``gflops``, ``top1``, optionally ``n_images`` (for intervals) and
``method`` (``"search"`` for searched schedules; any other value, e.g. ``"constant"`` or
``"decreasing"``, is a baseline family drawn as a line). Without ``method``, a ``baseline``
column is read instead: a label such as ``"constant r=4"`` names the family by its first
word, an empty one marks a searched schedule.
"""

from __future__ import annotations

import argparse
import inspect
import math
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tome_lab import stats

LABELS = {
    "gflops": "GFLOPs per image (fvcore)",
    "gflops_base": "GFLOPs per image, unmerged",
    "top1": "top-1 accuracy (%)",
    "top5": "top-5 accuracy (%)",
    "img_per_s": "throughput (img/s)",
    "img_per_s_base": "unmerged throughput (img/s)",
    "speedup": "speed-up over the unmerged model (x)",
    "tome.r": "r (tokens merged per block)",
    "tome.matching": "matching",
    "tome.schedule": "schedule",
    "tome.prop_attn": "proportional attention",
}
HIGHER_IS_BETTER = {"img_per_s", "img_per_s_base", "speedup", "top1", "top5"}
FORMATS = (".png", ".pdf")


def label(column: str) -> str:
    """Axis label with units for a results column (the column name itself if unknown)."""
    return LABELS.get(column, column)


def _theme() -> dict[str, Any]:
    import seaborn as sns

    style = dict(sns.axes_style("whitegrid"))
    style.update(sns.plotting_context("paper", font_scale=1.1))
    return style


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, Axes]:
    import matplotlib

    with matplotlib.rc_context(_theme()):
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.add_subplot()
    return fig, ax


def _require(df: pd.DataFrame, *columns: str | None) -> None:
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        raise KeyError(f"no column {missing[0]!r} in the results; columns: "
                       f"{', '.join(map(str, df.columns))}")
    if df.empty:
        raise ValueError("the results table is empty: nothing to plot")


def _text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def _palette(n: int) -> list[tuple[float, float, float]]:
    import seaborn as sns

    return sns.color_palette("colorblind", max(n, 1))


def _errors(df: pd.DataFrame, y: str, intervals: bool) -> np.ndarray | None:
    """[2, n] lower / upper error lengths from Wilson intervals, or None."""
    if not intervals or y not in ("top1", "top5") or "n_images" not in df.columns:
        return None
    ci = stats.add_intervals(df, y=y)
    low = (ci[y] - ci[f"{y}_low"]).to_numpy(float)
    high = (ci[f"{y}_high"] - ci[y]).to_numpy(float)
    return np.stack([np.nan_to_num(low), np.nan_to_num(high)])


def _unmerged(df: pd.DataFrame) -> pd.Series:
    """Rows that are the unmerged model: GFLOPs equal to the unmerged GFLOPs."""
    if "gflops" in df.columns and "gflops_base" in df.columns:
        g, b = df["gflops"].astype(float), df["gflops_base"].astype(float)
        return (g - b).abs() <= 1e-9 * b.abs().clip(lower=1.0)
    return pd.Series(False, index=df.index)


def _legend(ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # outside the axes, so it never covers data
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  frameon=False, fontsize="small")


def _front_line(ax: Axes, df: pd.DataFrame, x: str, y: str, **kw: Any) -> pd.DataFrame:
    front = stats.pareto_front(df, x=x, y=y, minimize_x=x not in HIGHER_IS_BETTER)
    if len(front):
        xs, ys = front[x].to_numpy(float), front[y].to_numpy(float)
        # Best accuracy reachable within a budget: a step at each front point.
        where = "post" if x not in HIGHER_IS_BETTER else "pre"
        ax.step(xs, ys, where=where, color=kw.pop("color", "0.25"), lw=1.2, zorder=1,
                label=kw.pop("label", "Pareto front"), **kw)
    return front


# --------------------------------------------------------------------------- figures

def tradeoff(df: pd.DataFrame, x: str = "gflops", y: str = "top1",
             hue: str | None = "tome.matching", frontier: bool = True, intervals: bool = True,
             baseline: bool = True, title: str | None = None, lines: bool = False) -> Figure:
    """Accuracy against cost or speed, one colour per ``hue`` value, with the Pareto front.

    Args:
        df: results (one row per point); failed rows (``status != "ok"``) are dropped.
        x: the cost (``gflops``) or speed (``img_per_s``, ``speedup``) column.
        y: the accuracy column.
        hue: the column that colours points (None: one colour).
        frontier: draw the non-dominated points as a step line.
        intervals: 95% Wilson error bars (needs ``n_images``).
        baseline: mark the unmerged model (rows whose GFLOPs equal ``gflops_base``) with a
            star; without such a row and with ``x="gflops"``, a dotted line at its GFLOPs.
        title: figure title.
        lines: join each ``hue`` group's points in order of ``x`` (one line per method).

    Raises:
        KeyError: a column is missing (the message lists those there are).
        ValueError: no rows to plot.
    """
    df = _ok(df)
    _require(df, x, y, hue)
    df = df.dropna(subset=[x, y])
    _require(df, x, y)
    fig, ax = _figure()
    groups = [(None, df)] if hue is None else list(df.groupby(df[hue].map(_text), sort=True))
    for i, ((name, part), colour) in enumerate(zip(groups, _palette(len(groups)), strict=True)):
        err = _errors(part, y, intervals)
        # the colour-blind palette has 10 colours: later groups change marker and dash
        marker, dash = "osD^v"[(i // 10) % 5], ("-", "--", ":", "-.")[(i // 10) % 4]
        if lines:
            part = part.sort_values(x)
            err = _errors(part, y, intervals)
        ax.errorbar(part[x].to_numpy(float), part[y].to_numpy(float), yerr=err,
                    fmt=marker + (dash if lines else ""), color=colour, ms=5, capsize=2, lw=1,
                    zorder=3,
                    label=None if name is None else f"{hue} = {name}")
    if frontier:
        _front_line(ax, df, x, y)
    if baseline:
        base = df[_unmerged(df)]
        if len(base):
            ax.scatter(base[x].to_numpy(float), base[y].to_numpy(float), marker="*", s=160,
                       facecolor="none", edgecolor="black", lw=1.2, zorder=4, label="unmerged")
        elif x == "gflops" and "gflops_base" in df.columns:
            ax.axvline(float(df["gflops_base"].iloc[0]), color="0.4", ls=":", lw=1,
                       label="unmerged GFLOPs")
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y) + (", 95% Wilson CI" if _errors(df, y, intervals) is not None
                              else ""))
    if title:
        ax.set_title(title)
    _legend(ax)
    return fig


def search_vs_baselines(df: pd.DataFrame, x: str = "gflops", y: str = "top1",
                        method: str = "method", searched: str = "search",
                        intervals: bool = True, title: str | None = None) -> Figure:
    """Searched schedules (points and their Pareto front) against baseline families (lines).

    Args:
        df: schedule records (see the module docstring) with a ``method`` column.
        x: cost column.
        y: accuracy column.
        method: the column naming each row's family.
        searched: the ``method`` value of searched schedules.
        intervals: 95% Wilson error bars (needs ``n_images``).
        title: figure title.
    """
    df = _ok(df)
    if method not in df.columns and "baseline" in df.columns:
        df = df.assign(**{method: df["baseline"].map(_family)})
    _require(df, x, y, method)
    fig, ax = _figure()
    families = sorted(df[method].map(str).unique(), key=lambda m: (m == searched, m))
    for fam, colour in zip(families, _palette(len(families)), strict=True):
        part = df[df[method].map(str) == fam].sort_values(x)
        err = _errors(part, y, intervals)
        if fam == searched:
            ax.errorbar(part[x].to_numpy(float), part[y].to_numpy(float), yerr=err, fmt="o",
                        color=colour, ms=4, capsize=2, lw=0.8, alpha=0.8, zorder=3,
                        label=f"{fam} ({len(part)} schedules)")
            _front_line(ax, part, x, y, color=colour, label=f"{fam}: Pareto front")
        else:
            ax.errorbar(part[x].to_numpy(float), part[y].to_numpy(float), yerr=err, fmt="s-",
                        color=colour, ms=5, capsize=2, lw=1.2, zorder=2, label=fam)
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    if title:
        ax.set_title(title)
    _legend(ax)
    return fig


def _family(baseline: Any) -> str:
    """``"constant r=4"`` -> ``"constant"``; no baseline label -> ``"search"``."""
    if baseline is None or (isinstance(baseline, float) and math.isnan(baseline)) or \
            not str(baseline).strip():
        return "search"
    return str(baseline).split()[0]


def schedules_of(df: pd.DataFrame, schedule: str = "schedule") -> np.ndarray:
    """[n, depth] per-layer r of each row's ``schedule`` (a list or tuple per row).

    Raises:
        ValueError: a row's schedule is not a sequence, or the lengths differ.
    """
    rows = []
    for i, s in enumerate(df[schedule]):
        if not isinstance(s, (list, tuple, np.ndarray)):
            raise ValueError(f"row {i}: {schedule!r} must be a per-layer list of r, got {s!r}")
        rows.append([int(v) for v in s])
    if len({len(r) for r in rows}) > 1:
        raise ValueError(f"schedules of different depths: {sorted({len(r) for r in rows})}")
    return np.array(rows, dtype=int)


def r_heatmap(df: pd.DataFrame, schedule: str = "schedule", x: str = "gflops",
              y: str = "top1", pareto_only: bool = True, title: str | None = None) -> Figure:
    """Heat map of per-layer r: layers across, schedules down, sorted by GFLOPs.

    Args:
        df: schedule records (see the module docstring).
        schedule: the column holding each row's per-layer r.
        x: cost column (sorts the rows; shown in the row labels).
        y: accuracy column (shown in the row labels).
        pareto_only: keep only the non-dominated schedules (``x`` minimised, ``y``
            maximised).
        title: figure title.
    """
    import matplotlib
    import seaborn as sns

    df = _ok(df)
    _require(df, schedule, x, y)
    rows = stats.pareto_front(df, x=x, y=y) if pareto_only else df.sort_values(x)
    r = schedules_of(rows, schedule)  # (n, depth)
    names = [f"{g:.4g} GFLOPs, {a:.1f}%" for g, a in zip(rows[x], rows[y], strict=True)]
    depth = r.shape[1]
    height = 1.2 + 0.32 * len(rows)
    fig, ax = _figure(width=max(5.0, 2.6 + 0.42 * depth), height=height)
    with matplotlib.rc_context(_theme()):
        sns.heatmap(pd.DataFrame(r, index=names, columns=range(1, depth + 1)), ax=ax,
                    cmap="viridis", annot=depth <= 16 and len(rows) <= 30, fmt="d",
                    cbar_kws={"label": "r (tokens merged in the block)"}, linewidths=0.5,
                    linecolor="white")
    ax.set_xlabel("block")
    ax.set_ylabel("Pareto-optimal schedules" if pareto_only else "schedules")
    ax.tick_params(axis="y", rotation=0)
    if title:
        ax.set_title(title)
    return fig


def tokens_per_layer(df: pd.DataFrame, tokens: str = "tokens", hue: str = "name",
                     title: str | None = None) -> Figure:
    """Tokens leaving each block, one line per row.

    Args:
        df: results whose ``tokens`` column holds a per-block list (``tome_lab.evaluate``).
        tokens: the column with the per-block token counts.
        hue: the column naming each line.
        title: figure title.
    """
    df = _ok(df)
    _require(df, tokens, hue)
    counts = schedules_of(df, tokens)  # (n, depth)
    fig, ax = _figure()
    blocks = np.arange(1, counts.shape[1] + 1)
    for (name, row), colour in zip(zip(df[hue].map(_text), counts, strict=True),
                                   _palette(len(df)), strict=True):
        ax.plot(blocks, row, marker="o", ms=3, color=colour, label=name)
    ax.set_xlabel("block")
    ax.set_ylabel("tokens leaving the block")
    ax.set_xticks(blocks)
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title)
    _legend(ax)
    return fig


def ablation(df: pd.DataFrame, x: str = "name", y: str = "top1", intervals: bool = True,
             order: Sequence[Any] | None = None, title: str | None = None) -> Figure:
    """Point plot of one ablation (Table-1 style): one point per setting with its interval.

    Settings are listed down the y axis (names stay readable), accuracy across.

    Args:
        df: results, one row per setting.
        x: the column naming the setting.
        y: the accuracy column.
        intervals: 95% Wilson error bars (needs ``n_images``).
        order: settings in display order (default: as in ``df``).
        title: figure title.
    """
    df = _ok(df)
    _require(df, x, y)
    df = df.assign(_setting=df[x].map(_text))
    if order is not None:
        wanted = [_text(o) for o in order]
        unknown = sorted(set(wanted) - set(df["_setting"]))
        if unknown:
            raise ValueError(f"order names settings not in the table: {unknown}")
        df = df.set_index("_setting").loc[wanted].reset_index()
    err = _errors(df, y, intervals)
    fig, ax = _figure(height=1.2 + 0.35 * len(df))
    pos = np.arange(len(df))
    ax.errorbar(df[y].to_numpy(float), pos, xerr=err, fmt="o", color=_palette(1)[0], capsize=3,
                ms=6, lw=1.2)
    ax.set_yticks(pos, df["_setting"].tolist())
    ax.invert_yaxis()
    ax.set_ylabel(label(x))
    ax.set_xlabel(label(y) + (" with 95% Wilson CI" if err is not None else ""))
    if title:
        ax.set_title(title)
    return fig


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- saving

def save(fig: Figure, path: str | Path, command: str | None = None, dpi: int = 150) -> Path:
    """Writes ``fig`` as PNG or PDF (by suffix), recording ``command`` in the metadata.

    PNG: text chunks ``Software`` and ``Description`` (the command); PDF: ``Creator`` and
    ``Subject`` (the command).

    Raises:
        ValueError: a suffix other than ``.png`` / ``.pdf``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot write {path.name!r}: use one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        meta = {"Software": "tome_lab.plots", "Description": command or ""}
    else:
        meta = {"Creator": "tome_lab.plots", "Subject": command or ""}
    fig.savefig(path, dpi=dpi, metadata=meta, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- command line

PLOTS: dict[str, Callable[..., Figure]] = {
    "tradeoff": tradeoff, "search": search_vs_baselines, "heatmap": r_heatmap,
    "tokens": tokens_per_layer, "ablation": ablation,
}

# name -> (plot kind, default options; command-line flags override them)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "pareto": ("tradeoff", {"x": "gflops", "y": "top1", "hue": "tome.matching"}),
    "speed": ("tradeoff", {"x": "img_per_s", "y": "top1", "hue": "tome.matching"}),
    "speedup": ("tradeoff", {"x": "speedup", "y": "top1", "hue": "tome.matching"}),
    "r-sweep": ("tradeoff", {"x": "gflops", "y": "top1", "hue": "tome.r"}),
    "ablation": ("ablation", {"x": "name", "y": "top1"}),
    "tokens": ("tokens", {"hue": "name"}),
    "heatmap": ("heatmap", {"schedule": "schedule", "x": "gflops", "y": "top1"}),
    "search": ("search", {"x": "gflops", "y": "top1", "method": "method"}),
}


def _parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {name:9s} {kind}: " + ", ".join(f"{k}={v}" for k, v in opts.items())
                        for name, (kind, opts) in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m tome_lab.plots",
        description=__doc__.split("\n\n")[0] + "\n\npresets:\n" + presets,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="results folders (runs/<sweep>), or CSV/JSON "
                        "tables of records")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named figure")
    parser.add_argument("--kind", choices=sorted(PLOTS),
                        help="the plot (default: the preset's, else tradeoff)")
    parser.add_argument("--x", help="x column (e.g. gflops, img_per_s, speedup)")
    parser.add_argument("--y", help="y column (e.g. top1)")
    parser.add_argument("--hue", help="colour column (e.g. tome.matching); 'none' for one")
    parser.add_argument("--schedule", help="heat map: the column of per-layer r lists "
                        "(default schedule; tome.r for explicit-list sweeps)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--no-frontier", action="store_true", help="no Pareto step line")
    parser.add_argument("--lines", action="store_true",
                        help="trade-off: join each colour's points (one line per method)")
    parser.add_argument("--query", help="keep the rows matching this pandas query, e.g. "
                        "\"not method.str.contains('seed=[12]')\"")
    parser.add_argument("--no-intervals", action="store_true", help="no error bars")
    parser.add_argument("--all", action="store_true",
                        help="heat map: every schedule, not only the Pareto-optimal ones")
    parser.add_argument("-o", "--output", help="output file, .png or .pdf")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--list-presets", action="store_true", help="list presets and exit")
    return parser


def read_table(paths: Iterable[str]) -> pd.DataFrame:
    """Results from folders (the store) or from ``.csv`` / ``.json`` / ``.jsonl`` tables.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    import json

    from tome_lab import results

    frames = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"no such results folder or file: {p}")
        if path.is_dir():
            frames.append(results.load(path))
        elif path.suffix == ".csv":
            frames.append(pd.read_csv(path))
        elif path.suffix in (".json", ".jsonl"):
            text = path.read_text(encoding="utf-8")
            recs = ([json.loads(line) for line in text.splitlines() if line.strip()]
                    if path.suffix == ".jsonl" else json.loads(text))
            frame = pd.DataFrame(recs if isinstance(recs, list) else [recs])
            if "setting" in frame.columns:  # paired-sweep rows: the method without schedule
                frame["method"] = frame["setting"].map(
                    lambda v: results.setting_method(v) if isinstance(v, str) else v)
            frames.append(frame)
        else:
            raise FileNotFoundError(f"{p}: not a results folder, .csv, .json or .jsonl")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _parse_lists(df: pd.DataFrame) -> pd.DataFrame:
    """JSON list cells written by ``results.write_csv`` back to tuples."""
    import json

    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            vals = out[col]
            if vals.map(lambda v: isinstance(v, str) and v.startswith("[")).all():
                out[col] = vals.map(lambda v: tuple(json.loads(v)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad command line or input)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.list_presets:
        for name, (kind, opts) in PRESETS.items():
            print(f"{name}: {kind} " + " ".join(f"--{k} {v}" for k, v in opts.items()))
        return 0
    if not args.paths or not args.output:
        print("error: give at least one results folder and -o OUTPUT (.png or .pdf)",
              file=sys.stderr)
        return 2
    preset_kind, preset_opts = PRESETS[args.preset] if args.preset else PRESETS["pareto"]
    kind = args.kind or preset_kind
    opts = dict(preset_opts) if kind == preset_kind else {}
    accepted = set(inspect.signature(PLOTS[kind]).parameters) - {"df"}
    given = {"x": args.x, "y": args.y, "title": args.title, "schedule": args.schedule,
             ("method" if kind == "search" else "hue"): args.hue,
             "frontier": False if args.no_frontier else None,
             "lines": True if args.lines else None,
             "intervals": False if args.no_intervals else None,
             "pareto_only": False if args.all else None}
    for key, value in given.items():
        if value is None:
            continue
        if key not in accepted:
            flag = {"method": "hue", "frontier": "no-frontier", "intervals": "no-intervals",
                    "pareto_only": "all", "lines": "lines"}.get(key, key)
            print(f"error: the {kind} plot takes no --{flag}; it takes: "
                  f"{', '.join(sorted(accepted))}", file=sys.stderr)
            return 2
        opts[key] = None if key == "hue" and value == "none" else value
    try:
        df = _parse_lists(read_table(args.paths))
        if args.query:
            try:
                df = df.query(args.query, engine="python")
            except Exception as err:  # pandas raises many kinds for a bad expression
                raise ValueError(f"--query {args.query!r} failed: {err}; the columns are "
                                 f"{', '.join(map(str, df.columns))}") from err
        fig = PLOTS[kind](df, **opts)
        cmd = "python -m tome_lab.plots " + " ".join(shlex.quote(a) for a in args_list)
        out = save(fig, args.output, command=cmd, dpi=args.dpi)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["tradeoff", "search_vs_baselines", "r_heatmap", "tokens_per_layer", "ablation",
           "save", "read_table", "schedules_of", "label", "PRESETS", "main"]
