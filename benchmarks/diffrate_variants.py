"""Which form of the learned-rate relaxation exports the best pairs (dots, /2, seed 0).

    nice -n 5 .venv/bin/python benchmarks/diffrate_variants.py  # -> diffrate_variants.json

Each variant learns as ``benchmarks/diffrate_vs_search.sh`` does (100 steps of 32 ``train``
images, 1 thread, seed 0, target 0.0817 GFLOPs: the unmerged 0.1633 / 2), then the exported
composite pairs are scored on the whole ``val`` split (1,000 images). Variants
(:class:`tome_lab.search.diffrate.DiffRateConfig`): the prune candidates' form (``counts``:
kept of the first block's ranks, or removed of the tokens present), the softmax temperature's
end (``tau_end``; 1 is no annealing) and the start logit of "prune none" / "merge none"
(``start``). Selection is on ``val``; ``test`` is left for the comparison with the search.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tome_lab import results  # noqa: E402
from tome_lab.config import DataConfig, ModelConfig  # noqa: E402
from tome_lab.data import build_loader  # noqa: E402
from tome_lab.engine import apply_tome  # noqa: E402
from tome_lab.evaluate import score  # noqa: E402
from tome_lab.models import create_model  # noqa: E402
from tome_lab.search.diffrate import DiffRateConfig, learn  # noqa: E402

TARGET = 0.0817
VARIANTS = [
    {"counts": "kept", "tau_end": 1.0, "start": 3.0},  # the first form (no annealing)
    {"counts": "kept", "tau_end": 0.1, "start": 3.0},  # the default
    {"counts": "removed", "tau_end": 1.0, "start": 3.0},
    {"counts": "removed", "tau_end": 0.1, "start": 3.0},
    {"counts": "removed", "tau_end": 0.1, "start": 6.0},
]


def main() -> int:
    torch.set_num_threads(1)
    rows = []
    for v in VARIANTS:
        model = create_model(ModelConfig(name="vit_dots"))
        train = build_loader(DataConfig(name="dots", split="train", batch_size=32), model,
                             shuffle=True, seed=0, drop_last=True)
        got = learn(model, train, DiffRateConfig(gflops=TARGET, steps=100, batch_size=32,
                                                 seed=0, threads=1, **v))
        val = build_loader(DataConfig(name="dots", split="val", batch_size=250), model)
        patched = apply_tome(create_model(ModelConfig(name="vit_dots")), matching="composite",
                             pairs=got["pairs"])
        row = {**v, "top1_val": score(patched, val, "cpu", progress_bar=False)["top1"],
               "gflops": got["gflops"], "expected_gflops": round(got["expected_gflops"], 5),
               "repair_steps": got["repair_steps"], "learn_s": got["wall_s"],
               "pairs": got["pairs"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"target": TARGET, "rows": rows, "env": results.environment("cpu", "fp32")}
    results.write_json_atomic(ROOT / "benchmarks" / "diffrate_variants.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
