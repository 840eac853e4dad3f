"""Where the learned rates lose accuracy: the relaxation or the export (dots, /2, seed 0).

    .venv/bin/python benchmarks/diffrate_gap.py   # -> benchmarks/diffrate_gap.json

Learns the rates as benchmarks/diffrate_vs_search.sh does (100 steps of 32 train images, 1
thread), then scores on the val split (1,000 images): the relaxed forward with the learned
soft masks (what the learner optimised), the same rates with hard masks (the rounded counts,
as ``--hard`` runs them), and the exported composite pairs (what evaluate runs); with each
relaxed variant's GFLOPs at the token counts it keeps (the analytic terms at the first val
batch's mean counts).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tome_lab import results  # noqa: E402
from tome_lab.config import DataConfig, ModelConfig  # noqa: E402
from tome_lab.data import build_loader  # noqa: E402
from tome_lab.engine import apply_tome, vit_spec  # noqa: E402
from tome_lab.evaluate import score  # noqa: E402
from tome_lab.models import create_model  # noqa: E402
from tome_lab.search.diffrate import (  # noqa: E402
    DiffRateConfig,
    Rates,
    expected_gflops,
    learn,
    relax,
    relaxed_forward,
)

TARGET = 0.0817  # dots' unmerged 0.1633 GFLOPs / 2


class Relaxed(torch.nn.Module):
    def __init__(self, model, rates, hard):
        super().__init__()
        self.model, self.rates, self.hard = relax(copy.deepcopy(model)), rates, hard

    def forward(self, x):
        return relaxed_forward(self.model, self.rates, x, self.hard)[0]


def main() -> int:
    torch.set_num_threads(1)
    model = create_model(ModelConfig(name="vit_dots"))
    spec = vit_spec(model)
    train = build_loader(DataConfig(name="dots", split="train", batch_size=32), model,
                         shuffle=True, seed=0, drop_last=True)
    t0 = time.perf_counter()
    got = learn(model, train, DiffRateConfig(gflops=TARGET, steps=100, batch_size=32, seed=0,
                                             threads=1))
    lg = got["logits"]
    rates = Rates(spec.depth, spec.num_tokens - spec.num_prefix, lg["grid"], lg["counts"])
    rates.tau = got["taus"][-1]  # the temperature the learner ended at
    with torch.no_grad():
        rates.prune_logits.copy_(torch.tensor(lg["prune"]))
        rates.merge_logits.copy_(torch.tensor(lg["merge"]))
    val = build_loader(DataConfig(name="dots", split="val", batch_size=250), model)
    out = {"target": TARGET, "pairs": got["pairs"], "gflops_export": got["gflops"],
           "expected_gflops": got["expected_gflops"], "learn_s": got["wall_s"]}
    x = next(iter(val))[0]
    for name, hard in (("relaxed_soft", False), ("relaxed_hard", True)):
        relaxed = Relaxed(model, rates, hard).eval()  # eval: the stem's BatchNorm in eval mode
        out[f"top1_val_{name}"] = score(relaxed, val, "cpu", progress_bar=False)["top1"]
        with torch.no_grad():  # its GFLOPs at the token counts it keeps (first val batch)
            counts = relaxed_forward(relaxed.model, rates, x, hard)[1]
        out[f"gflops_{name}"] = float(expected_gflops(spec, counts))
        out[f"counts_{name}"] = [[round(v, 2) for v in row] for row in counts.tolist()]
    patched = apply_tome(create_model(ModelConfig(name="vit_dots")), matching="composite",
                         pairs=got["pairs"])
    out["top1_val_export"] = score(patched, val, "cpu", progress_bar=False)["top1"]
    out["top1_val_unmerged"] = score(model, val, "cpu", progress_bar=False)["top1"]
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["env"] = results.environment("cpu", "fp32")
    results.write_json_atomic(ROOT / "benchmarks" / "diffrate_gap.json", out)
    print(json.dumps({k: v for k, v in out.items() if k != "env"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
