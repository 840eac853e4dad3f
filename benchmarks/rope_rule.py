"""Where a merged token sits for its rotary embedding: ``position_rule`` mean against keep.

Run from the repository root (about 20 minutes on one CPU thread, the training 15 of them;
``--smoke`` in about a minute)::

    nice .venv/bin/python benchmarks/rope_rule.py --threads 1
    .venv/bin/python benchmarks/rope_rule.py --smoke --out runs/rope_rule_smoke.json
    .venv/bin/python benchmarks/rope_rule.py --table benchmarks/rope_rule.json  # docs table

No pretrained RoPE model loads here, so the script trains one: a small timm ``Eva`` with
axial RoPE (the RoPE-Axial ViT of Heo et al., ECCV 2024: ``AttentionRope``, 'xy' grid,
temperature 100, no absolute position embedding, class token) on the embedded ``dots`` task
(count the red dots, 196 patch tokens of 4 px), one epoch of its 16,000 training images without
merging (checkpoint cached under ``runs/rope_rule/``, which git ignores). It then evaluates the
2,000 test images unmerged and merged with bipartite matching at each r under both rules, and
records, per (r, rule): top-1 with its Wilson interval; the fidelity to the unmerged model
(top-1 agreement with its predictions, mean KL(unmerged || merged) of the softmax and mean
cosine of the logits, each with a percentile bootstrap interval over images); and, per r, the
paired difference mean minus keep (top-1 and agreement, paired bootstrap; McNemar's p).
Both rules cost the same FLOPs at equal r (positions move no token).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import tome_lab
from tome_lab import stats
from tome_lab.results import environment, write_json_atomic

MODEL = dict(img_size=56, patch_size=4, num_classes=13, embed_dim=64, depth=6, num_heads=2,
             mlp_ratio=2.0, attn_type="rope", init_values=None, class_token=True,
             global_pool="token", use_abs_pos_emb=False, use_rot_pos_emb=True,
             rope_grid_indexing="xy", rope_temperature=100.0)
MEAN, STD = (0.168, 0.139, 0.13), (0.203, 0.129, 0.11)  # dots' train-split channel stats


def _split(name: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from tome_lab.tasks.dots import generate

    s = generate(name)
    x = torch.from_numpy(s.images[:limit]).permute(0, 3, 1, 2).float()  # (N, 3, 56, 56)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(), torch.from_numpy(s.labels[:limit].copy())


def _model() -> torch.nn.Module:
    from timm.models.eva import Eva

    torch.manual_seed(0)
    return Eva(**MODEL)


def train(path: Path, limit: int | None, epochs: int, batch: int, lr: float) -> dict:
    """One run of AdamW with warm-up and cosine decay, no merging; the state dict to ``path``."""
    m = _model().train()
    x, y = _split("train", limit)
    steps = epochs * math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.05)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else
        0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    g = torch.Generator().manual_seed(0)
    start, losses = time.perf_counter(), []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(m.state_dict(), path)
    return dict(steps=steps, first_loss=losses[0], last_loss=float(np.mean(losses[-20:])),
                wall_s=time.perf_counter() - start)


@torch.no_grad()
def logits_of(m: torch.nn.Module, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([m(x[i:i + batch]) for i in range(0, len(x), batch)])


def _interval(values: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of per-image ``values`` with a 95% percentile bootstrap interval."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    return dict(mean=float(values.mean()), low=float(low), high=float(high))


def _pct(d: dict, key: str = "estimate") -> str:
    return f"{100 * d[key]:.1f} [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def table(path: str) -> str:
    """The markdown table of a result file (docs/engine.md's, generated, not typed)."""
    import json

    rows = json.loads(Path(path).read_text())["rows"]
    base = next(r for r in rows if r["r"] == 0)
    out = ["| r | rule | tokens out | GFLOPs | top-1 % | agreement with r = 0 % | "
           "KL(r = 0 \\|\\| merged) | mean - keep, top-1 pts | mean - keep, agreement pts |",
           "|---|---|---|---|---|---|---|---|---|",
           f"| 0 | - | {base.get('tokens_out', 197)} | {base['gflops']:.4f} | "
           f"{_pct(base['top1'])} | 100 | 0 | | |"]
    for row in rows:
        if row["rule"] in ("mean", "keep"):
            diff = next(d for d in rows if d["r"] == row["r"] and d["rule"] == "mean-keep")
            extra = ("| | |" if row["rule"] == "keep" else
                     f"| {_pct(diff['top1_diff'])} (McNemar p = {diff['mcnemar_p']:.2g}) | "
                     f"{_pct(diff['agreement_diff'])} |")
            kl = row["kl"]
            out.append(f"| {row['r']} | {row['rule']} | {row['tokens_out']} | "
                       f"{row['gflops']:.4f} | {_pct(row['top1'])} | "
                       f"{_pct(row['agreement'], 'mean')} | {kl['mean']:.4f} "
                       f"[{kl['low']:.4f}, {kl['high']:.4f}] {extra}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", metavar="JSON", help="print the markdown table of a result file")
    p.add_argument("--r", type=int, nargs="+", default=[8, 16, 24])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="256 train / 200 test images")
    p.add_argument("--out", default="benchmarks/rope_rule.json")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    torch.set_num_threads(args.threads)
    train_limit, test_limit = (256, 200) if args.smoke else (None, None)
    ckpt = Path("runs/rope_rule") / ("smoke.pt" if args.smoke else "eva_rope_dots.pt")
    training = None
    if not ckpt.exists():
        training = train(ckpt, train_limit, args.epochs, 64, 1e-3)
    base = _model().eval()
    base.load_state_dict(torch.load(ckpt, weights_only=True))
    x, y = _split("test", test_limit)
    ref = logits_of(base, x)
    ref_pred, ref_logp = ref.argmax(-1), ref.log_softmax(-1)
    hits0 = (ref_pred == y).numpy().astype(float)
    rows = [dict(r=0, rule=None, top1=asdict(stats.wilson(int(hits0.sum()), len(y))),
                 gflops=tome_lab.analytic_gflops(tome_lab.vit_spec(base), [0] * MODEL["depth"]))]
    per_rule: dict[tuple[int, str], dict] = {}
    for r in args.r:
        for rule in ("mean", "keep"):
            m = tome_lab.apply_tome(copy.deepcopy(base), r=r, position_rule=rule)
            out = logits_of(m, x)
            pred = out.argmax(-1)
            hits = (pred == y).numpy().astype(float)
            agree = (pred == ref_pred).numpy().astype(float)
            kl = (ref_logp.exp() * (ref_logp - out.log_softmax(-1))).sum(-1).numpy()
            cos = F.cosine_similarity(out, ref, dim=-1).numpy()
            st = tome_lab.tome_state(m)
            per_rule[(r, rule)] = dict(hits=hits, agree=agree)
            top1 = stats.wilson(int(hits.sum()), len(y))
            rows.append(dict(
                r=r, rule=rule, top1=asdict(top1),
                agreement=_interval(agree), kl=_interval(kl), cosine=_interval(cos),
                tokens_out=st.tokens[-1],
                gflops=tome_lab.analytic_gflops(st.spec, st.r)))
        a, b = per_rule[(r, "mean")], per_rule[(r, "keep")]
        d_top1 = stats.paired_bootstrap(a["hits"], b["hits"])
        d_agree = stats.paired_bootstrap(a["agree"], b["agree"])
        rows.append(dict(r=r, rule="mean-keep",
                         top1_diff=asdict(d_top1), agreement_diff=asdict(d_agree),
                         mcnemar_p=stats.mcnemar(a["hits"], b["hits"]).p_value))
    record = dict(benchmark="rope_rule", model=dict(cls="timm.models.eva.Eva", **MODEL),
                  data=dict(name="dots", train=train_limit or 16000, test=len(y)),
                  train=dict(epochs=args.epochs, batch=64, lr=1e-3, optimizer="adamw",
                             weight_decay=0.05, checkpoint=str(ckpt), **(training or {})),
                  matching="bipartite", prop_attn=True, smoke=args.smoke,
                  rows=rows, env=environment(device="cpu", dtype="float32"))
    write_json_atomic(args.out, record)
    for row in rows:
        print({k: v for k, v in row.items() if k not in ("env",)})


if __name__ == "__main__":
    main()
