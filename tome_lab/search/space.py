"""The search space: per-block parameters, their decoding into a per-layer r, the baselines.

Block ``i`` merges ``r_i`` in ``0 .. (N_i - prefix) // 2``, where ``N_i`` is the number of
tokens reaching it given the earlier blocks' r (the engine's clamp, so no two parameter values
mean the same computation). A schedule becomes a trial's configuration with
:func:`trial_config` and its analytic cost with :func:`trial_gflops`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from tome_lab.config import ExperimentConfig
from tome_lab.flops import ViTSpec, analytic_gflops, block_r


def model_spec(exp: ExperimentConfig) -> ViTSpec:
    """The token / FLOP numbers of ``exp.model`` (a random-weight build: shapes only)."""
    return _model_spec(replace(exp.model, pretrained=False, checkpoint=None))


@functools.lru_cache(maxsize=4)
def _model_spec(model: Any) -> ViTSpec:
    from tome_lab.engine import vit_spec
    from tome_lab.models import create_model

    return vit_spec(create_model(model))


def max_r(spec: ViTSpec, num_tokens: int) -> int:
    """The most a block entering with ``num_tokens`` tokens can merge (the engine's clamp)."""
    return block_r(spec, num_tokens, num_tokens)


def effective(spec: ViTSpec, r: Sequence[int]) -> list[int]:
    """``r`` with each entry clamped as the engine clamps it: the r each block really merges."""
    n, out = spec.num_tokens, []
    for ri in r:
        out.append(block_r(spec, int(ri), n))
        n -= out[-1]
    return out


def param_name(i: int) -> str:
    """The Optuna parameter of block ``i``'s r (zero-padded so they sort by block)."""
    return f"r{i:02d}"


def steps(spec: ViTSpec) -> int:
    """The top of every block's parameter: ``0 .. steps`` (the first block's largest r)."""
    return max_r(spec, spec.num_tokens)


def decode(spec: ViTSpec, values: Sequence[int]) -> list[int]:
    """Per-block parameters (each a fraction ``v / steps`` of what the block can merge) to the
    per-layer r: ``round(v * max_r(n) / steps)`` for the ``n`` tokens reaching the block.

    Every block has the same distribution (integers ``0 .. steps``) whatever the earlier
    blocks drew, so that NSGA-II's crossover can act on every block (Optuna crosses over only
    parameters whose distributions agree across trials); every r from 0 to the block's
    maximum is reachable, and no r is ever clamped.
    """
    top, n, r = steps(spec), spec.num_tokens, []
    for v in values:
        m = max_r(spec, n)
        r.append(int(math.floor(int(v) * m / top + 0.5)) if top else 0)
        n -= r[-1]
    return r


def encode(spec: ViTSpec, r: Sequence[int]) -> list[int]:
    """The per-block parameters whose :func:`decode` is ``r`` (an effective schedule).

    Raises:
        ValueError: ``r`` merges more in some block than the tokens reaching it allow.
    """
    top, values = steps(spec), []
    for i, ri in enumerate(r):
        head = decode(spec, values)
        for v in range(top + 1):
            if decode(spec, [*values, v])[i] == ri:
                values.append(v)
                break
        else:
            n = spec.num_tokens - sum(head)
            raise ValueError(f"block {i} cannot merge r={ri} of its {n} tokens "
                             f"(at most {max_r(spec, n)})")
    return values


def suggest_schedule(trial: Any, spec: ViTSpec) -> list[int]:
    """One r per block from ``trial``: every block's parameter is an integer in
    ``0 .. steps(spec)`` (the same distribution for every block), decoded by :func:`decode`
    into what the tokens left allow."""
    top = steps(spec)
    return decode(spec, [trial.suggest_int(param_name(i), 0, top) for i in range(spec.depth)])


def baselines(spec: ViTSpec) -> list[tuple[str, list[int]]]:
    """The paper's schedules as (label, effective per-layer r), distinct, cheapest last.

    Every constant r the first block can merge (0 up to half its unprotected tokens; a larger
    r is clamped to the same schedule), and the decreasing schedule (2r down to 0) for every r
    whose first block is not clamped. Schedules that the engine's clamping makes identical
    appear once, under the smallest r.
    """
    from tome_lab.registry import SCHEDULES

    out: list[tuple[str, list[int]]] = []
    seen: set[tuple[int, ...]] = set()
    top = max_r(spec, spec.num_tokens)
    for kind, rs in (("constant", range(top + 1)), ("decreasing", range(1, top // 2 + 1))):
        fn = SCHEDULES.get(kind)
        for r in rs:
            sched = effective(spec, fn(r, spec))
            if tuple(sched) not in seen:
                seen.add(tuple(sched))
                out.append((f"{kind} r={r}", sched))
    return out


# --------------------------------------------------------------------------- one trial's setting

def trial_config(exp: ExperimentConfig, r: Sequence[int], knobs: Mapping[str, Any],
                 split: str) -> ExperimentConfig:
    """``exp`` with an explicit per-layer ``r``, the knobs, and data from ``split``."""
    from tome_lab.config import _params
    from tome_lab.registry import MATCHING

    matching = MATCHING.canonical(knobs.get("matching", exp.tome.matching))
    takes = _params(MATCHING.get(matching), 2)  # schedule options mean nothing to a list
    tome = replace(exp.tome, r=tuple(int(v) for v in r), schedule="list", **dict(knobs),
                   options={k: v for k, v in exp.tome.options.items() if k in takes})
    return replace(exp, tome=tome, data=replace(exp.data, split=split))


def trial_gflops(spec: ViTSpec, cfg: ExperimentConfig) -> float:
    """The analytic GFLOPs of a trial's configuration, with what its own plug-ins cost
    (matcher, similarity feature, head aggregation, partition), not the default matcher's."""
    from tome_lab.engine import config_spec

    return analytic_gflops(config_spec(spec, cfg.tome), cfg.tome.r)
