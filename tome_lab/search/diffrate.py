"""Learned per-block prune and merge rates under a FLOP target (DiffRate-style).

After Chen et al., "DiffRate: Differentiable Compression Rate for Efficient Vision
Transformers" (ICCV 2023): the model's weights stay frozen; per block, a learnable
distribution over candidate prune counts and one over candidate merge counts are trained on the
``train`` split by a differentiable relaxation, against ``loss = cross-entropy + lam *
((E[GFLOPs] - target) / target)^2``. The result is exported as round (p, m) pairs, one per
block, in the Pareto file's form (:func:`tome_lab.search.frontier.write_pairs_yaml`), which the
composite reduction (:mod:`tome_lab.matching.composite`) runs in ``evaluate``, ``ablate`` and
``apply_tome``.

The relaxation runs inside the model's own patched forward: :func:`relax` patches the model
through its family's adapter with no reduction, and :class:`RateRelaxation` (an
:class:`tome_lab.engine.Relaxation`) replaces every block's merge step, reading the block's
own q, k and v from the engine; so it learns on any classifier of a family the engine
patches (tested on timm ViTs, a Hugging Face ViT classifier and a RoPE EVA), and only the
adapters know a model library. A model that returns no class logits (an image tower's
embeddings) or whose output still sees faded tokens (a max pool) is refused. For rotary
families a token keeps its start position (a soft merge moves none).

The relaxation (all tokens stay in the sequence while learning; each carries a size s, its
patch mass, and a presence a, how much it still counts as a token, both 1 at the start):

- prune: the unprotected tokens are ranked by the class token's attention averaged over heads
  (the mean attention received without a class token), as the composite's ``attention``
  criterion ranks them (tokens already gone rank last); with pi the block's distribution over
  candidate kept counts K_c of the first block's m0 ranks, the token of rank j is kept with
  probability kappa_j = sum_c pi_c [K_c > j] (``counts="kept"``, the default: a candidate at
  or above the n tokens still present prunes nothing; ``counts="removed"`` counts tokens
  removed of those present instead, kappa_j = sum_c pi_c [P_c < n - j], n the sum of the
  unprotected presences, which learned worse, ``benchmarks/diffrate_variants.json``), and
  s and a are multiplied by kappa_j. Proportional attention's log s then masks pruned tokens
  softly, so the task loss sees them fade (DiffRate's differentiable attention mask);
- merge: ToMe's bipartite matching (alternate A/B, keys averaged over heads, cosine) on the
  same tokens, a destination chosen among the tokens still present; edges ranked by score
  (tokens already gone last); with rho the distribution over candidate merge counts M_c, edge
  of rank e merges a fraction q_e = sum_c rho_c [M_c > e] of its source's mass into its
  destination (size-weighted average), and the source's presence falls by (1 - q_e);
- pi and rho are softmaxes of learned logits at a temperature that falls from 1 to
  ``tau_end`` over the steps (annealing: the distributions end near one-hot, which the
  rounded export runs);
- E[GFLOPs]: the analytic count (:func:`tome_lab.flops.analytic_gflops`'s terms, the
  composite's statistic and similarity included) at the expected token counts, the batch means
  of the presences, entering each block, after its pruning and after its merging (E[n]^2
  stands for E[n^2] in attention's term). The statistic is counted in every block, where the
  exported composite computes it only in blocks that prune: an upper bound, by one class
  row per block with a class token (every query's row without one).

Export: the expected per-block counts rounded, made feasible (the ``pairs`` schedule's
bounds), then repaired by single-token steps until the exact analytic count of the pairs is at
most the target and one step from it (the relaxation's count is an expectation; the repair's
size is recorded). Deviations from DiffRate: its merge assigns each removed token to the most
similar kept token over all of them, here bipartite matching (the merge every method here is
compared with); its candidates are every token count and its mask uses a straight-through
discrete sample, here a grid of ``grid`` counts and the expected (soft) mask, annealed toward
one-hot (``hard=True`` gives the straight-through form);
DiffRate learns on ImageNet for a few epochs, here a few hundred steps of an embedded task.
The relaxation splits A/B over the full sequence in every block, the composite over the
tokens left; the two agree in the first reducing block (a test holds the one-hot endpoints
equal to the composite) and differ after it, one more reason for the export's exact count.

Command line (one target, one seed; writes ``<out>/pareto.yaml`` and ``<out>/record.json``)::

    python -m tome_lab.search.diffrate --model vit_dots --data dots --divide 2 --seed 0 \\
        --out runs/diffrate/dots_b20_s0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tome_lab.engine import (
    BlockPlan,
    ForwardState,
    Relaxation,
    apply_config,
    attention_stats,
    block_metric,
    family_of,
    remove_tome,
    tome_state,
    vit_spec,
)
from tome_lab.flops import ViTSpec, analytic_gflops


@dataclass(frozen=True)
class DiffRateConfig:
    """One learned-rate run.

    Attributes:
        gflops: the FLOP target (GFLOPs of one image).
        steps: optimisation steps.
        batch_size: ``train`` images per step.
        lr: Adam's learning rate on the rate logits.
        lam: weight of the squared relative FLOP error.
        grid: candidate counts are multiples of this (0: the unprotected tokens // 24, so about
            24 prune and 12 merge candidates per block).
        seed: seeds the logits' start noise, the data order and torch.
        threads: torch CPU threads (None: torch's default).
        hard: straight-through masks: the forward keeps the round(E[K]) most important tokens
            and merges the round(E[M]) best edges outright (what the export runs), the
            gradient flows through the expected masks (DiffRate's forward is hard too).
        counts: what a prune candidate counts: ``kept`` (tokens kept of the first block's
            ranks, so a candidate at or above the count already present prunes nothing) or
            ``removed`` (tokens pruned of those still present in the block).
        tau_end: the candidates' softmax temperature falls geometrically from 1 to this over
            the steps, so the distributions end near one-hot, nearer what the export runs
            (1: no annealing).
        start: the start logit of "prune none" and "merge none" (the others start at 0, all
            with seeded noise).
    """

    gflops: float
    steps: int = 200
    batch_size: int = 32
    lr: float = 0.1
    lam: float = 20.0
    grid: int = 0
    seed: int = 0
    threads: int | None = None
    hard: bool = False
    counts: str = "kept"
    tau_end: float = 0.1
    start: float = 3.0  # e^3 ~ 20 against ~24 prune / ~12 merge candidates at 0: ~0.45 / ~0.6

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"diffrate {name} must be an int >= 1, got {v!r}")
        for name in ("gflops", "lr", "lam"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"diffrate {name} must be a number > 0, got {v!r}")
        if not isinstance(self.grid, int) or self.grid < 0:
            raise ValueError(f"diffrate grid must be an int >= 0, got {self.grid!r}")
        if self.counts not in COUNTS:
            raise ValueError(f"diffrate counts must be one of {COUNTS}, got {self.counts!r}")
        if isinstance(self.tau_end, bool) or not isinstance(self.tau_end, (int, float)) \
                or not 0 < self.tau_end <= 1:
            raise ValueError(f"diffrate tau_end must be a number in (0, 1], got "
                             f"{self.tau_end!r}")
        if isinstance(self.start, bool) or not isinstance(self.start, (int, float)) \
                or not math.isfinite(self.start):
            raise ValueError(f"diffrate start must be a finite number, got {self.start!r}")


COUNTS = ("kept", "removed")


class Rates(nn.Module):
    """Per block, logits over candidate prune counts and merge counts.

    Args:
        depth: blocks.
        m0: unprotected tokens entering the first block.
        grid: candidate spacing.
        counts: what a prune candidate counts (:class:`DiffRateConfig`): ``removed``, tokens
            pruned of those present when the block starts (0, grid, 2 grid, ... < m0); or
            ``kept``, tokens kept of the first block's m0 ranks (m0, m0 - grid, ... > 0).
            Candidate 0 is "prune none" either way.

    Attributes:
        tau: the softmax temperature over the candidates (the learner anneals it).
    """

    def __init__(self, depth: int, m0: int, grid: int, counts: str = "kept") -> None:
        super().__init__()
        if counts not in COUNTS:
            raise ValueError(f"diffrate counts must be one of {COUNTS}, got {counts!r}")
        self.counts = counts
        prune = torch.arange(0, m0, grid) if counts == "removed" else torch.arange(m0, 0, -grid)
        merge = torch.arange(0, m0 // 2 + 1, grid)  # (Cm,) merge counts, none first
        self.register_buffer("prune", prune)  # (Cp,)
        self.register_buffer("merge", merge)
        self.prune_logits = nn.Parameter(torch.zeros(depth, len(prune)))
        self.merge_logits = nn.Parameter(torch.zeros(depth, len(merge)))
        self.tau = 1.0

    def keep_prob(self, i: int, m0: int, present: Tensor) -> Tensor:
        """[B, m0] probability that the unprotected token of rank j (0: most important;
        tokens already gone rank last) survives block i's pruning, ``present`` ([B]) the
        unprotected tokens still present: P(P < present - j) for a removed count P, P(K > j)
        for a kept count K."""
        pi = (self.prune_logits[i] / self.tau).softmax(-1)  # (Cp,)
        ranks = torch.arange(m0, device=pi.device)
        if self.counts == "kept":
            return (pi @ (self.prune[:, None] > ranks).to(pi.dtype)).expand(len(present), -1)
        room = present.detach()[:, None] - ranks  # (B, m0): present - j
        return ((self.prune < room[..., None]).to(pi.dtype) * pi).sum(-1)

    def merge_prob(self, i: int, na: int) -> Tensor:
        """[na] fraction merged of the edge of rank e in block i: P(M > e)."""
        rho = (self.merge_logits[i] / self.tau).softmax(-1)  # (Cm,)
        return rho @ (self.merge[:, None] > torch.arange(na, device=rho.device)).to(rho.dtype)


def relax(model: nn.Module) -> nn.Module:
    """Prepares ``model`` (in place) for :func:`relaxed_forward`: patched with no reduction,
    proportional attention on, through its family's adapter; :func:`~tome_lab.engine.remove_tome`
    undoes it. ``TypeError`` for a model of no supported family, or one whose output would
    still see faded tokens (its family's :meth:`~tome_lab.engine.Family.relax_refusal`)."""
    from tome_lab.config import ToMeConfig

    why = family_of(model).relax_refusal(model)
    if why is not None:
        raise TypeError(f"{type(model).__name__}: {why}")
    return apply_config(model, ToMeConfig(r=0, matching="bipartite", prop_attn=True))


def _straight_through(prob: Tensor) -> Tensor:
    """The hard mask of the first round(sum prob) ranks (along the last dimension), with
    ``prob``'s gradient."""
    ranks = torch.arange(prob.shape[-1], device=prob.device)
    hard = (ranks < prob.sum(-1, keepdim=True).round()).to(prob.dtype)
    return hard + prob - prob.detach()


class RateRelaxation(Relaxation):
    """The relaxed prune-then-merge of every block (see the module's docstring), run by the
    engine in place of the matcher (:class:`tome_lab.engine.Relaxation`).

    Per forward it keeps each token's presence (``aux["alive"]``, [B, N]) and the expected
    token counts per block (``aux["counts"]``: entering, after pruning, after merging; batch
    means). Grid positions (rotary families) stay where the token started: a soft merge moves
    none.
    """

    def __init__(self, rates: Rates, hard: bool = False) -> None:
        self.rates, self.hard = rates, hard

    def reduce(self, plan: BlockPlan, tome: ForwardState, x_in: Tensor, x: Tensor, q: Tensor,
               k: Tensor, v: Tensor) -> Tensor:
        i, spec = plan.index, plan.state.spec
        b, n, _ = x.shape
        p = spec.num_prefix
        size = tome.sizes[i] if tome.sizes[i] is not None else x.new_ones(b, n, 1)
        # presences per slot, read at i and written at i + 1 (never a running value), so a
        # block recomputed under gradient checkpointing sees its first run's inputs
        slots = tome.aux.setdefault("alive", {})
        alive = slots.get(i)
        alive = x.new_ones(b, n) if alive is None else alive
        n_in = alive.sum(1).mean()
        # prune: rank the unprotected tokens by importance, keep rank j with kappa_j
        want = frozenset({"cls"} if spec.class_token else {"received"})
        stats = attention_stats(q, k, tome.masks[i], want)
        imp = stats.cls.mean(1) if spec.class_token else stats.received  # (B, N)
        order = imp[:, p:].argsort(dim=1, descending=True)  # (B, M0)
        kappa = self.rates.keep_prob(i, n - p, alive[:, p:].sum(1)).to(x.dtype)  # (B, M0)
        kappa = _straight_through(kappa) if self.hard else kappa
        keep = torch.ones_like(alive).scatter(1, order + p, kappa)  # (B, N)
        size, alive = size * keep[..., None], alive * keep
        n_mid = alive.sum(1).mean()
        # merge: bipartite matching, A = even positions, B = odd (prefix never a source)
        metric = F.normalize(block_metric(plan, x_in, q, k, v), dim=-1)  # (B, N, d)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, Na, Nb)
        scores = scores + alive[:, None, 1::2].clamp_min(1e-12).log()  # gone: no destination
        scores[..., : p // 2] = -math.inf  # protected B tokens (a distillation token)
        best, dst = scores.max(-1)  # (B, Na)
        with torch.no_grad():
            rank_score = best + alive[:, ::2].clamp_min(1e-12).log()
            rank_score[:, : (p + 1) // 2] = -math.inf  # protected A tokens
            edge_order = rank_score.argsort(dim=1, descending=True)  # (B, Na)
        na = edge_order.shape[1]
        qe = self.rates.merge_prob(i, na).to(x.dtype)  # (Na,) by edge rank
        qe = _straight_through(qe) if self.hard else qe
        frac = torch.zeros_like(best).scatter(1, edge_order, qe.expand(b, -1))
        frac[:, : (p + 1) // 2] = 0.0
        size_a, size_b = size[:, ::2], size[:, 1::2]
        mass = frac[..., None] * size_a  # (B, Na, 1)
        into = torch.zeros_like(size_b).scatter_add(1, dst[..., None], mass)
        xsum = torch.zeros_like(x[:, 1::2]).scatter_add(
            1, dst[..., None].expand(-1, -1, x.shape[-1]), mass * x[:, ::2])
        x_b = (size_b * x[:, 1::2] + xsum) / (size_b + into).clamp_min(1e-12)
        x = _interleave(x[:, ::2], x_b)
        size = _interleave(size_a - mass, size_b + into)
        alive = _interleave(alive[:, ::2] * (1 - frac), alive[:, 1::2])
        slots[i + 1] = alive
        tome.aux.setdefault("counts", {})[i] = torch.stack([n_in, n_mid, alive.sum(1).mean()])
        # the next block's attention adds log size; a faded token's floor keeps it finite
        tome.sizes[i + 1] = size
        tome.masks[i + 1] = plan.mask(size.clamp_min(1e-12))
        tome.sources[i + 1], tome.positions[i + 1] = tome.sources[i], tome.positions[i]
        tome.tokens[i] = n
        return x


def relaxed_forward(model: nn.Module, rates: Rates, images: Tensor, hard: bool = False
                    ) -> tuple[Tensor, Tensor]:
    """Logits of the frozen ``model`` (prepared by :func:`relax`) under the relaxed reduction,
    and [depth, 3] expected token counts per block (entering, after pruning, after merging;
    batch means). ``hard``: straight-through masks (see :class:`DiffRateConfig`). The logits
    are the model's output, or its ``logits`` field when it returns a record (Hugging Face
    classifiers); any other output (an image tower's embeddings) is a ``TypeError``."""
    state = tome_state(model)
    if state is None or state.config.r != 0 or state.config.matching != "bipartite":
        raise ValueError("relaxed_forward runs a model prepared by diffrate.relax(model)")
    state.relax = RateRelaxation(rates, hard)
    try:
        out = model(images)
    finally:
        state.relax = None
    logits = getattr(out, "logits", out)  # a library's output record, or the tensor itself
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise TypeError(f"{type(model).__name__} returns {type(out).__name__}, not class "
                        f"logits [B, classes]: the learned rates train a classifier (an image "
                        f"tower's embeddings have no labels to learn from)")
    counts = state.last.aux["counts"]
    return logits, torch.stack([counts[i] for i in range(len(counts))])


def _interleave(a: Tensor, b: Tensor) -> Tensor:
    """[B, Na, ...] and [B, Nb, ...] (Na = Nb or Nb + 1) back into sequence order."""
    n = a.shape[1] + b.shape[1]
    out = a.new_empty(a.shape[0], n, *a.shape[2:])
    out[:, ::2], out[:, 1::2] = a, b
    return out


def expected_gflops(spec: ViTSpec, counts: Tensor) -> Tensor:
    """The analytic count at float token counts ([depth, 3]: entering, after pruning, after
    merging), with the composite's class-row statistic and bipartite similarity."""
    heads = spec.attn_dim // spec.head_dim
    total = counts.new_tensor(float(spec.fixed_flops))
    width = spec.metric_dim or spec.head_dim
    for n_in, n_mid, n_out in counts:
        total = total + n_in * spec.attn_token_flops + 2 * n_in * n_in * heads * spec.head_dim
        queries = 1 if spec.class_token else n_in  # the class row, else every query's
        total = total + queries * n_in * spec.attn_dim
        total = total + (n_mid / 2) * (n_mid / 2) * width + n_out * spec.mlp_token_flops
    return (total + counts[-1, 2] * spec.final_token_flops) / 1e9


def pairs_gflops(model_spec: ViTSpec, pairs: Sequence[Sequence[int]]) -> float:
    """The exact analytic GFLOPs of the composite reduction with ``pairs`` (as fvcore
    counts it)."""
    from tome_lab.config import ToMeConfig
    from tome_lab.engine import config_spec

    cfg = ToMeConfig(matching="composite", options={"pairs": [list(v) for v in pairs]})
    return analytic_gflops(config_spec(model_spec, cfg), [p + m for p, m in pairs])


def _feasible(spec: ViTSpec, pairs: list[list[int]]) -> bool:
    n = spec.num_tokens
    for p, m in pairs:
        left = n - spec.num_prefix
        if p < 0 or m < 0 or p > max(left - 1, 0) or m > (left - p) // 2:
            return False
        n -= p + m
    return True


def _fit(spec: ViTSpec, pairs: list[list[int]]) -> list[list[int]]:
    """``pairs`` with each block's p and then m lowered, in order, to what the tokens it
    receives allow (the ``pairs`` schedule's bounds)."""
    out, n = [], spec.num_tokens
    for p, m in pairs:
        left = n - spec.num_prefix
        p = min(max(p, 0), max(left - 1, 0))
        m = min(max(m, 0), (left - p) // 2)
        out.append([p, m])
        n -= p + m
    return out


def round_pairs(spec: ViTSpec, counts: Tensor, target: float) -> tuple[list[list[int]], int]:
    """Round (p, m) pairs from expected counts, then repair by single-token steps (later
    blocks lowered where a step leaves them too few tokens): the exact count ends at most
    ``target``, and no single step back stays within it and comes closer. Returns (pairs,
    steps taken)."""
    pairs = _fit(spec, [[round(n_in - n_mid), round(n_mid - n_out)]
                        for n_in, n_mid, n_out in counts.tolist()])
    steps = 0

    def moves(sign: int) -> list[tuple[float, list[list[int]]]]:
        out = []
        for i in range(len(pairs)):
            for j in (0, 1):
                cand = [list(v) for v in pairs]
                cand[i][j] += sign
                cand = _fit(spec, cand)
                if cand != pairs:
                    out.append((pairs_gflops(spec, cand), cand))
        return out

    g = pairs_gflops(spec, pairs)
    while g > target:  # remove one more token where that saves least (but saves)
        options = [o for o in moves(+1) if o[0] < g]
        if not options:
            raise ValueError(f"no (p, m) pairs reach {target} GFLOPs")
        g, pairs = max(options, key=lambda o: o[0])
        steps += 1
    while True:  # give back a token while that comes closer to the target, within it
        options = [o for o in moves(-1) if g < o[0] <= target]
        if not options:
            break
        g, pairs = max(options, key=lambda o: o[0])
        steps += 1
    return pairs, steps


def learn(model: nn.Module, loader: Any, cfg: DiffRateConfig, log: Any = None
          ) -> dict[str, Any]:
    """Learns the rates of a frozen ``model`` on ``loader`` (the train split).

    ``model`` is patched for the relaxation while it learns (:func:`relax`) and left as it
    came: unpatched, or under the configuration it had.

    Returns:
        ``pairs`` (rounded and repaired), ``gflops`` (their exact analytic count),
        ``expected_gflops`` (the relaxation's at the end), ``counts`` ([depth, 3] expected),
        ``losses``, ``flop_errors`` and ``taus`` (the temperature) per step,
        ``repair_steps``, ``wall_s`` and the final ``logits`` (prune and merge, [depth,
        candidates], the grid and the counts' form).
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    before, was_training = tome_state(model), model.training
    grads = [prm.requires_grad for prm in model.parameters()]
    spec = tome_state(relax(model)).spec
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    try:
        return _learn(model, loader, cfg, spec, log)
    finally:  # the model as it came: configuration, mode and which parameters need grad
        if before is None:
            remove_tome(model)
        else:
            apply_config(model, before.config)
        model.train(was_training)
        for prm, g in zip(model.parameters(), grads, strict=True):
            prm.requires_grad_(g)


def _learn(model: nn.Module, loader: Any, cfg: DiffRateConfig, spec: ViTSpec, log: Any
           ) -> dict[str, Any]:
    """:func:`learn`'s optimisation on a model prepared by :func:`relax`."""
    m0 = spec.num_tokens - spec.num_prefix
    grid = cfg.grid or max(1, m0 // 24)
    rates = Rates(spec.depth, m0, grid, cfg.counts)
    with torch.no_grad():  # start toward the unreduced model (as DiffRate), seeded noise
        rates.prune_logits.normal_(0, 0.01)
        rates.merge_logits.normal_(0, 0.01)
        rates.prune_logits[:, 0] += cfg.start
        rates.merge_logits[:, 0] += cfg.start
    opt = torch.optim.Adam(rates.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    losses, errors, taus, step = [], [], [], 0
    counts = None
    while step < cfg.steps:
        for images, labels in loader:
            rates.tau = cfg.tau_end ** (step / max(cfg.steps - 1, 1))
            taus.append(rates.tau)
            logits, counts = relaxed_forward(model, rates, images, cfg.hard)
            g = expected_gflops(spec, counts)
            err = (g - cfg.gflops) / cfg.gflops
            task = F.cross_entropy(logits, labels)
            loss = task + cfg.lam * err ** 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(task.item())
            errors.append(err.item())
            step += 1
            if log is not None and (step % 20 == 0 or step == 1):
                print(json.dumps({"step": step, "task_loss": round(losses[-1], 4),
                                  "expected_gflops": round(g.item(), 5),
                                  "flop_error": round(errors[-1], 4)}), file=log, flush=True)
            if step >= cfg.steps:
                break
    counts = counts.detach()
    pairs, repair = round_pairs(spec, counts, cfg.gflops)
    return {"pairs": pairs, "gflops": pairs_gflops(spec, pairs),
            "expected_gflops": float(expected_gflops(spec, counts)),
            "counts": [[round(v, 3) for v in row] for row in counts.tolist()],
            "losses": losses, "flop_errors": errors, "taus": taus, "repair_steps": repair,
            "wall_s": round(time.perf_counter() - t0, 3),
            "logits": {"prune": rates.prune_logits.detach().tolist(),
                       "merge": rates.merge_logits.detach().tolist(), "grid": int(grid),
                       "counts": cfg.counts}}


# --------------------------------------------------------------------------- command line

def main(argv: Sequence[str] | None = None) -> int:
    """Learns the rates for one target and seed, scores the exported pairs on val and test,
    writes ``<out>/record.json`` and ``<out>/pareto.yaml``. Exit status 2 for bad input."""
    from tome_lab import results
    from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig
    from tome_lab.data import build_loader
    from tome_lab.evaluate import evaluate
    from tome_lab.models import create_model
    from tome_lab.search.frontier import write_pairs_yaml

    ap = argparse.ArgumentParser(prog="python -m tome_lab.search.diffrate",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_dots")
    ap.add_argument("--data", default="dots")
    ap.add_argument("--gflops", type=float, default=None, help="The FLOP target.")
    ap.add_argument("--divide", type=float, default=None,
                    help="Target = the unmerged model's GFLOPs / this (instead of --gflops).")
    ap.add_argument("--steps", type=int, default=DiffRateConfig.steps)
    ap.add_argument("--batch-size", type=int, default=DiffRateConfig.batch_size)
    ap.add_argument("--lr", type=float, default=DiffRateConfig.lr)
    ap.add_argument("--lam", type=float, default=DiffRateConfig.lam)
    ap.add_argument("--grid", type=int, default=DiffRateConfig.grid)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="Images of val and test to score.")
    ap.add_argument("--counts", default=DiffRateConfig.counts, choices=COUNTS,
                    help="What a prune candidate counts (DiffRateConfig.counts).")
    ap.add_argument("--tau-end", type=float, default=DiffRateConfig.tau_end,
                    help="Final softmax temperature of the candidates (DiffRateConfig.tau_end).")
    ap.add_argument("--start", type=float, default=DiffRateConfig.start,
                    help="Start logit of 'prune none' and 'merge none' (DiffRateConfig.start).")
    ap.add_argument("--hard", action="store_true",
                    help="Straight-through hard masks in the forward (DiffRateConfig.hard).")
    ap.add_argument("--no-score", action="store_true", help="Skip scoring on val and test.")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        if (args.gflops is None) == (args.divide is None):
            raise ValueError("give exactly one of --gflops and --divide")
        exp = ExperimentConfig(model=ModelConfig(name=args.model),
                               data=DataConfig(name=args.data, split="train",
                                               batch_size=args.batch_size),
                               eval=EvalConfig(speed=False, threads=args.threads),
                               seed=args.seed)
        torch.set_num_threads(args.threads)
        model = create_model(exp.model)
        spec = vit_spec(model)
        base = analytic_gflops(spec, [0] * spec.depth)
        target = args.gflops if args.gflops is not None else base / args.divide
        cfg = DiffRateConfig(gflops=target, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, lam=args.lam, grid=args.grid, seed=args.seed,
                             threads=args.threads, hard=args.hard, counts=args.counts,
                             tau_end=args.tau_end, start=args.start)
        loader = build_loader(exp.data, model, shuffle=True, seed=args.seed, drop_last=True)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"python -m tome_lab.search.diffrate: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = results.now()
    with open(out / "log.jsonl", "w") as log:
        got = learn(model, loader, cfg, log)
    record: dict[str, Any] = {"config": asdict(cfg), "model": args.model, "data": args.data,
                              "gflops_base": base, "target": target, **got,
                              "started": started, "env": results.environment("cpu", "fp32")}
    entry: dict[str, Any] = {"pairs": got["pairs"], "gflops": got["gflops"]}
    if not args.no_score:
        t0 = time.perf_counter()
        for split in ("val", "test"):
            pt = ExperimentConfig(model=exp.model,
                                  data=DataConfig(name=args.data, split=split, limit=args.limit),
                                  tome=exp.tome.__class__(matching="composite",
                                                          options={"pairs": got["pairs"]}),
                                  eval=exp.eval, seed=args.seed)
            m = evaluate(pt)
            record[f"top1_{split}"] = entry[f"top1_{split}"] = m["top1"]
            record["gflops_fvcore"] = m["gflops"]
        record["score_s"] = round(time.perf_counter() - t0, 3)
    record["finished"] = results.now()
    results.write_json_atomic(out / "record.json", record)
    write_pairs_yaml(out / "pareto.yaml", exp.__class__(model=exp.model,
                                                        data=DataConfig(name=args.data),
                                                        eval=exp.eval, seed=args.seed),
                     [entry], f"learned rates (DiffRate-style), target {target:.4f} GFLOPs, "
                              f"seed {args.seed}")
    print(json.dumps({k: record[k] for k in ("target", "gflops", "expected_gflops", "pairs",
                                             "wall_s") if k in record}
                     | {k: record[k] for k in ("top1_val", "top1_test") if k in record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
