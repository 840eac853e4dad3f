"""Wall time of one 8-point sweep under each launcher, measured in one sitting.

    .venv/bin/python benchmarks/launchers.py --json benchmarks/launchers.json

Runs the same command, ``python -m tome_lab.ablate matching=bipartite,pruning r=2,4,6,8
--data.limit 500 --eval.speed false`` (the embedded model on 500 held-out digits), once per
launcher into a fresh folder: ``inline``, ``local`` with 2 points at a time, and ``slurm`` on the
cluster of ``launch/slurm-local.sh`` (2 array tasks at a time; skipped without ``sbatch``). The
time is the whole command's wall time: start-up, validation, submission, waiting, table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["matching=bipartite,pruning", "r=2,4,6,8", "--data.limit", "500",
         "--eval.speed", "false", "--progress", "false"]
LAUNCHERS = {
    "inline": ["--launcher", "inline"],
    "local": ["--launcher", "local", "--launch.parallel", "2"],
    "slurm": ["--launcher", "slurm", "--launch.parallel", "2", "--launch.poll_s", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--only", nargs="*", default=list(LAUNCHERS), choices=list(LAUNCHERS))
    args = parser.parse_args()
    out: dict[str, object] = {"command": "python -m tome_lab.ablate " + " ".join(SWEEP),
                              "host": platform.node(), "cpu_count": os.cpu_count(),
                              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            if name == "slurm" and shutil.which("sbatch") is None:
                print("slurm: skipped (no sbatch)", file=sys.stderr)
                continue
            cmd = [sys.executable, "-m", "tome_lab.ablate", *SWEEP, *LAUNCHERS[name],
                   "--out", str(Path(tmp) / name)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            out["seconds"][name] = round(seconds, 1)  # type: ignore[index]
            print(f"{name}: {seconds:.1f} s", file=sys.stderr)
            print(proc.stdout.strip().splitlines()[-1], file=sys.stderr)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
