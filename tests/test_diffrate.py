"""The learned-rate search (DiffRate-style, tome_lab.search.diffrate) on tiny models: the
relaxed forward's endpoints equal the real model (no reduction) and the composite reduction (a
one-hot rate in one block), on timm ViTs and through other families' adapters (Hugging Face
ViT, timm EVA with rotary embeddings), the loss falls, the FLOP target is met, seeds
reproduce, and the export is a Pareto file the composite runs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import need_extra, tiny_vit

import tome_lab
from tome_lab.search import diffrate
from tome_lab.search.diffrate import DiffRateConfig, Rates, learn, relax, relaxed_forward


def _one_hot(rates, block_keep=None, block_merge=None):
    """Rates at "keep all, merge none" everywhere, except a one-hot candidate where given
    ((block, candidate index))."""
    with torch.no_grad():
        rates.prune_logits.fill_(-1e4)
        rates.merge_logits.fill_(-1e4)
        rates.prune_logits[:, 0] = 0.0
        rates.merge_logits[:, 0] = 0.0
        for logits, pick in ((rates.prune_logits, block_keep), (rates.merge_logits, block_merge)):
            if pick is not None:
                logits[pick[0]].fill_(-1e4)
                logits[pick[0], pick[1]] = 0.0
    return rates


def _check_endpoints(m, x, out=lambda o: o, merge=True, tol=1e-6, counts="kept"):
    """No reduction: the model itself. A one-hot prune (or merge) of 4 tokens in block 0: the
    composite reduction with pairs [[4, 0], ...] (or [[0, 4], ...]); pruned tokens stay in the
    relaxed sequence with size 1e-12 (log size -27.6), so equal to ``tol``."""
    spec = tome_lab.vit_spec(m)
    m0 = spec.num_tokens - spec.num_prefix
    rates = Rates(spec.depth, m0, grid=4, counts=counts)
    relaxed = relax(copy.deepcopy(m))
    picks = [("keep", [[4, 0]] + [[0, 0]] * (spec.depth - 1))]
    if merge:
        picks.append(("merge", [[0, 4]] + [[0, 0]] * (spec.depth - 1)))
    with torch.no_grad():
        got, counts = relaxed_forward(relaxed, _one_hot(rates), x)
        torch.testing.assert_close(got, out(m(x)), rtol=tol * 10, atol=tol)
        assert counts[:, 0].tolist() == [spec.num_tokens] * spec.depth
        for pick, pairs in picks:
            kw = {"block_keep": (0, 1)} if pick == "keep" else {"block_merge": (0, 1)}
            got, counts = relaxed_forward(relaxed, _one_hot(rates, **kw), x)
            hard = tome_lab.apply_tome(copy.deepcopy(m), matching="composite", pairs=pairs)
            torch.testing.assert_close(got, out(hard(x)), rtol=tol * 10, atol=tol)
            assert counts[:, 2].tolist() == pytest.approx([spec.num_tokens - 4] * spec.depth)
    # the relaxation is switched off after each call: the prepared model runs unreduced
    with torch.no_grad():
        torch.testing.assert_close(relaxed(x), m(x))


@pytest.mark.parametrize("name,counts", [("deit_tiny_patch16_224", "kept"),
                                         ("deit_tiny_patch16_224", "removed"),
                                         ("vit_medium_patch16_gap_256", "kept")])
def test_relaxed_forward_endpoints(name, counts):
    m = tiny_vit(name, depth=3).eval()
    with torch.no_grad():  # LayerScale's 1e-6 start would hide the attention branch
        for prm_name, prm in m.named_parameters():
            if prm_name.endswith("gamma"):
                prm.uniform_(0.5, 1.5)
    _check_endpoints(m, torch.randn(2, 3, 64, 64), counts=counts)


def test_removed_counts_prune_from_the_tokens_present():
    """counts="removed": a one-hot "remove 4" in blocks 0 and 1 prunes 4 in each (8 in all);
    counts="kept" with "keep m0 - 4" in both prunes 4 once (block 1's candidate is at the
    count already present)."""
    m = relax(tiny_vit(depth=3).eval())
    spec = tome_lab.tome_state(m).spec
    m0 = spec.num_tokens - spec.num_prefix
    x = torch.randn(2, 3, 64, 64)
    for counts, removed in (("removed", 8), ("kept", 4)):
        rates = _one_hot(Rates(3, m0, grid=4, counts=counts), block_keep=(0, 1))
        with torch.no_grad():
            rates.prune_logits[1].fill_(-1e4)
            rates.prune_logits[1, 1] = 0.0
            _, got = relaxed_forward(m, rates, x)
        assert got[-1, 2].item() == pytest.approx(spec.num_tokens - removed)


def test_relaxed_forward_endpoints_hf_vit():
    """Through the Hugging Face adapter (float64): the classifier's logits field."""
    need_extra("transformers", "hf")
    from hf_family_checks import images, visible
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                    num_attention_heads=4, intermediate_size=64, num_labels=5)
    torch.manual_seed(0)
    m = visible(ViTForImageClassification(cfg))
    _check_endpoints(m, images(32), out=lambda o: o.logits, tol=1e-9)


def test_relaxed_forward_endpoints_eva_rope():
    """Through timm's EVA adapter (rotary embeddings, float64): no reduction and a pruning
    endpoint (a soft merge leaves positions where they were, the composite moves a merged
    token to its centroid, so merging has no exact endpoint here)."""
    from test_family_eva import _model

    m, x = _model("rope_vit")
    _check_endpoints(m, x, merge=False, tol=1e-9)


def test_relaxed_forward_refuses_an_unprepared_model():
    m = tiny_vit(depth=3).eval()
    rates = Rates(3, 16, grid=4)
    with pytest.raises(ValueError, match=r"prepared by diffrate.relax\(model\)"):
        relaxed_forward(m, rates, torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match="ToMe patches"):
        relax(torch.nn.Linear(2, 2))


def _data(m, n_batches=4, seed=0):
    """Random images labelled by the unreduced model itself: reducing can only cost."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(8, 3, 64, 64, generator=g)
        with torch.no_grad():
            batches.append((x, m(x).argmax(-1)))
    return batches


def _learn(seed, steps, hard=False):
    m = tiny_vit(depth=3).eval()
    spec = tome_lab.vit_spec(m)
    target = tome_lab.analytic_gflops(spec, [0] * 3) / 1.5
    cfg = DiffRateConfig(gflops=target, steps=steps, batch_size=8, lr=0.1, lam=20.0, grid=1,
                         seed=seed, threads=1, hard=hard)
    got = learn(m, _data(m), cfg)
    assert tome_lab.tome_state(m) is None  # left as it came
    return got, target, spec


def test_learn_leaves_a_patched_model_as_it_came():
    """Configuration, outputs, train mode and requires_grad as before; also when learning
    fails part-way (a loader that raises)."""
    m = tome_lab.apply_tome(tiny_vit(depth=3), r=2, matching="pruning").train()
    cfg_before = tome_lab.tome_state(m).config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = m.eval()(x)
    m.train()
    spec = tome_lab.vit_spec(m)
    target = tome_lab.analytic_gflops(spec, [0] * 3) / 1.5
    data = _data(tome_lab.remove_tome(copy.deepcopy(m)).eval(), n_batches=1)

    def broken():
        yield data[0]
        raise RuntimeError("loader failed")

    for loader in (data, broken()):
        cfg = DiffRateConfig(gflops=target, steps=1 if loader is data else 5, batch_size=8,
                             grid=1)
        if loader is data:
            learn(m, loader, cfg)
        else:
            with pytest.raises(RuntimeError, match="loader failed"):
                learn(m, loader, cfg)
        assert tome_lab.tome_state(m).config == cfg_before
        assert m.training and all(p.requires_grad for p in m.parameters())
        with torch.no_grad():
            torch.testing.assert_close(m.eval()(x), want)
        m.train()


def test_relaxation_refuses_what_it_cannot_learn_on():
    """A max pool would still see faded tokens; an image tower returns no class logits."""
    from test_family_eva import _eva

    with pytest.raises(TypeError, match="global_pool='avgmax' takes a max over the tokens"):
        relax(tiny_vit("vit_medium_patch16_gap_256", depth=3, global_pool="avgmax"))
    with pytest.raises(TypeError, match="Eva: global_pool='max' takes a max over the tokens"):
        relax(_eva(global_pool="max"))
    headless = relax(tiny_vit(depth=3, num_classes=0).eval())
    rates = Rates(3, 16, grid=4)
    with pytest.raises(TypeError, match="not class logits"):
        # num_classes=0: [B, C] features, which pass; a [B, N, C] token output does not
        headless.forward = lambda images: torch.zeros(2, 17, 64)
        relaxed_forward(headless, rates, torch.randn(2, 3, 64, 64))


def test_gradient_checkpointing_gives_the_same_rate_gradients():
    """Presences are kept per slot, so a block recomputed in backward sees its first run's."""
    grads = []
    for ckpt in (False, True):
        m = relax(tiny_vit(depth=3).eval())
        m.set_grad_checkpointing(ckpt)
        r = Rates(3, 16, grid=2)
        with torch.no_grad():
            r.prune_logits.copy_(torch.linspace(-1, 1, r.prune_logits.numel()).view_as(
                r.prune_logits))
            r.merge_logits.copy_(torch.linspace(1, -1, r.merge_logits.numel()).view_as(
                r.merge_logits))
        logits, counts = relaxed_forward(m, r, torch.randn(2, 3, 64, 64,
                                                           generator=torch.Generator()
                                                           .manual_seed(0)))
        (logits.square().sum() + counts.sum()).backward()
        grads.append((r.prune_logits.grad.clone(), r.merge_logits.grad.clone(), counts))
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b)


def test_learn_meets_the_target_and_seeds_reproduce():
    got, target, spec = _learn(0, steps=30)
    # the loss falls (task + penalty; the start is about 10% above the target) ...
    total = [t + 20.0 * e ** 2 for t, e in zip(got["losses"], got["flop_errors"], strict=True)]
    assert got["flop_errors"][0] > 0.05 and sum(total[-5:]) / 5 < total[0] - 0.1
    # ... the relaxation ends within 5% of the target (last 5 steps' mean within 3%) ...
    assert abs(got["expected_gflops"] - target) / target < 0.05
    assert abs(sum(got["flop_errors"][-5:]) / 5) < 0.03
    # ... and the exported pairs at most the target, one token's step from it
    assert got["gflops"] <= target and got["gflops"] > 0.97 * target
    assert got["gflops"] == pytest.approx(diffrate.pairs_gflops(spec, got["pairs"]), rel=1e-12)
    m = tome_lab.apply_tome(tiny_vit(depth=3), matching="composite", pairs=got["pairs"])
    assert tome_lab.count_flops(m, (3, 64, 64)) == pytest.approx(got["gflops"], rel=1e-9)
    again, _, _ = _learn(0, steps=30)  # the same seed: the same steps and pairs
    assert again["losses"] == got["losses"] and again["pairs"] == got["pairs"]
    other, _, _ = _learn(1, steps=3)
    assert other["flop_errors"] != got["flop_errors"][:3]


def test_straight_through_masks_meet_the_target():
    """hard=True: the forward runs the rounded counts; the last steps' mean FLOP error is
    within 5% and the export at most the target."""
    got, target, _ = _learn(0, steps=30, hard=True)
    assert abs(sum(got["flop_errors"][-5:]) / 5) < 0.05
    assert 0.95 * target < got["gflops"] <= target


def test_round_pairs_repairs_to_the_target():
    m = tiny_vit(depth=3).eval()
    spec = tome_lab.vit_spec(m)
    counts = torch.tensor([[17.0, 15.4, 12.6], [12.6, 12.6, 10.2], [10.2, 9.0, 9.0]])
    target = 0.0040
    pairs, steps = diffrate.round_pairs(spec, counts, target)
    g = diffrate.pairs_gflops(spec, pairs)
    assert g <= target and steps >= 0
    for i in range(3):  # giving back any one token would exceed the target (or is infeasible)
        for j in (0, 1):
            if pairs[i][j] > 0:
                back = [list(v) for v in pairs]
                back[i][j] -= 1
                assert (not diffrate._feasible(spec, back)
                        or diffrate.pairs_gflops(spec, back) > target
                        or diffrate.pairs_gflops(spec, back) <= g)


def test_keep_and_merge_probabilities_follow_their_definitions():
    """At temperature 0.3, against plain Python: kept counts K_c (m0, m0 - g, ...): P(K > j);
    removed counts P_c (0, g, ...) of n present: P(P < n - j); merge counts M_c: P(M > e)."""
    import math

    g, m0 = 3, 10
    for counts in ("kept", "removed"):
        rates = Rates(2, m0, grid=g, counts=counts)
        with torch.no_grad():
            rates.prune_logits.copy_(torch.randn(2, len(rates.prune)))
            rates.merge_logits.copy_(torch.randn(2, len(rates.merge)))
        rates.tau = 0.3

        def softmax(row):
            e = [math.exp(v / 0.3) for v in row]
            return [v / sum(e) for v in e]

        pi = softmax(rates.prune_logits[1].tolist())
        cand = rates.prune.tolist()
        present = torch.tensor([10.0, 7.0])
        got = rates.keep_prob(1, m0, present)
        for b, n in enumerate(present.tolist()):
            for j in range(m0):
                if counts == "kept":
                    want = sum(p for p, k in zip(pi, cand, strict=True) if k > j)
                else:
                    want = sum(p for p, c in zip(pi, cand, strict=True) if c < n - j)
                assert got[b, j].item() == pytest.approx(want, abs=1e-6)
        rho = softmax(rates.merge_logits[0].tolist())
        got = rates.merge_prob(0, 5)
        for e in range(5):
            want = sum(p for p, mm in zip(rho, rates.merge.tolist(), strict=True) if mm > e)
            assert got[e].item() == pytest.approx(want, abs=1e-6)


def test_temperature_anneals_to_tau_end():
    got, _, _ = _learn(0, steps=5)
    assert got["taus"][0] == 1.0 and got["taus"][-1] == pytest.approx(0.1)
    ratios = [b / a for a, b in zip(got["taus"][:-1], got["taus"][1:], strict=True)]
    assert ratios == pytest.approx([0.1 ** 0.25] * 4)  # geometric


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="diffrate gflops must be a number > 0, got -1"):
        DiffRateConfig(gflops=-1)
    with pytest.raises(ValueError, match="diffrate steps must be an int >= 1, got 0"):
        DiffRateConfig(gflops=1.0, steps=0)
    with pytest.raises(ValueError, match=r"diffrate counts must be one of \('kept', 'removed'\)"):
        DiffRateConfig(gflops=1.0, counts="kep")
    with pytest.raises(ValueError, match=r"diffrate tau_end must be a number in \(0, 1\], got 0"):
        DiffRateConfig(gflops=1.0, tau_end=0)


def test_command_line_writes_a_pareto_file(tmp_path, monkeypatch):
    """The CLI end to end on vit_digits for 2 steps, scoring skipped; its pareto.yaml runs."""
    from tome_lab.search.frontier import load_front

    assert diffrate.main(["--model", "vit_digits", "--data", "mnist5k", "--divide", "1.5",
                          "--steps", "2", "--batch-size", "4", "--no-score",
                          "--out", str(tmp_path)]) == 0
    (entry,) = load_front(tmp_path / "pareto.yaml")
    assert entry["matching"] == "composite" and len(entry["pairs"]) == 12
    assert diffrate.main(["--divide", "2", "--gflops", "0.1", "--out", str(tmp_path)]) == 2
