"""Markdown table of a ``benchmarks/paired_sweep.py --json`` file, with a verdict per row.

    .venv/bin/python benchmarks/paired_table.py benchmarks/tasks/clutter_knobs.jsonl

One row per setting: top-1 with its 95% Wilson interval, GFLOPs, and against the first
setting (the reference) the images right only with the reference / only with this setting,
McNemar's exact p and the 95% paired bootstrap interval of the difference. The verdict ranks
a setting only where an interval separates it from the reference (see
:func:`tome_lab.report.paired_verdict`). The table is the docs' own (``tome_lab.report``), so
what this prints is what the docs show.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tome_lab.report import paired_rows as table
from tome_lab.report import paired_verdict as verdict

__all__ = ["table", "verdict"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="paired_sweep.py --json outputs")
    args = ap.parse_args()
    for f in args.files:
        rows = [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
        print(f"<!-- {f} -->\n{table(rows)}\n")


if __name__ == "__main__":
    main()
