"""``python -m tome_lab.launch status FOLDER [--wait]``: the states and table of a launch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tome_lab import results
from tome_lab.launch.backends import run
from tome_lab.launch.claims import format_status, status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tome_lab.launch status FOLDER [--wait]``: states and table of a launch.

    Exit status: 0 every point done, 1 some failed, 3 some still queued or running, 2 a bad
    command line or a folder without a launch.
    """
    parser = argparse.ArgumentParser(prog="python -m tome_lab.launch",
                                     description="Status of a launched sweep.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="the state of every point of a launched sweep folder")
    st.add_argument("folder")
    st.add_argument("--wait", action="store_true", help="wait until no point is queued or "
                                                         "running, with a progress bar")
    drive = sub.add_parser("_drive", help=argparse.SUPPRESS)
    drive.add_argument("spec")
    args = parser.parse_args(argv)
    if args.cmd == "_drive":
        import pickle

        with open(args.spec, "rb") as f:
            spec = pickle.load(f)
        run(spec["points"], spec["folder"], spec["fn"], spec["cfg"], progress=False,
            owner=spec.get("owner"))
        return 0
    try:
        records, code = status(args.folder, do_wait=args.wait)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_status(records))
    done = [r for r in records if r.get("status") in ("ok", "failed") and "config" in r]
    if done:
        import pandas as pd

        frame = pd.DataFrame([results.record_row(r, Path(r["dir"])) for r in done])
        results.write_csv(frame, Path(args.folder) / "results.csv")
    return code

