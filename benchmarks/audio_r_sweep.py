"""Spoken digits: top-1 against r for ``vit_audio_digits`` trained without and with merging.

Run from the repository root (a few minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/audio_r_sweep.py --threads 2 --speed-batches 5 \
        --json benchmarks/audio_r_sweep.jsonl

Both checkpoints (``tome_lab/zoo/vit_audio_digits.safetensors``, trained unmerged, "off the
shelf"; ``tome_lab/zoo/vit_audio_digits_tome16.safetensors``, trained with merging at r = 16)
are scored at the same r on the committed ``spoken_digits`` test split (1,000 clips of voices
never heard in training), through ``tome_lab.evaluate``: top-1 with its 95 % Wilson interval,
GFLOPs, and img/s of the merged model timed interleaved with the unmerged one on a batch of
250 (``tome_lab.evaluate.measure_speed``; the same architecture, so one timing per r serves
both checkpoints). Top-1 is counted here from per-clip hits, as ``tome_lab.evaluate.score``
counts it. The gap between the two models at
each r is a paired bootstrap interval over the same clips (``tome_lab.stats``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import tome_lab
from tome_lab import stats
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.evaluate import measure_speed, prepare

ZOO = Path(__file__).resolve().parents[1] / "tome_lab" / "zoo"
MODELS = {"off_the_shelf": ZOO / "vit_audio_digits.safetensors",
          "trained_with_tome": ZOO / "vit_audio_digits_tome16.safetensors"}


@torch.no_grad()
def hits(model: torch.nn.Module, loader) -> np.ndarray:
    """[n] 1 where the model's top-1 is the label, in the loader's order."""
    model.eval()
    out = [(model(x).argmax(-1) == y).numpy() for x, y in loader]
    return np.concatenate(out).astype(np.float64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--r", type=int, nargs="+", default=[0, 8, 12, 16, 20])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--speed-batches", type=int, default=5)
    p.add_argument("--json", help="also write the rows to this JSON-lines file")
    args = p.parse_args()
    rows = []
    for r in args.r:
        row: dict = {"r": r}
        per: dict[str, np.ndarray] = {}
        for i, (name, ckpt) in enumerate(MODELS.items()):
            cfg = ExperimentConfig(
                model=ModelConfig(name="vit_audio_digits", checkpoint=str(ckpt)),
                data=DataConfig(name="spoken_digits", split="test", batch_size=250),
                tome=ToMeConfig(r=r),
                eval=EvalConfig(threads=args.threads, speed=False))
            prep = prepare(cfg)
            h = hits(prep.merged, prep.loader)  # one pass scores the clips
            per[name] = h
            ci = stats.wilson(int(h.sum()), h.size)
            row[name] = {"top1": 100 * h.mean(), "low": 100 * ci.low, "high": 100 * ci.high}
            if i == 0:
                x = next(iter(prep.loader))[0]
                with torch.no_grad():
                    prep.merged(x[:1])  # leaves the tokens per block in the ToMe state
                tokens = list(tome_lab.tome_state(prep.merged).tokens)
                speed = measure_speed(prep.base, prep.merged, x, args.speed_batches,
                                      prep.device, "fp32")
                row.update(n=h.size, tokens_last=int(tokens[-1]), gflops=prep.gflops,
                           gflops_base=prep.gflops_base, **speed)
        gap = stats.paired_bootstrap(per["trained_with_tome"], per["off_the_shelf"])
        row["gap"] = {"diff": 100 * gap.estimate, "low": 100 * gap.low, "high": 100 * gap.high}
        rows.append(row)
    base = rows[0]["off_the_shelf"]["top1"] if rows and rows[0]["r"] == 0 else None
    print("| r | tokens after block 8 | GFLOPs | img/s | speed-up | off the shelf top-1 [95% CI] "
          "| trained with r=16 top-1 [95% CI] | gap (trained - off) [95% CI] |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        a, b, g = row["off_the_shelf"], row["trained_with_tome"], row["gap"]
        print(f"| {row['r']} | {row['tokens_last']} | {row['gflops']:.4f} | "
              f"{row['img_per_s']:.0f} | {row['speedup']:.2f}x | "
              f"{a['top1']:.1f} [{a['low']:.1f}, {a['high']:.1f}] | "
              f"{b['top1']:.1f} [{b['low']:.1f}, {b['high']:.1f}] | "
              f"{g['diff']:+.1f} [{g['low']:+.1f}, {g['high']:+.1f}] |")
    if base is not None:
        print(f"\nbaseline (off the shelf, r=0): {base:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
