"""Reduce at a few stages only, keeping a fixed share of the tokens there
(``schedule="stages", keep_rate=0.7``).

The schedule of the pruning and clustering studies that keep a rate of tokens at three
blocks: DynamicViT (Rao et al., NeurIPS 2021) and EViT (Liang et al., ICLR 2022) reduce after
the 4th, 7th and 10th of DeiT's 12 blocks with keep rate 0.7, and the token-reduction study
of Haurum et al. (ICCVW 2023), whose K-Medoids and DPC-KNN tome_lab implements, and ATC
(Haurum et al., ECCV 2024) use the same three places with keep rates from 0.25 to 0.9.

At a stage block entering with ``n`` tokens, ``p`` of them protected (class, distillation),
``r = (n - p) - ceil(keep_rate * (n - p))``, so ``ceil(keep_rate * (n - p))`` unprotected tokens
survive (EViT rounds its attentive tokens this way and adds its fused token on top, one more
than here: ``tome_lab.matching.evit.published_r`` gives its own counts). The other blocks merge
nothing. tome_lab's choices:

- ``at`` (0-based block indices) defaults to blocks 3, 6 and 9 on a 12-block model and to
  the same fractions of the depth elsewhere (``round(i * depth / 12)``, at most the last
  block; blocks 2, 4 and 6 of the 8-block audio model);
- a stage's r is clamped by the matcher's bound (:func:`tome_lab.flops.block_r`, half the
  unprotected tokens for a bipartite matching), and the returned list is the clamped one;
- with ``gflops=`` the keep rate is chosen among 1.00, 0.99, ..., 0.01 as the one whose
  analytic count (the matcher's own cost included) is closest to the target; ``keep_rate`` is
  ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tome_lab.flops import ViTSpec, block_r
from tome_lab.registry import SCHEDULES
from tome_lab.schedules._budget import closest

STAGES_OF_12 = (3, 6, 9)  # after the 4th, 7th and 10th of 12 blocks (0-based: 3, 6, 9)


def stage_blocks(spec: ViTSpec, at: Sequence[int] | None) -> tuple[int, ...]:
    """The 0-based stage blocks: ``at`` checked, or :data:`STAGES_OF_12` scaled to the depth."""
    if at is None:
        return tuple(sorted({min(round(i * spec.depth / 12), spec.depth - 1)
                             for i in STAGES_OF_12}))
    if isinstance(at, (int, str)) or not all(isinstance(i, int) for i in at):
        raise ValueError(f"schedule 'stages': at must be a list of block indices, got {at!r}")
    bad = [i for i in at if not 0 <= i < spec.depth]
    if bad or not at:
        raise ValueError(f"schedule 'stages': at must list block indices in 0..{spec.depth - 1}"
                         f" (this model has {spec.depth} blocks), got {list(at)!r}")
    return tuple(sorted(set(at)))


def keep_at(spec: ViTSpec, keep: float, blocks: Sequence[int]) -> list[int]:
    """The per-layer r keeping ``ceil(keep * unprotected)`` tokens at each of ``blocks``."""
    n, out = spec.num_tokens, []
    for i in range(spec.depth):
        free = n - spec.num_prefix
        r = block_r(spec, free - math.ceil(keep * free), n) if i in blocks else 0
        out.append(r)
        n -= r
    return out


@SCHEDULES.register("stages")
def stages(r: int, spec: ViTSpec, keep_rate: float = 0.7, at: Sequence[int] | None = None,
           gflops: float | None = None) -> list[int]:
    """Keep rate ``keep_rate`` at the blocks ``at`` (or the rate closest to ``gflops``); ``r`` is
    ignored."""
    blocks = stage_blocks(spec, at)
    if gflops is not None:
        return closest(spec, (keep_at(spec, k / 100, blocks) for k in range(100, 0, -1)), gflops)
    if not (isinstance(keep_rate, (int, float)) and 0 < keep_rate <= 1):
        raise ValueError(f"schedule 'stages': keep_rate must be in (0, 1], got {keep_rate!r}")
    return keep_at(spec, float(keep_rate), blocks)
