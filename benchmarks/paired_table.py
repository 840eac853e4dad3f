"""Markdown table of a ``benchmarks/paired_sweep.py --json`` file, with a verdict per row.

    .venv/bin/python benchmarks/paired_table.py benchmarks/tasks/clutter_knobs.jsonl

One row per setting: top-1 with its 95% Wilson interval, GFLOPs, and against the first
setting (the reference) the images right only with the reference / only with this setting,
McNemar's exact p and the 95% paired bootstrap interval of the difference. The verdict ranks
a setting only where an interval separates it from the reference: "above" / "below" when the
two Wilson intervals are disjoint, "below (paired)" / "above (paired)" when they overlap but
the paired interval of the difference excludes 0, and "not distinguishable here" otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def verdict(ref: dict, row: dict) -> str:
    """``not distinguishable here`` unless a 95% interval separates ``row`` from ``ref``."""
    if row["low"] > ref["high"]:
        return "above"
    if row["high"] < ref["low"]:
        return "below"
    if row["diff_low"] > 0:  # reference - this, paired on the same images
        return "below (paired)"
    if row["diff_high"] < 0:
        return "above (paired)"
    return "not distinguishable here"


def table(rows: list[dict]) -> str:
    ref = rows[0]
    lines = ["| setting | top-1 [95% CI] | GFLOPs | right only with reference / only with this "
             "| McNemar p | reference - this [95% paired CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    for i, row in enumerate(rows):
        cells = [f"`{row['setting']}`" + (" (reference)" if i == 0 else ""),
                 f"{row['top1']:.1f} [{row['low']:.1f}, {row['high']:.1f}]",
                 f"{row['gflops']:.4f}"]
        if i == 0:
            cells += ["-", "-", "-", "-"]
        else:
            cells += [f"{row['only_ref']} / {row['only_this']}", f"{row['mcnemar_p']:.2g}",
                      f"{row['diff']:+.1f} [{row['diff_low']:+.1f}, {row['diff_high']:+.1f}]",
                      verdict(ref, row)]
        lines.append("| " + " | ".join(cells) + " |")
    n = {row["n_images"] for row in rows}
    return "\n".join(lines) + f"\n\n({', '.join(map(str, sorted(n)))} test images; " \
        f"{rows[0]['model']} on {rows[0]['data']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="paired_sweep.py --json outputs")
    args = ap.parse_args()
    for f in args.files:
        rows = [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
        print(f"<!-- {f} -->\n{table(rows)}\n")


if __name__ == "__main__":
    main()
