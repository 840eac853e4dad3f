"""torch.compile(fullgraph=True) of patched models: no graph break, same outputs as eager."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import tiny_vit

import tome_lab
from tome_lab.registry import MATCHING, SCHEDULES

SCHEDULE_ARGS = {"constant": {}, "list": dict(r=[4, 0, 2]), "linear": dict(start=4, end=1),
                 "decreasing": {}, "increasing": {}, "flops": dict(gflops=0.003),
                 "constant_flops": dict(gflops=0.003), "stages": dict(keep_rate=0.5),
                 "keep_ratio": dict(ratio=0.8),
                 "pairs": dict(matching="composite", pairs=[[3, 2], [0, 3], [2, 1]])}


def _compiled_equals_eager(m, x, backend="eager", seed=0):
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend=backend)
    with torch.no_grad():
        torch.manual_seed(seed)
        want = m(x)
        want_tokens = list(tome_lab.tome_state(m).tokens)
        torch.manual_seed(seed)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert tome_lab.tome_state(m).tokens == want_tokens


@pytest.mark.parametrize("matching", sorted(MATCHING.names()))
def test_every_matcher_traces_in_one_graph(matching):
    """fullgraph=True raises on any graph break (a .item(), a data-dependent shape ...)."""
    m = tome_lab.apply_tome(tiny_vit(), r=3, matching=matching)
    _compiled_equals_eager(m, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES.names()))
def test_every_schedule_traces_in_one_graph(schedule):
    kw = {"r": 3, **SCHEDULE_ARGS[schedule]}
    m = tome_lab.apply_tome(tiny_vit(), schedule=schedule, **kw)
    _compiled_equals_eager(m, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("options", [
    dict(prop_attn=False), dict(trace_source=True), dict(partition="random"),
    dict(feature="x", head_agg="concat", distance="euclidean", combine="max"),
])
def test_knobs_trace_in_one_graph(options):
    m = tome_lab.apply_tome(tiny_vit("deit_tiny_distilled_patch16_224"), r=3, **options)
    _compiled_equals_eager(m, torch.randn(2, 3, 64, 64))


# Inductor (the real compiler) for every plug-in of every registry, full tier: each compile is
# tens of seconds on a CPU. Each case compiles several plug-ins at once; the fast test below
# checks that together they name every registered one (and every distance and head_agg).
INDUCTOR_CASES = [
    dict(matching="bipartite"),  # the defaults: constant, k, wavg, alternate, proportional
    dict(matching="bipartite", partition="halves", feature="q", combine="mean",
         schedule="decreasing"),
    dict(matching="bipartite", partition="random", feature="v", combine="max",
         schedule="increasing", distance="dot"),
    dict(matching="dct", r=[6, 2]),
    dict(matching="greedy", feature="x", combine="keep", head_agg="concat",
         schedule="linear", start=4, end=1),
    dict(matching="kmeans", schedule="list", r=[4, 2]),
    dict(matching="atc", linkage="single", schedule="stages", keep_rate=0.5),
    dict(matching="composite", pairs=[[3, 2], [1, 3]]),  # implies schedule="pairs"
    dict(matching="ats", r=[10, 3]),  # padded batches: size-0 tokens masked
    dict(matching="kmedoids", iters=1),
    dict(matching="dpc_knn", k=3, combine="keep"),
    dict(matching="evit", fusion="sum", r=[10, 3]),  # 10 of 16: more than half, one fused
    dict(matching="kth_bipartite", distance="euclidean"),
    dict(matching="local_bipartite", window=1),
    dict(matching="mctf", bidirectional=False),
    dict(matching="none"),
    dict(matching="pruning", schedule="flops", gflops=0.0025),
    dict(matching="random"),
    dict(matching="random_bipartite", schedule="constant_flops", gflops=0.0025),
    dict(matching="pitome", combine="mlerp", schedule="keep_ratio", ratio=0.8),
    dict(matching="ppt", threshold=1e-3),  # both branches computed, each image takes one
    dict(matching="zero_tprune", iters=2, r=[10, 3]),  # I', S and I stages; beyond half
    dict(matching="tofu", switch=1),  # both phases: keep in block 0, MLERP in block 1
    dict(matching="truncate", prop_attn=False),
]


def _case_id(case):
    return ",".join(f"{k}={v}" for k, v in case.items())


def _plugins(case):
    """The registered plug-ins a case runs: {kind: name}, the knobs its matcher uses only."""
    cfg = tome_lab.tome_state(tome_lab.apply_tome(tiny_vit(depth=2), **{"r": 3, **case})).config
    uses = MATCHING.get(cfg.matching).uses
    return {"matching": cfg.matching, "schedule": cfg.schedule, "attention": cfg.attention,
            **({"feature": cfg.feature, "distance": cfg.distance, "head_agg": cfg.head_agg}
               if "metric" in uses else {}),
            **({"combine": cfg.combine} if "combine" in uses else {}),
            **({"partition": cfg.partition} if "partition" in uses else {})}


def test_inductor_cases_cover_every_plugin():
    """A plug-in registered tomorrow fails here until an inductor case compiles it."""
    from tome_lab.registry import ATTENTION, COMBINE, FEATURES, PARTITIONS

    used = collections.defaultdict(set)
    for case in INDUCTOR_CASES:
        for kind, name in _plugins(case).items():
            used[kind].add(name)
    want = {"matching": MATCHING, "schedule": SCHEDULES, "attention": ATTENTION,
            "feature": FEATURES, "combine": COMBINE, "partition": PARTITIONS}
    for kind, registry in want.items():
        assert used[kind] == set(registry.names()), kind
    assert used["distance"] == {"cosine", "dot", "euclidean"}
    assert used["head_agg"] == {"mean", "concat"}


@pytest.mark.full
@pytest.mark.parametrize("case", INDUCTOR_CASES, ids=_case_id)
def test_inductor_compiled_equals_eager_for_every_plugin(case):
    """fallback_random: inductor draws random numbers as eager does (random partitions and
    matchers), so both runs see the same draws."""
    kw = {"r": 3, **case}
    m = tome_lab.apply_tome(tiny_vit(depth=2), **kw)  # 2 blocks: every block merges
    assert sum(tome_lab.tome_state(m).r) > 0 or case["matching"] == "none"
    with torch._inductor.config.patch(fallback_random=True):
        _compiled_equals_eager(m, torch.randn(2, 3, 64, 64), backend="inductor")


@pytest.mark.full
def test_inductor_compiled_deit_tiny_equals_eager():
    """The real compiler (inductor) on a random-initialised DeiT-T, 96 px to stay fast."""
    m = tome_lab.apply_tome(tiny_vit(img_size=96, depth=12, embed_dim=192, num_heads=3), r=4)
    _compiled_equals_eager(m, torch.randn(2, 3, 96, 96), backend="inductor")


def test_compile_model_compiles_every_model_of_a_process():
    """Dynamo keeps 8 graphs per function by default, and every timm ViT shares one
    ``forward``: without the raised limit the ninth distinct model here would raise under
    ``fullgraph=True`` (and run eagerly with only a log warning without it), as in a bench
    over many settings."""
    import copy

    from torch._dynamo.utils import counters

    from tome_lab.runtime import compile_model

    torch._dynamo.reset()
    counters.clear()
    base = tiny_vit(depth=2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for i in range(9):  # 9 distinct r lists, 9 distinct graphs: one past the default 8
            m = tome_lab.apply_tome(copy.deepcopy(base), r=[i % 3, i // 3])
            torch.testing.assert_close(compile_model(m, backend="eager", fullgraph=True)(x),
                                       m(x))
    assert counters["stats"]["unique_graphs"] == 9


def test_compile_model_refuses_inductor_options_on_other_backends():
    from tome_lab.runtime import compile_model

    with pytest.raises(ValueError, match="inductor options"):
        compile_model(tiny_vit(), backend="eager", freezing=True)


@pytest.mark.full
def test_inductor_freezing_equals_eager_and_freezes_the_weights():
    """Freezing folds the weights in as constants: the compiled model computes what the eager
    one does, and a weight changed afterwards is not seen (as ``compile_model``'s docstring
    says)."""
    from tome_lab.runtime import compile_model

    torch._dynamo.reset()
    m = tome_lab.apply_tome(tiny_vit(img_size=64, depth=2), r=3)
    x = torch.randn(2, 3, 64, 64)
    compiled = compile_model(m, freezing=True, fullgraph=True)
    with torch.inference_mode():
        want = m(x)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        m.blocks[1].mlp.fc1.weight.mul_(2.0)
    with torch.inference_mode():
        assert not torch.allclose(m(x), want, atol=1e-3)  # eager sees the new weight
        torch.testing.assert_close(compiled(x), got)  # the frozen graph does not
