"""Paired comparison of any ablation settings on the same held-out digits (issue 14).

    python benchmarks/paired_sweep.py "feature=k" "feature=x" "feature=q" "feature=v"
    python benchmarks/paired_sweep.py "schedule=linear start=4 end=4" \\
        "schedule=linear start=6 end=1" --gflops-only

Each argument is one setting: space-separated ``key=value`` words passed to
``tome_lab.apply_tome`` on ``vit_digits`` (zoo weights; ``r`` defaults to 4 as in the
ablation files, other keys such as ``start`` / ``end`` / ``gflops`` go to the plug-ins as
options; ``seed=N`` seeds torch's generator before the setting runs, 0 otherwise). The first
setting is the reference. Every setting is scored on all 1,000 held-out mnist5k digits
keeping each image's 0/1 result; printed: its top-1 with the 95% Wilson interval, fvcore
GFLOPs (``tome_lab.count_flops``; for a matcher whose images keep different token counts,
``ats``, that is the padded batch's cap, and each image's own GFLOPs go into
``gflops_image_mean`` / ``_std`` / ``_min`` / ``_max`` and its final tokens into
``tokens_image_*``), and against the reference McNemar's exact test and a 95%
paired bootstrap interval of the difference (``tome_lab.stats``), as
``benchmarks/paired_matching.py`` does for matchings. ``--model vit_audio_digits --data
spoken_digits`` runs the audio task instead (its 1,000 ``test`` clips). ``--gflops-only``
prints the GFLOPs and skips the evaluation (for matching schedules at equal cost). Results are
in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from r_sweep import hits as image_hits  # benchmarks/ is on sys.path when run as a script

import tome_lab
from tome_lab import stats
from tome_lab.config import DataConfig, ModelConfig
from tome_lab.data import build_loader, model_data_config
from tome_lab.evaluate import ImageCost, pads
from tome_lab.models import create_model


def parse(words: str) -> dict:
    """``"schedule=linear start=6 end=1"`` -> ``{"schedule": "linear", "start": 6, "end": 1}``;
    a value in brackets is a JSON list (``schedule=list r=[4,4,2,0]``, no spaces)."""
    out: dict = {"r": 4}
    for word in words.split():
        key, _, value = word.partition("=")
        if value.startswith("["):
            out[key] = json.loads(value)
            continue
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    """Prints each setting's top-1, interval and GFLOPs, and the paired comparisons; returns
    the rows (``benchmarks/methods_tune.py`` calls it on val, then on test)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+", help="space-separated key=value words per setting")
    ap.add_argument("--gflops-only", action="store_true", help="print GFLOPs only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=ModelConfig.name, help="model name (vit_digits)")
    ap.add_argument("--data", default=DataConfig.name, help="dataset name (mnist5k)")
    ap.add_argument("--checkpoint", help="weights file (default: the model's zoo checkpoint)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"),
                    help="split to score (val: for choices made before the test split)")
    ap.add_argument("--json", help="also write one JSON line per setting to this file")
    ap.add_argument("--budget", type=float,
                    help="the GFLOPs budget these settings were chosen for, recorded in each row")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = create_model(ModelConfig(name=args.model, checkpoint=args.checkpoint)).eval()
    input_size = tuple(model_data_config(base)["input_size"])  # as tome_lab.evaluate
    loader = None if args.gflops_only else build_loader(
        DataConfig(name=args.data, split=args.split), base)
    hits, rows = {}, []
    for words in args.settings:
        kw = parse(words)
        torch.manual_seed(int(kw.pop("seed", 0)))  # seed=N: a stochastic method's N-th draw
        try:
            model = tome_lab.apply_tome(copy.deepcopy(base), **kw)
        except ValueError as err:  # e.g. a method that needs a 2-D patch grid: a refused cell
            print(f"{words}: refused: {err}")
            if words == args.settings[0]:
                raise
            rows.append({"setting": words, "model": args.model, "data": args.data,
                         **({"budget": args.budget} if args.budget is not None else {}),
                         "refused": str(err)})
            continue
        gflops = tome_lab.count_flops(model, input_size)
        if loader is None:
            print(f"{words}: {gflops:.4f} GFLOPs")
            continue
        cost = ImageCost(model) if pads(kw.get("matching", "bipartite")) else None
        h = image_hits(model, loader)  # (n_images,) 0/1
        per_image = {}
        if cost is not None:  # images keep different counts (ats): each one's own GFLOPs
            cost.close()
            per_image = cost.summary()
            print(f"{words}: per image {per_image['gflops_image_mean']:.4f} GFLOPs "
                  f"[{per_image['gflops_image_min']:.4f}, {per_image['gflops_image_max']:.4f}]"
                  f" (sd {per_image['gflops_image_std']:.4f}); the top-1 is their average")
        hits[words] = h
        ci = stats.wilson(int(h.sum()), len(h)).scaled(100)
        print(f"{words}: top-1 {ci.estimate:.1f} [{ci.low:.1f}, {ci.high:.1f}] on {len(h)} "
              f"images, {gflops:.4f} GFLOPs")
        rows.append({"setting": words, "model": args.model, "data": args.data,
                     **({"checkpoint": args.checkpoint} if args.checkpoint else {}),
                     **({"split": args.split} if args.split != "test" else {}),
                     **({"budget": args.budget} if args.budget is not None else {}),
                     "r": list(tome_lab.tome_state(model).r),
                     "n_images": len(h), "top1": ci.estimate, "low": ci.low, "high": ci.high,
                     "gflops": gflops, **per_image})
    ref = args.settings[0]
    for row, other in zip(rows[1:], args.settings[1:], strict=True) if hits else []:
        if "refused" in row:
            continue
        test = stats.mcnemar(hits[ref], hits[other])
        diff = stats.paired_bootstrap(hits[ref], hits[other]).scaled(100)
        print(f"{ref} vs {other}: right only with the first {test.only_a}, only with the "
              f"second {test.only_b}, McNemar p = {test.p_value:.2g}; difference "
              f"{diff.estimate:.1f} [{diff.low:.1f}, {diff.high:.1f}] points")
        row.update(only_ref=test.only_a, only_this=test.only_b, mcnemar_p=test.p_value,
                   diff=diff.estimate, diff_low=diff.low, diff_high=diff.high)
    if args.json and rows:
        from tome_lab import results

        results.write_text_atomic(args.json, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


if __name__ == "__main__":
    main()
