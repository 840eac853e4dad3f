"""Collects benchmarks/diffrate_vs_search.sh's runs into benchmarks/diffrate_vs_search.jsonl.

    .venv/bin/python benchmarks/diffrate_vs_search.py [TASK=FOLDER ...]

Default: ``dots=runs/diffrate_cmp clutter=runs/diffrate_cmp_clutter`` (a missing folder is
skipped); each task's budgets are its unmerged GFLOPs / 1.5 and / 2, to 4 decimals.

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

TASKS = {"dots": ("vit_dots", "runs/diffrate_cmp"),
         "clutter": ("vit_clutter", "runs/diffrate_cmp_clutter")}


def budgets(model: str) -> dict[str, float]:
    """b15 and b20: the model's unmerged GFLOPs / 1.5 and / 2, to 4 decimals (as the .sh)."""
    import tome_lab
    from tome_lab.config import ModelConfig
    from tome_lab.models import create_model

    s = tome_lab.vit_spec(create_model(ModelConfig(name=model, pretrained=False)))
    base = tome_lab.analytic_gflops(s, [0] * s.depth)
    return {"b15": round(base / 1.5, 4), "b20": round(base / 2, 4)}


def _optuna(folder: Path, task: str, b: str, seed: int) -> dict | None:
    path = folder / f"optuna_{task}_{b}_s{seed}-pareto.yaml"
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


def _diffrate(folder: Path, task: str, b: str, seed: int, kind: str = "diffrate"
              ) -> dict | None:
    path = folder / f"{kind}_{task}_{b}_s{seed}" / "record.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return {"gflops": rec["gflops"], "gflops_fvcore": rec.get("gflops_fvcore"),
            "expected_gflops": rec["expected_gflops"], "top1_val": rec.get("top1_val"),
            "top1_test": rec.get("top1_test"), "pairs": rec["pairs"],
            "learn_s": rec["wall_s"], "repair_steps": rec["repair_steps"],
            "final_flop_error": rec["flop_errors"][-1], "env": rec["env"]}


def main(argv: list[str]) -> int:
    pick = dict(a.split("=", 1) for a in argv) or {t: f for t, (_, f) in TASKS.items()}
    rows = []

    def hard(folder: Path, task: str, b: str, seed: int) -> dict | None:
        return _diffrate(folder, task, b, seed, "diffrate_hard")

    methods = (("optuna", _optuna), ("diffrate", _diffrate), ("diffrate-hard", hard))
    for task, rel in pick.items():
        folder = ROOT / rel
        if not folder.is_dir():
            continue
        walls = {}
        if (folder / "walls.txt").is_file():
            for line in (folder / "walls.txt").read_text().splitlines():
                label, secs = line.split()
                walls[label] = round(float(secs), 1)
        model = TASKS[task][0]
        for method, read in methods:
            for b, budget in budgets(model).items():
                for seed in (0, 1, 2):
                    got = read(folder, task, b, seed)
                    if got is None:
                        continue
                    rows.append({"method": method, "task": task, "model": model, "budget": b,
                                 "budget_gflops": budget, "seed": seed, **got,
                                 "wall_s": walls.get(f"{method}_{b}_s{seed}")})
    out = ROOT / "benchmarks" / "diffrate_vs_search.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows -> {out.relative_to(ROOT)}")
    for task in pick:
        for method, _ in methods:
            for b in ("b15", "b20"):
                key3 = (task, method, b)
                sel = [r for r in rows if (r["task"], r["method"], r["budget"]) == key3]
                if not sel:
                    continue
                parts = []
                for key in ("top1_test", "top1_val", "gflops", "wall_s"):
                    vals = [r[key] for r in sel if r.get(key) is not None]
                    if vals:
                        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                        parts.append(f"{key} {statistics.mean(vals):.4g} +- {sd:.2g} "
                                     f"[{min(vals):.4g}, {max(vals):.4g}]")
                print(f"{task:8s} {method:13s} {b} n={len(sel)}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
