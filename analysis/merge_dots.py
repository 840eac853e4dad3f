"""Merge pictures of ``vit_dots`` on held-out ``dots`` images (issue 28): do dots merge with dots?

    .venv/bin/python analysis/merge_dots.py            # -> analysis/figures/merge_dots.png

Each row is one test image: the input, then every patch painted with the mean colour of the
token it belongs to after blocks 4, 8 and 12 (``tome_lab.vis``), with the zoo weights and
bipartite matching at r = 18 (the 2x-fewer-GFLOPs setting of ``benchmarks/dots_tables.sh``),
and last the tokens pruning (attention criterion) at the same r keeps after block 8 (black:
dropped patches). The caption counts, over the whole test split after block 8, how the tokens
holding a red-dot patch are made up: a patch is "red" if any of its pixels belongs to a red dot
(the generator records every dot's centre), "distractor" if it holds only other dots' pixels,
"background" otherwise; and how many patches of each kind pruning keeps after block 8.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import tome_lab
from tome_lab import plots, vis
from tome_lab.config import ModelConfig
from tome_lab.models import create_model
from tome_lab.tasks import dots as d

R = 18
LAYERS = [3, 7, 11]  # 0-based blocks to picture after
ROWS = [0, 1, 2, 3]  # test images shown
OUT = Path(__file__).resolve().parent / "figures" / "merge_dots.png"


def patch_kinds(s: d.DotsSplit, grid: int = 14, patch: int = 4) -> np.ndarray:
    """[N, grid * grid] 2 for a patch holding red-dot pixels, 1 for other dots only, else 0."""
    n = len(s.labels)
    kinds = np.zeros((n, 2, d.CANVAS, d.CANVAS), bool)  # (N, red / other, H, W)
    dy, dx = np.nonzero(d.DISC)
    for j in range(s.colours.shape[1]):
        idx = np.flatnonzero(s.colours[:, j] >= 0)
        rows = s.centres[idx, j, 0][:, None] + dy[None] - d.RADIUS  # (M, P)
        cols = s.centres[idx, j, 1][:, None] + dx[None] - d.RADIUS
        which = (s.colours[idx, j] > 0).astype(int)  # 0: red, 1: distractor
        kinds[idx[:, None], which[:, None], rows, cols] = True
    per_patch = kinds.reshape(n, 2, grid, patch, grid, patch).any((3, 5))  # (N, 2, g, g)
    out = np.where(per_patch[:, 0], 2, np.where(per_patch[:, 1], 1, 0))
    return out.reshape(n, grid * grid)


def composition(groups: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Over tokens that hold a red-dot patch: the share holding only red-dot patches, any
    background patch, any distractor patch; and red-dot patches per such token."""
    pure = mixed_bg = mixed_dis = tokens = red = 0
    for g, k in zip(groups, kinds, strict=True):
        for t in np.unique(g[k == 2]):
            members = k[g == t]
            tokens += 1
            red += int((members == 2).sum())
            pure += bool((members == 2).all())
            mixed_bg += bool((members == 0).any())
            mixed_dis += bool((members == 1).any())
    return {"tokens": tokens, "only_red": pure / tokens, "with_background": mixed_bg / tokens,
            "with_distractor": mixed_dis / tokens, "red_patches_per_token": red / tokens}


def kept(groups: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Share of red-dot, distractor and background patches whose token survives (pruning)."""
    alive = groups != vis.DROPPED  # (N, P)
    return {name: float(alive[kinds == k].mean())
            for k, name in ((2, "red"), (1, "distractor"), (0, "background"))}


def main() -> int:
    torch.set_num_threads(2)
    s = d.generate("test")
    model = tome_lab.apply_tome(create_model(ModelConfig(name="vit_dots")), r=R,
                                trace_source=True)  # zoo weights
    pruned = tome_lab.apply_tome(create_model(ModelConfig(name="vit_dots")), r=R,
                                 matching="pruning", trace_source=True)
    x = d.to_model_input(s.images, model)  # (N, 3, 56, 56)
    with torch.no_grad():
        after8 = torch.cat([vis.trace_groups(model, x[i:i + 250], layers=True)[:, 7]
                            for i in range(0, len(x), 250)]).numpy()  # (N, 196)
        pruned8 = torch.cat([vis.trace_groups(pruned, x[i:i + 250], layers=True)[:, 7]
                             for i in range(0, len(x), 250)]).numpy()  # (N, 196)
    kinds = patch_kinds(s)
    stats, alive = composition(after8, kinds), kept(pruned8, kinds)
    rows = []
    for i in ROWS:
        img = s.images[i]
        pics = vis.merge_picture(model, img, layers=LAYERS, scale=4)
        prune = vis.merge_picture(pruned, img, layers=[7], scale=4)[0]
        big = img.repeat(4, axis=0).repeat(4, axis=1)
        rows.append((f"{s.labels[i]} red dots", [("input", big)] + [
            (f"merged, after block {j + 1}", p) for j, p in zip(LAYERS, pics, strict=True)]
            + [("pruned, after block 8", prune)]))
    tokens = tome_lab.tome_state(model).tokens
    caption = (
        f"vit_dots (zoo weights), bipartite ToMe r={R} (197 -> {tokens[7]} tokens after block 8, "
        f"{tokens[-1]} after block 12), held-out dots test images. Over all "
        f"{len(s.labels)} test images after block 8, of the {stats['tokens']} tokens holding a "
        f"red-dot patch: {100 * stats['only_red']:.0f}% hold only red-dot patches, "
        f"{100 * stats['with_background']:.0f}% also background, "
        f"{100 * stats['with_distractor']:.0f}% also another dot "
        f"({stats['red_patches_per_token']:.1f} red-dot patches per token). Pruning by "
        f"attention at r={R} keeps, after block 8, {100 * alive['red']:.0f}% of the red-dot "
        f"patches, {100 * alive['distractor']:.0f}% of the distractor and "
        f"{100 * alive['background']:.0f}% of the background patches.")
    print(caption)
    fig = vis.figure(rows, size=1.7, caption=caption)
    plots.save(fig, OUT, command=" ".join(["analysis/merge_dots.py", *sys.argv[1:]]))
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
