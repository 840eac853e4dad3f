"""The learned pairs against the searched schedule on the same test images (paired tests).

    nice -n 5 .venv/bin/python benchmarks/diffrate_vs_search_paired.py
    # -> benchmarks/tasks/learned_{dots,clutter}_{b15,b20}.jsonl

For each task and budget of ``benchmarks/diffrate_vs_search.jsonl``: the reference is the
Optuna search's seed-0 choice (``matching=bipartite schedule=list r=[...]``, the best val
schedule under the budget), then the other seeds' choices where they differ from it, then the
learned pairs of each seed (``matching=composite pairs=[...]``; ``seed=N`` labels the seed,
and seeds nothing a deterministic setting draws), each scored on the whole ``test`` split by
``benchmarks/paired_sweep.py`` (1 thread) with McNemar's exact test and a paired bootstrap
interval against the reference; ``python -m tome_lab.report`` adjusts over each table (Holm).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import paired_sweep  # noqa: E402

DATA = {"dots": "dots", "clutter": "clutter"}


def main() -> int:
    rows = [json.loads(ln) for ln in (ROOT / "benchmarks" / "diffrate_vs_search.jsonl")
            .read_text().splitlines()]
    for task in DATA:
        for b in ("b15", "b20"):
            sel = [r for r in rows if (r["task"], r["budget"]) == (task, b)]
            ref = [r for r in sel if r["method"] == "optuna" and r["seed"] == 0]
            learned = sorted((r for r in sel if r["method"] == "diffrate"),
                             key=lambda r: r["seed"])
            if not ref or not learned:
                continue
            searched = sorted((r for r in sel if r["method"] == "optuna"),
                              key=lambda r: r["seed"])
            settings, seen = [], []
            for r in searched:
                if r["schedule"] in seen:
                    continue
                seen.append(r["schedule"])
                r_list = json.dumps(r["schedule"]).replace(" ", "")
                label = f" seed={r['seed']}" if r["seed"] else ""
                settings.append(f"matching=bipartite schedule=list r={r_list}{label}")
            settings += [f"matching=composite pairs={json.dumps(r['pairs']).replace(' ', '')} "
                         f"seed={r['seed']}" for r in learned]
            paired_sweep.main(["--threads", "1", "--model", ref[0]["model"], "--data",
                               DATA[task], "--budget", str(ref[0]["budget_gflops"]), "--json",
                               str(ROOT / "benchmarks" / "tasks" / f"learned_{task}_{b}.jsonl"),
                               *settings])
    return 0


if __name__ == "__main__":
    sys.exit(main())
