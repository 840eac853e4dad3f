"""Searched schedules against constant r and the decreasing schedule, on the test split.

Reads a finished ``python -m tome_lab.search`` study (its journal and its trial records),
scores the schedules it needs on the test split image by image, and prints, for
``benchmarks/README.md``:

- the search's wall time (first trial started to last trial finished, from the journal);
- hypervolumes of the frontier and of the baselines on val and on test, with the reference
  point stated;
- at each FLOP budget of a fixed list (the GFLOPs of the paper's schedules), the schedule the
  search would pick on **val** (best val top-1 at or under the budget, among the trials that
  are not baselines) against the best baseline at or under the budget (also picked on val),
  both then scored image by image on **test**: top-1 with a bootstrap interval each, and a
  paired bootstrap interval of the difference. Nothing is chosen on test.

    python benchmarks/search_frontier.py --study bench144 --out runs/search \\
        --json benchmarks/search_bench144.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

import tome_lab
from tome_lab import results, stats
from tome_lab.config import ExperimentConfig, from_dict
from tome_lab.data import build_loader
from tome_lab.models import create_model
from tome_lab.search import hypervolume, open_storage


def test_hits(cfg: ExperimentConfig, schedules: list[list[int]], limit: int | None = None
              ) -> list[np.ndarray]:
    """[n_test] 0/1 per image for each schedule, the model and data built once."""
    cfg = from_dict(ExperimentConfig, {**tome_lab.config.to_dict(cfg),
                                       "data": {**tome_lab.config.to_dict(cfg.data),
                                                "split": "test", "limit": limit}})
    base = create_model(cfg.model).eval()
    loader = build_loader(cfg.data, base, seed=cfg.seed)
    out = []
    for r in schedules:
        model = tome_lab.apply_tome(copy.deepcopy(base), r=list(r))
        hits = []
        with torch.no_grad():
            for x, y in loader:
                hits.append((model(x).argmax(-1) == y).float().numpy())
        out.append(np.concatenate(hits))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True)
    p.add_argument("--out", default="runs/search")
    p.add_argument("--ref-top1", type=float, default=50.0,
                   help="hypervolume reference: the worst top-1 counted (percent)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-limit", type=int, default=None,
                   help="score only this many test images (a smoke check, not for figures)")
    p.add_argument("--json", default=None, help="also write the full report to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    study = optuna.load_study(study_name=args.study,
                              storage=open_storage(str(out / f"{args.study}.journal")))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    t0 = min(t.datetime_start for t in study.trials)
    t1 = max(t.datetime_complete for t in study.trials if t.datetime_complete)
    trials = results.load(out / args.study)
    base_gf = max(trials.gflops)
    ref = (args.ref_top1, base_gf)
    is_base = trials.baseline.map(lambda v: isinstance(v, str))
    report: dict = {"study": args.study, "complete": len(done), "trials": len(study.trials),
                    "wall_s": (t1 - t0).total_seconds(), "reference": {"top1": ref[0],
                                                                       "gflops": ref[1]}}

    def hv(df, col="top1"):
        return hypervolume(list(zip(df[col], df.gflops, strict=True)), ref)

    const = trials[trials.baseline.str.startswith("constant", na=False)]
    report["hv_val"] = {"all trials": hv(trials), "searched only": hv(trials[~is_base]),
                        "constant r": hv(const), "constant + decreasing": hv(trials[is_base])}
    front = trials[stats.pareto_mask(trials.gflops, trials.top1)]
    # budgets fixed in advance: the GFLOPs of the paper's schedules
    budgets = sorted({float(g) for g in trials[is_base].gflops if g < base_gf})
    rows, need = [], []
    for b in budgets:
        s = trials[~is_base & (trials.gflops <= b + 1e-12)]
        c = trials[is_base & (trials.gflops <= b + 1e-12)]
        if s.empty or c.empty:
            continue
        s_best = s.sort_values(["top1", "gflops"], ascending=[False, True]).iloc[0]
        c_best = c.sort_values(["top1", "gflops"], ascending=[False, True]).iloc[0]
        rows.append({"budget": b, "searched": list(s_best["tome.r"]), "s_gflops": s_best.gflops,
                     "s_val": s_best.top1, "baseline": c_best.baseline,
                     "b_gflops": c_best.gflops, "b_val": c_best.top1,
                     "b_r": list(c_best["tome.r"])})
        need += [tuple(s_best["tome.r"]), tuple(c_best["tome.r"])]
    # every schedule scored on test once, image by image: the val frontier, the baselines and
    # the picks above
    need += [tuple(r) for r in front["tome.r"]] + [tuple(r) for r in trials[is_base]["tome.r"]]
    uniq = list(dict.fromkeys(need))
    cfg = from_dict(ExperimentConfig, json.loads(
        (next((out / args.study).glob("*/result.json"))).read_text())["config"])
    hits = dict(zip(uniq, test_hits(cfg, [list(r) for r in uniq], args.test_limit),
                    strict=True))
    gf = {tuple(r): g for r, g in zip(trials["tome.r"], trials.gflops, strict=True)}

    def hv_test(rs):
        return hypervolume([(100 * hits[tuple(r)].mean(), gf[tuple(r)]) for r in rs], ref)

    report["n_test"] = len(next(iter(hits.values())))
    report["hv_test"] = {"val-Pareto schedules": hv_test(front["tome.r"]),
                         "constant r": hv_test(const["tome.r"]),
                         "constant + decreasing": hv_test(trials[is_base]["tome.r"])}
    report["frontier"] = [
        {"r": list(r), "gflops": gf[tuple(r)], "val": v, "baseline": b if isinstance(b, str)
         else None, "test": stats.bootstrap(hits[tuple(r)])}
        for r, v, b in zip(front["tome.r"], front.top1, front.baseline, strict=True)]
    for row in rows:
        hs, hb = hits[tuple(row["searched"])], hits[tuple(row["b_r"])]
        row["s_test"] = stats.bootstrap(hs)
        row["b_test"] = stats.bootstrap(hb)
        row["diff"] = stats.paired_bootstrap(hs, hb)
        row["n_test"] = len(hs)
    report["budgets"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=lambda o: (
            dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o))))
    print(markdown(report))


def _pct(iv: stats.Interval) -> str:
    return f"{100 * iv.estimate:.1f} [{100 * iv.low:.1f}, {100 * iv.high:.1f}]"


def markdown(report: dict) -> str:
    """The report as the tables of benchmarks/README.md."""
    ref = report["reference"]
    lines = [f"{report['complete']} complete trials ({report['trials']} in the study), search "
             f"wall time {report['wall_s'] / 60:.1f} min (first trial started to last "
             f"finished).", "",
             f"Hypervolume (top-1 % x GFLOPs) over the reference point top-1 = {ref['top1']}%, "
             f"GFLOPs = {ref['gflops']:.4f} (unmerged):", "", "| set | val | test |",
             "|---|---|---|"]
    hv_v, hv_t = report["hv_val"], report["hv_test"]
    lines.append(f"| search frontier (val-Pareto schedules) | {hv_v['all trials']:.4f} | "
                 f"{hv_t['val-Pareto schedules']:.4f} |")
    lines.append(f"| searched trials only (no baselines) | {hv_v['searched only']:.4f} | - |")
    lines.append(f"| constant r | {hv_v['constant r']:.4f} | {hv_t['constant r']:.4f} |")
    lines.append(f"| constant r + decreasing | {hv_v['constant + decreasing']:.4f} | "
                 f"{hv_t['constant + decreasing']:.4f} |")
    lines += ["", f"Frontier on val (every non-dominated trial), each re-scored on test "
              f"({report['n_test']} images):", "",
              "| r per block | GFLOPs | val top-1 | test top-1 [95% bootstrap] | baseline? |",
              "|---|---|---|---|---|"]
    for f in sorted(report["frontier"], key=lambda f: f["gflops"]):
        lines.append(f"| {' '.join(map(str, f['r']))} | {f['gflops']:.4f} | {f['val']:.2f} | "
                     f"{_pct(f['test'])} | {f['baseline'] or ''} |")
    lines += ["", "| budget (GFLOPs) | searched r (picked on val) | GFLOPs | val | test top-1 "
              "[95% bootstrap] | best baseline (picked on val) | GFLOPs | val | test top-1 "
              "[95% bootstrap] | difference [95% paired bootstrap] |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["budgets"]:
        lines.append(
            f"| {r['budget']:.4f} | {' '.join(map(str, r['searched']))} | {r['s_gflops']:.4f} "
            f"| {r['s_val']:.1f} | {_pct(r['s_test'])} | {r['baseline']} | "
            f"{r['b_gflops']:.4f} | {r['b_val']:.1f} | {_pct(r['b_test'])} | "
            f"{100 * r['diff'].estimate:+.1f} [{100 * r['diff'].low:+.1f}, "
            f"{100 * r['diff'].high:+.1f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
