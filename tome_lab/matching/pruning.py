"""Pruning: drop the r least useful unprotected tokens instead of merging them.

``criterion="attention"`` keeps the tokens the class token attends to most (averaged over
heads), as EViT's selection (Liang et al., ICLR 2022) does without EViT's fusion of the
dropped tokens; without a class token it uses the mean attention each token receives. Both
come from the block's attention statistics (``MatchContext.attn``), computed from its own q
and k with its mask: while nothing has merged (all sizes one, as under pruning alone) that
equals softmax(q k^T / sqrt(d)); after merges it includes proportional attention's log size.
``"norm"`` keeps the tokens of largest L2 norm; ``"random"`` drops at random.

``matching="evit"`` was an alias of this plug-in until issue 25: results recorded under that
name are this pruning (``criterion="attention"``), not EViT, which is now its own plug-in with
the fusion (:mod:`tome_lab.matching.evit`).
"""

from __future__ import annotations

import torch

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, prune_fns
from tome_lab.registry import MATCHING

CRITERIA = ("attention", "norm", "random")


def _request(class_token: bool, criterion: str = "attention") -> frozenset[str]:
    """The attention statistic the criterion reads: the class token's row, else the mean
    attention each token receives."""
    if criterion != "attention":
        return frozenset()
    return frozenset({"cls"}) if class_token else frozenset({"received"})


@MATCHING.register("pruning", "prune")
@uses(reduction="prune", attention=frozenset({"cls", "received"}), stochastic=True)
def pruning(ctx: MatchContext, r: int, criterion: str = "attention") -> tuple[MergeFn, MergeFn]:
    """Keeps all protected tokens and the top N - prefix - r others by ``criterion``."""
    _check_options(criterion)  # apply_config checks it at patch time; a direct call here
    b, n, _ = ctx.x.shape
    p = ctx.num_prefix
    with torch.no_grad():
        if criterion == "attention":  # the block's statistics, computed once (patch.py)
            score = ctx.attn.cls.mean(1) if ctx.class_token else ctx.attn.received
        elif criterion == "norm":
            score = ctx.x.norm(dim=-1)
        else:
            score = torch.rand(b, n, device=ctx.x.device)
        keep = score[:, p:].topk(n - p - r, dim=1).indices + p
        keep = torch.cat([torch.arange(p, device=keep.device).expand(b, -1),
                          keep.sort(dim=1).values], dim=1)
    return prune_fns(keep, n)


def _check_options(criterion: str = "attention") -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(CRITERIA)}")


pruning.attention_request = _request
pruning.check_options = _check_options
