"""apply_tome / remove_tome on today's timm ViT layouts."""

from __future__ import annotations

import collections

import pytest
import timm
import torch
import torch.utils._python_dispatch
from conftest import tiny_vit

import tome_lab
from tome_lab.flops import tokens_per_layer

# (name, overrides): the layouts the issue names, randomly initialised.
FULL_SIZE = [
    ("deit_tiny_patch16_224", {}),
    ("deit_small_distilled_patch16_224", {}),
    ("deit3_small_patch16_224", {}),  # LayerScale, no pos-embed on the class token
    ("vit_base_patch16_reg4_gap_256", dict(embed_dim=192, num_heads=3, depth=4)),  # registers
    ("vit_medium_patch16_gap_256", dict(embed_dim=192, num_heads=3, depth=4)),  # avg, no cls
    ("deit_tiny_patch16_224", dict(qk_norm=True)),
]
# each layout shrunk to 64 px (16 patches), 4 blocks and 64 dimensions in the fast tier, at full
# size in the full one
PARITY_MODELS = [
    *[(name, {**kw, "img_size": 64, "depth": 4, "embed_dim": 64, "num_heads": 4})
      for name, kw in FULL_SIZE],
    *[pytest.param(name, kw, marks=pytest.mark.full) for name, kw in FULL_SIZE],
]


def _model(name, kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


@pytest.mark.parametrize("name,kw", PARITY_MODELS)
def test_r0_parity_and_remove(name, kw):
    m = _model(name, kw)
    x = torch.randn(2, m.patch_embed.proj.in_channels, *m.patch_embed.img_size)
    with torch.no_grad():
        want = m(x)
        tome_lab.apply_tome(m, r=0)
        got = m(x)
        tome_lab.apply_tome(m, r=8)
        merged = m(x)
        tome_lab.remove_tome(m)
        back = m(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(back, want, rtol=0, atol=0)
    assert not torch.allclose(merged, want)  # r=8 really changes the computation
    assert "forward" not in m.blocks[0].__dict__ and tome_lab.tome_state(m) is None


LAYOUTS = [
    ("deit_tiny_patch16_224", {}),  # class token
    ("deit_tiny_distilled_patch16_224", {}),  # class + distillation
    ("vit_base_patch16_reg4_gap_256", dict(img_size=64, reg_tokens=4)),  # 4 registers, no cls?
    ("vit_medium_patch16_gap_256", dict(img_size=64)),  # no prefix, avg pooling
    ("deit3_small_patch16_224", dict(img_size=64)),
]


@pytest.mark.parametrize("name,kw", LAYOUTS)
@pytest.mark.parametrize("schedule,r", [("constant", 3), ("decreasing", 3), ("list", [7, 0, 5])])
def test_invariants(name, kw, schedule, r):
    kw = {**dict(img_size=64, depth=3, embed_dim=64, num_heads=4), **kw}
    m = tiny_vit(name, **kw)
    spec = tome_lab.vit_spec(m)
    p = spec.num_prefix
    tome_lab.apply_tome(m, r=r, schedule=schedule, trace_source=True)
    st = tome_lab.tome_state(m)
    x = torch.randn(3, *m.pretrained_cfg["input_size"][:1], 64, 64)
    with torch.no_grad():
        out = m(x)
    assert torch.isfinite(out).all()
    assert st.tokens == tokens_per_layer(spec, st.r)
    assert st.tokens[-1] < spec.num_tokens
    # sizes sum to the original token count; protected tokens first and alone
    torch.testing.assert_close(st.size.sum(1), torch.full((3, 1), float(spec.num_tokens)))
    assert st.source.shape == (3, st.tokens[-1], spec.num_tokens)
    eye = torch.eye(spec.num_tokens)[:p]
    torch.testing.assert_close(st.source[:, :p], eye.expand(3, p, -1))
    torch.testing.assert_close(st.source.sum(-1, keepdim=True), st.size)


def test_prefix_tokens_unchanged_by_merging():
    """The class token's value after block 0 equals the unpatched one (nothing merges into it)."""
    m = tiny_vit("deit_tiny_distilled_patch16_224", depth=1)
    x = torch.randn(2, 3, 64, 64)
    feats = {}
    m.blocks[0].register_forward_hook(lambda mod, i, o: feats.__setitem__("o", o))
    with torch.no_grad():
        m(x)
        ref = feats["o"][:, :2].clone()
        tome_lab.apply_tome(m, r=6)
        m(x)
    # attention at block 0 sees no sizes yet, so prefix tokens are computed alike
    torch.testing.assert_close(feats["o"][:, :2], ref)
    assert feats["o"].shape[1] == 2 + 16 - 6


def test_gradients_flow_in_training():
    m = tiny_vit(drop_path_rate=0.1).train()
    tome_lab.apply_tome(m, r=4)
    out = m(torch.randn(2, 3, 64, 64))
    out.logsumexp(-1).mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_batch_of_one_and_bf16():
    m = tiny_vit()
    tome_lab.apply_tome(m, r=5)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        mb = m.to(torch.bfloat16)
        out = mb(torch.randn(2, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_unfused_path_matches_fused():
    m = tiny_vit()
    tome_lab.apply_tome(m, r=4)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = m(x)
        for b in m.blocks:
            b.attn.fused_attn = False
        unfused = m(x)
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)


def test_size_weighted_avg_pool():
    """Without a class token, pooling weighs each token by the patches it holds."""
    m = tiny_vit("vit_medium_patch16_gap_256", depth=2)
    tome_lab.apply_tome(m, r=6)
    feats = {}
    m.norm.register_forward_hook(lambda mod, i, o: feats.__setitem__("x", o))
    with torch.no_grad():
        pooled = m.forward_head(m.forward_features(torch.randn(2, 3, 64, 64)), pre_logits=True)
    size = tome_lab.tome_state(m).size
    want = m.fc_norm((feats["x"] * size).sum(1) / size.sum(1))
    torch.testing.assert_close(pooled, want)


def test_reapply_reconfigures():
    m = tiny_vit()
    tome_lab.apply_tome(m, r=2)
    tome_lab.apply_tome(m, r=6, prop_attn=False)
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    st = tome_lab.tome_state(m)
    assert st.r == [6, 6, 6] and st.config.prop_attn is False
    assert st.tokens == [11, 6, 4]  # the last block may merge only (6 - 1) // 2 = 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(r=-1), "r must be >= 0"),
    (dict(r=2.5), "r must be an int"),
    (dict(matching="bipartit"), "Did you mean 'bipartite'"),
    (dict(schedule="constnt"), "Did you mean 'constant'"),
    (dict(r=[1, 2]), "length 2 for a model with 3 blocks"),
    (dict(r=[1, -2, 3]), "ints >= 0"),
    (dict(prop_attn="yes"), "prop_attn must be True or False"),
    (dict(distance="manhattan"), "valid: cosine, dot, euclidean"),
    (dict(bogus=1), "option 'bogus'"),
    (dict(matching="atc", linkge="single"), "Did you mean 'linkage'"),
    (dict(matching="pitome", margn=0.5), r"Did you mean 'margin'\? Their options: alpha, margin"),
    (dict(schedule="flops", gflops=1e6), "cannot be reached"),
    (dict(schedule="flops"), "needs the option gflops"),
])
def test_bad_input_value_errors(kwargs, match):
    m = tiny_vit()
    with pytest.raises(ValueError, match=match):
        tome_lab.apply_tome(m, **kwargs)


def test_unknown_structures_type_errors():
    from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock

    for block_fn in (ResPostBlock, ParallelScalingBlock):
        with pytest.raises(TypeError, match="Block only"):
            tome_lab.apply_tome(tiny_vit(block_fn=block_fn), r=2)
    with pytest.raises(TypeError, match="map"):
        tome_lab.apply_tome(tiny_vit(global_pool="map", class_token=False), r=2)
    with pytest.raises(TypeError, match="VisionTransformer"):
        tome_lab.apply_tome(timm.create_model("resnet18", pretrained=False), r=2)
    m = tiny_vit()
    m.blocks[1].extra = torch.nn.Linear(2, 2)  # something the patch does not understand
    with pytest.raises(TypeError, match="extra"):
        tome_lab.apply_tome(m, r=2)


def test_masked_forward_refused():
    m = tiny_vit()
    tome_lab.apply_tome(m, r=2)
    with pytest.raises(ValueError, match="attn_mask"):
        m.blocks[0](torch.randn(1, 17, 64), attn_mask=torch.zeros(1, 1, 17, 17))


def test_patched_model_deepcopies_and_pickles():
    import copy
    import pickle

    m = tiny_vit()
    tome_lab.apply_tome(m, r=3, schedule="flops", gflops=0.003)
    twin = copy.deepcopy(m)
    again = pickle.loads(pickle.dumps(m))  # the model itself, not only its config
    assert tome_lab.tome_state(again).config == tome_lab.tome_state(m).config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), m(x))
        torch.testing.assert_close(again(x), m(x))
    assert tome_lab.tome_state(twin).tokens == tome_lab.tome_state(m).tokens
    assert tome_lab.tome_state(again).tokens == tome_lab.tome_state(m).tokens


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten operators a forward dispatches (what a batch-1 forward pays for)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _ops(model, x):
    with torch.inference_mode(), _CountOps() as c:
        model(x)
    return c.ops


# operators a merging block adds (bipartite, cosine, size-weighted average, proportional
# attention); before the engine's second pass they were 49 and 58, then 40 and 50 before
# the merge moved to whole-row index_select / index_add_, then 39 and 45 before the
# size-weighted average touched only the merged rows (3 more, smaller, operators; faster at
# batch 1 to 256 in benchmarks/merge_kernels.py), then 42 and 48 before non-finite scores
# were replaced in place (one nan_to_num_, so that a NaN or an overflow never drops a token)
@pytest.mark.parametrize("name,budget", [("deit_tiny_patch16_224", 43),
                                         ("deit_tiny_distilled_patch16_224", 49)])
def test_operator_budget_of_a_merging_block(name, budget):
    m = tiny_vit(name, img_size=64, depth=4, embed_dim=64, num_heads=4)
    x = torch.randn(1, 3, 64, 64)
    base = _ops(m, x)
    tome_lab.apply_tome(m, r=0)
    r0 = _ops(m, x)
    # r = 0 dispatches nothing timm does not (eval-mode dropouts, identities, are skipped)
    assert not r0 - base, r0 - base
    counts = {}
    for rs in ([3, 0, 0, 0], [3, 3, 0, 0], [3, 0, 3, 0], [3, 3, 3, 0]):
        tome_lab.apply_tome(m, r=rs)
        counts[tuple(rs)] = _ops(m, x)
    steady = counts[3, 3, 0, 0] - counts[3, 0, 0, 0]  # a merging block after the first
    # a block whose r is 0 adds nothing, wherever it sits; every merging block after the
    # first adds the same operators ...
    assert counts[3, 0, 3, 0] == counts[3, 3, 0, 0]
    assert counts[3, 3, 3, 0] - counts[3, 3, 0, 0] == steady
    assert not counts[3, 0, 0, 0] - counts[3, 3, 0, 0]
    assert {"matmul", "argsort", "index_add_", "log"} <= set(steady)
    # ... and few of them: one normalisation, one score matrix, protected tokens masked
    # with -inf rather than cut out and indexed around, no eval-mode dropout
    assert sum(steady.values()) <= budget, dict(steady)


@pytest.mark.parametrize("r", [0, 2])
def test_attention_tensors_are_released_before_the_mlp(r, monkeypatch):
    """As in timm's block, the attention output and q, k, v (views of the qkv projection's
    output) are gone when the MLP allocates its hidden layer, with or without a merge."""
    import weakref

    from tome_lab import patch

    held, alive = [], []
    attention = patch._attention

    def watched(*args, **kwargs):
        y, qkv = attention(*args, **kwargs)
        held[:] = [weakref.ref(t) for t in (y, *qkv)]
        return y, qkv

    monkeypatch.setattr(patch, "_attention", watched)
    m = tome_lab.apply_tome(tiny_vit(), r=r)
    for blk in m.blocks:
        blk.mlp.register_forward_pre_hook(
            lambda mod, i: alive.append([ref() is not None for ref in held]))
    with torch.inference_mode():
        m(torch.randn(2, 3, 64, 64))
    assert alive == [[False] * 4] * len(m.blocks)
