"""Which way each setting miscounts on the dots test split: over or under the true count.

    .venv/bin/python benchmarks/dots_errors.py "r=18" "prop_attn=false r=18" \\
        "matching=pruning r=18" "matching=pruning criterion=random r=18" \\
        --json benchmarks/tasks/dots_errors.jsonl
    .venv/bin/python benchmarks/dots_errors.py --table benchmarks/tasks/dots_errors.jsonl

Each argument is one setting in the words of ``benchmarks/paired_sweep.py`` (``r`` defaults
to 4 there; give it). On all 2,000 ``test`` images with ``vit_dots``' zoo weights (or
``--checkpoint``), the predicted count (the class index) against the label: the share of
images counted too high and too low, each with its 95% Wilson interval (``tome_lab.stats``),
and the mean signed error (predicted - true).
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch
from paired_sweep import parse  # benchmarks/ is on sys.path when run as a script

import tome_lab
from tome_lab import stats
from tome_lab.config import DataConfig, ModelConfig
from tome_lab.data import build_loader
from tome_lab.models import create_model


@torch.no_grad()
def predictions(model: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    """[n] predicted and [n] true classes, in the loader's order."""
    model.eval()
    pred, true = zip(*[(model(x).argmax(-1).numpy(), y.numpy()) for x, y in loader],
                     strict=True)
    return np.concatenate(pred), np.concatenate(true)


def table(rows: list[dict]) -> str:
    """The rows of one ``--json`` file as a Markdown table."""
    lines = ["| setting | top-1 | counted too high [95% CI] | counted too low [95% CI] | "
             "mean error (predicted - true) |", "|---|---|---|---|---|"]
    lines += [f"| `{r['setting']}` | {r['top1']:.1f} | {r['over']:.1f} [{r['over_low']:.1f}, "
              f"{r['over_high']:.1f}] | {r['under']:.1f} [{r['under_low']:.1f}, "
              f"{r['under_high']:.1f}] | {r['mean_error']:+.2f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="*", help="space-separated key=value words per setting")
    ap.add_argument("--checkpoint", help="weights file (default: the zoo checkpoint)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write one JSON line per setting to this file")
    ap.add_argument("--table", metavar="JSONL", help="print the Markdown table of a --json "
                    "file and exit (SETTINGS are then ignored)")
    args = ap.parse_args()
    if args.table:
        from pathlib import Path

        text = Path(args.table).read_text()
        print(table([json.loads(line) for line in text.splitlines() if line.strip()]))
        return
    torch.set_num_threads(args.threads)
    base = create_model(ModelConfig(name="vit_dots", checkpoint=args.checkpoint)).eval()
    loader = build_loader(DataConfig(name="dots"), base)
    rows = []
    for words in args.settings:
        torch.manual_seed(0)
        pred, true = predictions(tome_lab.apply_tome(copy.deepcopy(base), **parse(words)),
                                 loader)
        err = pred - true  # (n,)
        over = stats.wilson(int((err > 0).sum()), len(err)).scaled(100)
        under = stats.wilson(int((err < 0).sum()), len(err)).scaled(100)
        row = {"setting": words, "model": "vit_dots", "data": "dots", "n_images": len(err),
               **({"checkpoint": args.checkpoint} if args.checkpoint else {}),
               "top1": 100 * float((err == 0).mean()), "over": over.estimate,
               "over_low": over.low, "over_high": over.high, "under": under.estimate,
               "under_low": under.low, "under_high": under.high,
               "mean_error": float(err.mean())}
        rows.append(row)
        print(f"{words}: top-1 {row['top1']:.1f}, counted too high {over.estimate:.1f}% "
              f"[{over.low:.1f}, {over.high:.1f}], too low {under.estimate:.1f}% "
              f"[{under.low:.1f}, {under.high:.1f}], mean error {row['mean_error']:+.2f}",
              flush=True)
    if args.json:
        from tome_lab import results

        results.write_text_atomic(args.json, "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
