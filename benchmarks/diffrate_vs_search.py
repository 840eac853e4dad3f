"""Collects benchmarks/diffrate_vs_search.sh's runs into benchmarks/diffrate_vs_search.jsonl.

    .venv/bin/python benchmarks/diffrate_vs_search.py [runs/diffrate_cmp]

One row per finished job: method (``optuna``: the search's best bipartite schedule by val
top-1 under the budget; ``diffrate``: the learned pairs, soft masks; ``diffrate-hard``: with
straight-through hard masks), budget, seed, the exported setting's
exact GFLOPs, val and test top-1, and the job's wall time on the shared machine (``wall_s``:
the whole command, scoring included; ``learn_s``: the learned rates' optimisation alone).
Then prints mean, sample standard deviation and range per method and budget.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGETS = {"b15": 0.1089, "b20": 0.0817}  # unmerged 0.1633 GFLOPs / 1.5 and / 2


def _optuna(folder: Path, b: str, seed: int) -> dict | None:
    path = folder / f"optuna_dots_{b}_s{seed}-pareto.yaml"
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text().splitlines():
        m = re.match(r"^# ([0-9.]+)  (\S+)  (\S+)  (\[.*\])$", line)
        if m:
            rows.append({"gflops": float(m[1]), "top1_val": float(m[2]),
                         "top1_test": None if m[3] == "None" else float(m[3]),
                         "schedule": json.loads(m[4])})
    best = max(rows, key=lambda r: (r["top1_val"], -r["gflops"]))  # the search's choice
    return {**best, "pareto_size": len(rows)}


def _diffrate(folder: Path, b: str, seed: int, kind: str = "diffrate") -> dict | None:
    path = folder / f"{kind}_dots_{b}_s{seed}" / "record.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return {"gflops": rec["gflops"], "gflops_fvcore": rec.get("gflops_fvcore"),
            "expected_gflops": rec["expected_gflops"], "top1_val": rec.get("top1_val"),
            "top1_test": rec.get("top1_test"), "pairs": rec["pairs"],
            "learn_s": rec["wall_s"], "repair_steps": rec["repair_steps"],
            "final_flop_error": rec["flop_errors"][-1], "env": rec["env"]}


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else ROOT / "runs" / "diffrate_cmp"
    walls = {}
    if (folder / "walls.txt").is_file():
        for line in (folder / "walls.txt").read_text().splitlines():
            label, secs = line.split()
            walls[label] = round(float(secs), 1)
    rows = []
    def hard(folder: Path, b: str, seed: int) -> dict | None:
        return _diffrate(folder, b, seed, "diffrate_hard")

    methods = (("optuna", _optuna), ("diffrate", _diffrate), ("diffrate-hard", hard))
    for method, read in methods:
        for b, budget in BUDGETS.items():
            for seed in (0, 1, 2):
                got = read(folder, b, seed)
                if got is None:
                    continue
                rows.append({"method": method, "task": "dots", "model": "vit_dots",
                             "budget": b, "budget_gflops": budget, "seed": seed, **got,
                             "wall_s": walls.get(f"{method}_{b}_s{seed}")})
    out = ROOT / "benchmarks" / "diffrate_vs_search.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows -> {out.relative_to(ROOT)}")
    for method, _ in methods:
        for b in BUDGETS:
            sel = [r for r in rows if r["method"] == method and r["budget"] == b]
            if not sel:
                continue
            parts = []
            for key in ("top1_test", "top1_val", "gflops", "wall_s"):
                vals = [r[key] for r in sel if r.get(key) is not None]
                if vals:
                    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    parts.append(f"{key} {statistics.mean(vals):.4g} +- {sd:.2g} "
                                 f"[{min(vals):.4g}, {max(vals):.4g}]")
            print(f"{method:13s} {b} n={len(sel)}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
