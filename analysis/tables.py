"""Markdown tables of finished sweeps, read from their result files only.

    python analysis/tables.py runs/matching runs/prop_attn      # one table per sweep folder

Each table lists the points in the order they finished, by their readable names, with
top-1, GFLOPs, img/s and speed-up against the unmerged model (``-`` where a metric is
missing, e.g. with ``eval.speed=false``). This is how the tables in benchmarks/README.md are
made.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from tome_lab import results

COLUMNS = {"top1": ("top-1", "{:.2f}"), "top5": ("top-5", "{:.2f}"),
           "gflops": ("GFLOPs", "{:.4f}"), "img_per_s": ("img/s", "{:.0f}"),
           "speedup": ("speed-up", "{:.2f}x")}


def markdown(df: pd.DataFrame) -> str:
    """One sweep's rows as a Markdown table."""
    df = df.sort_values("finished", kind="stable")
    header = ["point", *(h for k, (h, _) in COLUMNS.items() if k in df.columns), "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in df.iterrows():
        cells = [f"`{row['name']}`"]
        for key, (_, fmt) in COLUMNS.items():
            if key in df.columns:
                v = row[key]
                cells.append(fmt.format(v) if isinstance(v, (int, float)) and v == v else "-")
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
