"""PiToMe: protect informative tokens before merging (Tran et al., "Accelerating Transformers
with Spectrum-Preserving Token Merging", NeurIPS 2024).

Each block builds the similarity graph of its unprotected tokens' metric (keys averaged over
heads, as the paper's code) and gives every token an energy score, its mean similarity to all
tokens passed through an ELU below a margin m::

    E_i = 1/M sum_j f(s_ij),   f(s) = s - m if s >= m else alpha (exp(s - m) - 1)

A token in a large cluster of similar tokens has a high energy; an isolated (informative)
token a low one. The tokens are sorted by energy, highest first; the 2r highest are the merge
candidates, split alternately in that order into A (1st, 3rd, ...) and B (2nd, 4th, ...), and
every A token merges into its most similar B token (r merges); the M - 2r lowest-energy tokens
are protected. The margin falls with depth, m = margin * (1 - block / depth): early blocks
only let near-duplicates add energy, late ones almost any neighbour.

Where tome_lab chose or deviated:

- **The energy formula** is the released code's (``pitome_vision``: ``F.elu(sim - margin,
  alpha).mean(-1)`` over all tokens, the token itself included). The paper's equation, as we
  recall it (its text was not at hand when this was written), keeps s rather than s - m above
  the margin, which can order the tokens differently; we follow the code, which made the
  paper's numbers.
- **The margin schedule** is the paper's (as recalled; the released code keeps this form in a
  comment), m = 0.9 - 0.9 * l / L with l the 0-based block index (``margin=0.9``). The
  released DeiT patch uses 0.9 - 0.8 * l / L, and OpenToMe's port 0.75 - 0.75 * l / L;
  ``margin`` sets the start value of the paper's form. ``alpha=1.0``.
- **Prefix tokens** (class, distillation, registers) are left out of the graph, the energy and
  the matching, and stay first; the paper's code removes the class token the same way.
- **Output order:** prefix, protected tokens in descending energy (the code's order), then the
  B tokens in descending energy. Ties in energy keep sequence order (a stable sort); ties in
  similarity pick the first B token.
- **Sizes:** the merge is size-weighted (the code's ``merge_wavg``; ``combine`` may change it,
  and ``keep`` keeps the B token); sizes add up. The energy itself ignores sizes, as the code.
- **Distance:** cosine is the paper's; another ``distance`` replaces the cosine in both the
  energy and the matching (the margin then has no calibrated meaning).
- Cost: one [M, M] similarity per block (M unprotected tokens), where bipartite computes an
  [N/2, N/2] one: about 4x bipartite's matching products.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, bipartite_merge_fns, similarity
from tome_lab.registry import MATCHING


def _check_options(margin: float = 0.9, alpha: float = 1.0) -> None:
    for name, value in (("margin", margin), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError(f"pitome {name} must be a finite number, got {value!r}")
    if not -1.0 <= margin <= 1.0:
        raise ValueError(f"pitome margin must lie in [-1, 1] (a cosine similarity), got "
                         f"{margin!r}; the paper's is 0.9")
    if alpha <= 0:
        raise ValueError(f"pitome alpha must be > 0 (the ELU's scale), got {alpha!r}; the "
                         f"paper's is 1.0")


def block_margin(margin: float, block: int, depth: int) -> float:
    """The paper's margin of block ``block`` (0-based) of ``depth``: margin * (1 - block/depth)."""
    return margin * (1.0 - block / max(depth, 1))


@MATCHING.register("pitome")
@uses("metric", "combine", "keep")
def pitome(ctx: MatchContext, r: int, margin: float = 0.9, alpha: float = 1.0
           ) -> tuple[MergeFn, MergeFn]:
    """Merges r of the 2r highest-energy unprotected tokens into the other r.

    Args:
        ctx: the block's metric [B, N, C], prefix count, distance, block index and depth.
        r: tokens to merge (1 <= r <= (N - prefix) // 2).
        margin: the margin of the first block; block l uses margin * (1 - l / depth).
        alpha: the ELU's scale below the margin.
    """
    _check_options(margin, alpha)
    b, n, _ = ctx.metric.shape
    p, dev = ctx.num_prefix, ctx.metric.device
    m = block_margin(margin, ctx.block, ctx.depth)
    with torch.no_grad():
        u = ctx.metric[:, p:]  # (B, M, C) the unprotected tokens
        sim = similarity(u, u, ctx.distance)  # (B, M, M)
        energy = F.elu(sim - m, alpha=alpha).mean(dim=-1)  # (B, M)
        order = energy.sort(dim=-1, descending=True, stable=True).indices  # (B, M)
        a, bb = order[:, 0:2 * r:2], order[:, 1:2 * r:2]  # (B, r) each, alternately
        protected = order[:, 2 * r:]  # (B, M - 2r) the low-energy tokens
        rows = sim.gather(1, a[..., None].expand(-1, -1, sim.shape[-1]))  # (B, r, M)
        dst_idx = rows.gather(2, bb[:, None, :].expand(-1, r, -1)).argmax(dim=-1)  # (B, r)
        # set A of the matching: the protected tokens (never sources) then the candidates
        a_idx = torch.cat([protected, a], dim=1) + p  # (B, M - r) sequence positions
        keep = n - p - 2 * r
        unm_idx = torch.arange(keep, device=dev).expand(b, keep)
        src_idx = torch.arange(keep, keep + r, device=dev).expand(b, r)
    return bipartite_merge_fns(unm_idx, src_idx, dst_idx, n, num_prefix=p,
                               a_idx=a_idx, b_idx=bb + p)


def _flops(spec: Any, n: int, r: int, **options: Any) -> int:
    """One [M, M] similarity of the M unprotected tokens (the A -> B scores are read from it)."""
    m = n - spec.num_prefix
    return m * m * (spec.metric_dim or spec.head_dim)


pitome.check_options = _check_options  # apply_config calls it at patch time
pitome.flops = _flops
