"""Patched models copy, pickle and save; their weights stay timm's; checkpointing is exact."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from conftest import tiny_vit

import tome_lab


def _patched(**kw):
    m = tiny_vit("deit_tiny_distilled_patch16_224", **kw)
    return tome_lab.apply_tome(m, r=3, schedule="flops", gflops=0.003, trace_source=True)


def _torch_roundtrip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("roundtrip", [
    copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)), _torch_roundtrip,
], ids=["deepcopy", "pickle", "torch_save"])
def test_patched_model_roundtrips(roundtrip):
    m = _patched()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = m(x)
        twin = roundtrip(m)
        got = twin(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    st, st2 = tome_lab.tome_state(m), tome_lab.tome_state(twin)
    assert st2 is not st and st2.config == st.config and st2.r == st.r
    assert st2.tokens == st.tokens and st2.tokens[-1] < st.spec.num_tokens
    torch.testing.assert_close(st2.source, st.source)
    # the copy owns its state: its blocks write to it, not to the original's
    assert all(b._tome_plan.state is st2 for b in twin.blocks)
    with torch.no_grad():
        twin(x[:1])
    assert st2.size.shape[0] == 1 and st.size.shape[0] == 2
    # and it can still be reconfigured and removed
    tome_lab.remove_tome(twin)
    plain = tiny_vit("deit_tiny_distilled_patch16_224")
    with torch.no_grad():
        torch.testing.assert_close(twin(x), plain(x), rtol=0, atol=0)


def test_state_dict_untouched_both_ways():
    plain = tiny_vit("deit_tiny_distilled_patch16_224")
    patched = _patched()
    sd_plain, sd_patched = plain.state_dict(), patched.state_dict()
    assert list(sd_plain) == list(sd_patched)
    for k in sd_plain:
        assert torch.equal(sd_plain[k], sd_patched[k]), k
    # a timm checkpoint loads strictly into a patched model, and the other way round
    other = tiny_vit("deit_tiny_distilled_patch16_224", depth=3)
    with torch.no_grad():
        for prm in other.parameters():
            prm.add_(1.0)
    patched.load_state_dict(other.state_dict(), strict=True)
    fresh = tiny_vit("deit_tiny_distilled_patch16_224")
    fresh.load_state_dict(patched.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), other(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_medium_patch16_gap_256"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    """Each block reads its entry sizes from its own slot, so a recomputed block is exact."""
    grads = []
    for ckpt in (False, True):
        m = tiny_vit(name, depth=4).train()
        tome_lab.apply_tome(m, r=3)
        m.set_grad_checkpointing(ckpt)
        torch.manual_seed(1)
        x = torch.randn(2, 3, 64, 64)
        m(x).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7, msg=k)
    assert grads[0]["blocks.0.attn.qkv.weight"].abs().sum() > 0
