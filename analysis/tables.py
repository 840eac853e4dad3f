"""Markdown tables of finished sweeps, read from their result files only.

    python analysis/tables.py runs/matching runs/prop_attn      # one table per sweep folder

Each table lists the points in the order they finished, by their readable names, with
top-1 and its 95% Wilson interval (from ``top1`` and ``n_images``, by
:func:`tome_lab.stats.wilson_percent`), GFLOPs, img/s and speed-up against the unmerged model
(``-`` where a metric is missing, e.g. with ``eval.speed=false``). This is how the tables in
benchmarks/README.md are made.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from tome_lab import results, stats

COLUMNS = {"top1": ("top-1", "{:.2f}"), "top5": ("top-5", "{:.2f}"),
           "gflops": ("GFLOPs", "{:.4f}"), "img_per_s": ("img/s", "{:.0f}"),
           "speedup": ("speed-up", "{:.2f}x")}


def interval(top1: object, n: object, level: float = 0.95) -> str:
    """``"[low, high]"`` in percent (Wilson), or ``-`` when either number is missing."""
    if not isinstance(top1, (int, float)) or not isinstance(n, (int, float)) or \
            top1 != top1 or n != n:
        return "-"
    ci = stats.wilson_percent(float(top1), int(n), level)
    return f"[{ci.low:.1f}, {ci.high:.1f}]"


def markdown(df: pd.DataFrame) -> str:
    """One sweep's rows as a Markdown table (a 95% CI column when ``n_images`` is there)."""
    df = df.sort_values("finished", kind="stable")
    with_ci = "top1" in df.columns and "n_images" in df.columns
    header = ["point"]
    for k, (h, _) in COLUMNS.items():
        if k in df.columns:
            header.append(h)
            if k == "top1" and with_ci:
                header.append("95% CI")
    header += ["images"] if with_ci else []
    header.append("status")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in df.iterrows():
        cells = [f"`{row['name']}`"]
        for key, (_, fmt) in COLUMNS.items():
            if key in df.columns:
                v = row[key]
                cells.append(fmt.format(v) if isinstance(v, (int, float)) and v == v else "-")
                if key == "top1" and with_ci:
                    cells.append(interval(v, row["n_images"]))
        if with_ci:
            n = row["n_images"]
            cells.append(f"{int(n)}" if isinstance(n, (int, float)) and n == n else "-")
        cells.append(str(row["status"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints one Markdown table per sweep folder given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="sweep folders (runs/<name>)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        try:
            df = results.load(folder)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"**{folder}**\n\n{markdown(df) if not df.empty else '(no results)'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
