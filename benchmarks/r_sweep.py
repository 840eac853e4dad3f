"""Top-1 against r for one or more checkpoints of an embedded task, paired on the same images.

Run from the repository root (minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/r_sweep.py --model vit_audio_digits --data spoken_digits \
        --ckpt off_the_shelf=tome_lab/zoo/vit_audio_digits.safetensors \
        --ckpt trained_with_tome=tome_lab/zoo/vit_audio_digits_tome16.safetensors \
        --r 0 8 12 16 20 --threads 2 --speed-batches 5 --json benchmarks/audio_r_sweep.jsonl
    .venv/bin/python benchmarks/r_sweep.py --model vit_clutter --data clutter \
        --ckpt off_the_shelf=tome_lab/zoo/vit_clutter.safetensors --r 0 4 8 12 16 20

Every checkpoint is scored at each r on the task's whole ``test`` split through
``tome_lab.evaluate.prepare`` (bipartite matching, constant r, proportional attention): top-1
counted from per-image hits, as ``tome_lab.evaluate.score`` counts it, with its 95% Wilson
interval; the tokens left after the last block; analytic GFLOPs; and img/s of the merged
model timed interleaved with the unmerged one (``tome_lab.evaluate.measure_speed``; the
checkpoints share an architecture, so one timing per r serves all). With several checkpoints,
each one's gap to the first is a paired bootstrap interval over the same images
(``tome_lab.stats``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import tome_lab
from tome_lab import stats
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.evaluate import measure_speed, prepare


@torch.no_grad()
def hits(model: torch.nn.Module, loader) -> np.ndarray:
    """[n] 1 where the model's top-1 is the label, in the loader's order."""
    model.eval()
    out = [(model(x).argmax(-1) == y).numpy() for x, y in loader]
    return np.concatenate(out).astype(np.float64)


def checkpoints(specs: list[str]) -> dict[str, str]:
    """``["label=path", ...]`` -> ``{label: path}`` (order kept; the first is the reference)."""
    out = {}
    for s in specs:
        label, sep, path = s.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--ckpt takes LABEL=PATH, got {s!r}")
        out[label] = path
    return out


def sweep(model: str, data: str, ckpts: dict[str, str], rs: list[int], threads: int | None,
          speed_batches: int, batch_size: int) -> list[dict]:
    rows = []
    first = next(iter(ckpts))
    for r in rs:
        row: dict = {"r": r}
        per: dict[str, np.ndarray] = {}
        for name, ckpt in ckpts.items():
            cfg = ExperimentConfig(
                model=ModelConfig(name=model, checkpoint=ckpt),
                data=DataConfig(name=data, split="test", batch_size=batch_size),
                tome=ToMeConfig(r=r), eval=EvalConfig(threads=threads, speed=False))
            prep = prepare(cfg)
            h = per[name] = hits(prep.merged, prep.loader)
            ci = stats.wilson(int(h.sum()), h.size)
            row[name] = {"top1": 100 * h.mean(), "low": 100 * ci.low, "high": 100 * ci.high}
            if name == first:
                x = next(iter(prep.loader))[0]
                with torch.no_grad():
                    prep.merged(x[:1])  # leaves the tokens per block in the ToMe state
                tokens = list(tome_lab.tome_state(prep.merged).tokens)
                speed = (measure_speed(prep.base, prep.merged, x, speed_batches, prep.device,
                                       "fp32") if speed_batches else {})
                row.update(n=h.size, tokens_last=int(tokens[-1]), gflops=prep.gflops,
                           gflops_base=prep.gflops_base, **speed)
        for name in list(ckpts)[1:]:
            gap = stats.paired_bootstrap(per[name], per[first])
            row[f"gap_{name}"] = {"diff": 100 * gap.estimate, "low": 100 * gap.low,
                                  "high": 100 * gap.high}
        rows.append(row)
    return rows


def table(rows: list[dict], ckpts: dict[str, str]) -> str:
    first, others = next(iter(ckpts)), list(ckpts)[1:]
    head = ["r", "tokens after the last block", "GFLOPs", "img/s", "speed-up"]
    head += [f"{n} top-1 [95% CI]" for n in ckpts]
    head += [f"gap ({n} - {first}) [95% CI]" for n in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["r"]), str(row["tokens_last"]), f"{row['gflops']:.4f}",
                 f"{row['img_per_s']:.0f}" if "img_per_s" in row else "-",
                 f"{row['speedup']:.2f}x" if "speedup" in row else "-"]
        cells += [f"{row[n]['top1']:.1f} [{row[n]['low']:.1f}, {row[n]['high']:.1f}]"
                  for n in ckpts]
        cells += [f"{row[f'gap_{n}']['diff']:+.1f} [{row[f'gap_{n}']['low']:+.1f}, "
                  f"{row[f'gap_{n}']['high']:+.1f}]" for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--data", required=True, help="registered dataset name")
    p.add_argument("--ckpt", action="append", required=True, metavar="LABEL=PATH",
                   help="a checkpoint to score (repeat; the first is the reference)")
    p.add_argument("--r", type=int, nargs="+", default=[0, 8, 12, 16, 20])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--speed-batches", type=int, default=5, help="0: no timing")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the rows to this JSON-lines file")
    args = p.parse_args()
    ckpts = checkpoints(args.ckpt)
    rows = sweep(args.model, args.data, ckpts, args.r, args.threads, args.speed_batches,
                 args.batch_size)
    print(table(rows, ckpts))
    if args.json:
        from tome_lab import results

        results.write_text_atomic(args.json, "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
