"""Checks shared by the Hugging Face family tests (tests/test_family_hf_*.py): each family test
builds its tiny random models and its float64 reference ``Layout``, and runs these.

Every model here is random-initialised (no network) and given visible values by
:func:`visible`, so that no branch (LayerScale, norms, biases, tokens) hides behind an
initialisation of zeros or ones.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import tome_lab
from tome_lab.flops import analytic_gflops, tokens_per_layer
from tome_lab.registry import COMBINE, FEATURES, MATCHING, PARTITIONS

TOKEN_PARAMS = ("cls_token", "register_tokens", "position_embeddings", "class_embedding",
                "probe", "position_embedding.weight")


def visible(model: nn.Module) -> nn.Module:
    """float64, eval, and every parameter that random init leaves at zeros / ones / tiny
    (tokens, positions, LayerScale, norm weights, biases) given a visible random value."""
    model = model.double().eval()
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.endswith(TOKEN_PARAMS):
                prm.normal_(0, 0.5)
            elif name.endswith("lambda1"):
                prm.uniform_(0.5, 1.5)
            elif "norm" in name and name.endswith("weight"):
                prm.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                prm.normal_(0, 0.1)
    return model


def images(side: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, side, side, dtype=torch.float64, generator=torch.Generator()
                       .manual_seed(1))


def check_reference(model, layout, x, out, r, prop_attn, **options):
    """The patched model equals the float64 reference (``layout`` of an unpatched copy)."""
    from test_reference import reference_forward

    want = reference_forward(layout(model), x, r, prop_attn)
    patched = tome_lab.apply_tome(copy.deepcopy(model), r=r, prop_attn=prop_attn, **options)
    with torch.no_grad():
        got = out(patched(x))
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def check_r0_and_remove(model, x, out):
    """r=0 computes what the library computes; remove_tome restores it bit for bit."""
    with torch.no_grad():
        want = out(model(x))
        tome_lab.apply_tome(model, r=0)
        got = out(model(x))
        tome_lab.apply_tome(model, r=3)
        merged = out(model(x))
        tome_lab.remove_tome(model)
        back = out(model(x))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back, want, rtol=0, atol=0)
    assert merged.shape != want.shape or not torch.allclose(merged, want)
    assert tome_lab.tome_state(model) is None and "forward" not in model.__dict__


def check_state_dict(make):
    plain, patched = make(), tome_lab.apply_tome(make(), r=3)
    a, b = plain.state_dict(), patched.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    patched.load_state_dict(a, strict=True)  # a library checkpoint loads strictly


def check_compile(model, x, out, backend="eager", **options):
    tome_lab.apply_tome(model, r=3, **options)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        want = out(model(x))
        tokens = list(tome_lab.tome_state(model).tokens)
        got = out(compiled(x))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert tome_lab.tome_state(model).tokens == tokens


def _torch_roundtrip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


ROUNDTRIPS = pytest.mark.parametrize("roundtrip", [
    copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)), _torch_roundtrip,
], ids=["deepcopy", "pickle", "torch_save"])


def check_roundtrip(model, x, out, roundtrip):
    tome_lab.apply_tome(model, r=3, trace_source=True)
    with torch.no_grad():
        want = out(model(x))
        twin = roundtrip(model)
        got = out(twin(x))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    st, st2 = tome_lab.tome_state(model), tome_lab.tome_state(twin)
    assert st2 is not st and st2.config == st.config and st2.tokens == st.tokens
    assert all(b._tome_plan.state is st2 for b in twin._tome_blocks)
    tome_lab.remove_tome(twin)
    with torch.no_grad():
        torch.testing.assert_close(out(twin(x)), out(tome_lab.remove_tome(model)(x)),
                                   rtol=0, atol=0)


class Traced(nn.Module):
    """The tensor fvcore traces: one output field of a Hugging Face model."""

    def __init__(self, model, key):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(x)[self.key]


def check_flops(model, side, key, r, **options):
    model = model.float()
    tome_lab.apply_tome(model, r=r, **options)
    st = tome_lab.tome_state(model)
    got = tome_lab.count_flops(Traced(model, key), (3, side, side))
    assert got == pytest.approx(analytic_gflops(st.spec, st.r), rel=1e-9)


def check_unknown_type():
    class Other(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="ToMe patches"):
        tome_lab.apply_tome(Other(), r=2)


def knob_cases():
    for reg, key in ((FEATURES, "feature"), (COMBINE, "combine"), (PARTITIONS, "partition")):
        for name in reg.names():
            yield {key: name}
    for d in ("cosine", "dot", "euclidean"):
        yield {"distance": d}
    yield {"head_agg": "concat"}


ZOO = [*({"matching": m} for m in MATCHING.names()), *knob_cases()]


def zoo_id(options):
    return "-".join(f"{k}={v}" for k, v in options.items())


def check_zoo(model, x, out, options):
    """Every matcher and knob runs on the family (invariants as tests/test_zoo.py), or is
    refused at configuration with a clear error: the class-token matchers on a model without
    a class token."""
    from tome_lab.matching import capabilities

    caps = capabilities(MATCHING.get(options.get("matching", "bipartite")))
    spec = tome_lab.vit_spec(model)
    p, n0 = spec.num_prefix, spec.num_tokens
    rs = [5, 3, 8]
    try:
        tome_lab.apply_tome(model, r=rs, trace_source=caps.sources, **options)
    except ValueError as err:
        assert not spec.class_token and "class token" in str(err), err
        return
    st = tome_lab.tome_state(model)
    with torch.no_grad():
        torch.manual_seed(0)
        y = out(model(x))
        torch.manual_seed(0)
        again = out(model(x))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, again, rtol=0, atol=0)
    if options.get("matching") == "none":
        assert st.tokens == [n0] * 3
        return
    assert st.tokens == tokens_per_layer(st.spec, rs)
    if caps.reduction == "create":
        torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), float(n0)).double())
        return
    torch.testing.assert_close(st.size[:, :p], torch.ones(2, p, 1).double())
    torch.testing.assert_close(st.source[:, :p].double(),
                               torch.eye(n0)[:p].expand(2, -1, -1).double())
    if caps.reduction == "merge":
        torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), float(n0)).double())
