"""Pruning: drop the r least useful unprotected tokens instead of merging them.

``criterion="attention"`` keeps the tokens the class token attends to most, as EViT (Liang
et al., ICLR 2022) does; without a class token it uses the mean attention each token
receives. ``"norm"`` keeps the tokens of largest L2 norm; ``"random"`` drops at random.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, prune_fns
from tome_lab.registry import MATCHING

CRITERIA = ("attention", "norm", "random")


def _attention_received(ctx: MatchContext) -> Tensor:
    q, k = ctx.q, ctx.k  # (B, H, N, d)
    scale = q.shape[-1] ** -0.5
    if ctx.class_token:
        attn = ((q[:, :, :1] * scale) @ k.transpose(-2, -1)).softmax(-1)  # (B, H, 1, N)
        return attn.mean(dim=(1, 2))
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(-1)  # (B, H, N, N)
    return attn.mean(dim=(1, 2))


@MATCHING.register("pruning", "prune", "evit")
@uses()
def pruning(ctx: MatchContext, r: int, criterion: str = "attention") -> tuple[MergeFn, MergeFn]:
    """Keeps all protected tokens and the top N - prefix - r others by ``criterion``."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    b, n, _ = ctx.x.shape
    p = ctx.num_prefix
    with torch.no_grad():
        if criterion == "attention":
            score = _attention_received(ctx)
        elif criterion == "norm":
            score = ctx.x.norm(dim=-1)
        else:
            score = torch.rand(b, n, device=ctx.x.device)
        keep = score[:, p:].topk(n - p - r, dim=1).indices + p
        keep = torch.cat([torch.arange(p, device=keep.device).expand(b, -1),
                          keep.sort(dim=1).values], dim=1)
    return prune_fns(keep, n)
