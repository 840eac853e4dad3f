"""The ``clutter`` task: a deterministic generator with disjoint splits, and ``vit_clutter``."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import assert_top1_reproduces, patched_at_r0_then_r

import tome_lab
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.data import _mnist_arrays, build_dataset
from tome_lab.tasks import clutter as c


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_clutter", **kw).eval()


def test_generator_is_deterministic_and_cached():
    a = c._generate.__wrapped__("val")  # a fresh generation, bypassing the cache
    b = c.generate("val")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert c.generate("val") is b  # one generation per process
    assert not b.images.flags.writeable


@pytest.mark.parametrize("split", list(c.SPLITS))
def test_split_shapes_ranges_and_labels(split):
    s = c.generate(split)
    n = c.SPLITS[split][1]
    assert s.images.shape == (n, 56, 56) and s.images.dtype == np.float32
    assert s.sources.shape == (n, 1 + c.FRAGMENTS)
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    _, y = _mnist_arrays()
    np.testing.assert_array_equal(s.labels, y[s.sources[:, 0]])  # label = the whole digit's
    assert set(np.unique(s.labels)) == set(range(10))


def test_pools_are_disjoint_and_every_split_uses_only_its_own():
    pools = c.pools()
    assert sum(len(p) for p in pools.values()) == 5000
    assert len(np.unique(np.concatenate(list(pools.values())))) == 5000
    for split, pool in pools.items():
        s = c.generate(split)
        assert np.isin(s.sources, pool).all()  # digit and clutter from the split's pool
        assert set(s.sources[:, 0]) == set(pool)  # every pool digit is a whole digit once
    test_ink = set(c.generate("test").sources.ravel())
    assert not test_ink & set(c.generate("train").sources.ravel())


def test_whole_digit_is_in_the_image_uncovered(monkeypatch):
    # Without noise, max-compositing leaves every pixel of the labelled digit at least as
    # bright as in the digit: search all placements for one that contains it whole.
    monkeypatch.setattr(c, "NOISE", 0.0)
    s = c._generate.__wrapped__("val")
    x, _ = _mnist_arrays()
    for i in range(8):
        digit = x[s.sources[i, 0]].reshape(28, 28).astype(np.float32) / 255.0
        win = np.lib.stride_tricks.sliding_window_view(s.images[i], (28, 28))  # (29,29,28,28)
        fits = (win >= digit - 1e-6).all(axis=(-1, -2))
        assert fits.any()
        # ... and clutter adds ink outside the digit's window.
        y0, x0 = np.argwhere(fits)[0]
        outside = s.images[i].copy()
        outside[y0:y0 + 28, x0:x0 + 28] = 0.0
        assert outside.sum() > 0


def test_normalisation_constants_are_the_train_statistics():
    imgs = c.generate("train").images
    (mean,), (std,) = c._CLUTTER_CFG["mean"], c._CLUTTER_CFG["std"]
    assert abs(imgs.mean() - mean) < 0.01 and abs(imgs.std() - std) < 0.01


def test_dataset_feeds_the_model_normalised():
    m = _model()
    ds = build_dataset(DataConfig(name="clutter", split="val", limit=4), m)
    x, y = ds[0]
    assert x.shape == (1, 56, 56) and x.dtype == torch.float32
    s = c.generate("val")
    i = int(np.sort(np.random.default_rng(0).permutation(1000)[:4])[0])  # build_dataset's cut
    (mean,), (std,) = c._CLUTTER_CFG["mean"], c._CLUTTER_CFG["std"]
    expect = (torch.from_numpy(s.images[i].copy()) - mean) / std
    torch.testing.assert_close(x[0], expect, atol=1e-5, rtol=0)
    assert int(y) == int(s.labels[i])


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="valid: train, val, test"):
        c.generate("nosuch")
    with pytest.raises(ValueError, match="unknown split"):  # DataConfig, before any dataset
        DataConfig(name="clutter", split="holdout")


def test_model_has_196_patch_tokens_and_two_prefix_tokens():
    m = _model()
    assert m.patch_embed.num_patches == 196 and m.num_prefix_tokens == 2
    assert m.patch_embed(torch.randn(2, 1, 56, 56)).shape == (2, 196, 64)
    assert m(torch.randn(2, 1, 56, 56)).shape == (2, 10)


def test_patch_at_r0_equals_unpatched_and_merges_at_r():
    m = _model()
    _, out, state = patched_at_r0_then_r(m, torch.randn(2, 1, 56, 56), 8)
    assert out.shape == (2, 10)
    assert list(state.tokens) == [198 - 8 * (i + 1) for i in range(12)]
    assert state.size.sum(1).flatten().tolist() == [198.0, 198.0]  # every token accounted for


def test_flops_match_the_closed_form_and_fall_with_r():
    m = _model()
    spec = tome_lab.vit_spec(m)
    assert spec.num_tokens == 198 and spec.depth == 12
    base = tome_lab.count_flops(m, input_size=(1, 56, 56))
    assert base == pytest.approx(tome_lab.analytic_gflops(spec, [0] * 12), rel=1e-6)
    tome_lab.apply_tome(m, r=8)
    merged = tome_lab.count_flops(m, input_size=(1, 56, 56))
    st = tome_lab.tome_state(m)
    assert merged == pytest.approx(tome_lab.analytic_gflops(st.spec, st.r), rel=1e-6)
    assert merged < base


def test_evaluate_end_to_end():
    from tome_lab.evaluate import evaluate

    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_clutter", pretrained=False),
        data=DataConfig(name="clutter", limit=8, batch_size=8),
        tome=ToMeConfig(r=8), eval=EvalConfig(speed=False, threads=1)))
    assert out["n_images"] == 8 and out["tokens"] == [198 - 8 * (i + 1) for i in range(12)]
    assert out["gflops"] < out["gflops_base"]


@pytest.mark.full  # a training
def test_train_end_to_end_lowers_the_loss():
    from tome_lab.config import TrainConfig, TrainRunConfig
    from tome_lab.train import train

    out = train(TrainRunConfig(
        model=ModelConfig(name="vit_clutter", pretrained=False),
        data=DataConfig(name="clutter", limit=16),
        train=TrainConfig(epochs=6, batch_size=16, max_steps=6, teacher="none", augment=False,
                          speed_steps=0, progress=False, drop_path=0.0, threads=1,
                          warmup_epochs=0.0, eval_every=100, select="last")))
    assert out["steps"] == 6 and out["last_loss"] < out["first_loss"] - 0.1
    assert out["split"] == "test" and out["splits"] == {"train": 16, "val": 16, "test": 16}


def test_pretrained_without_checkpoint_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(c, "ZOO_CHECKPOINT", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="python -m tome_lab.train"):
        timm.create_model("vit_clutter", pretrained=True)


@pytest.mark.full  # 2,000 images through the full-size model
def test_committed_checkpoint_reproduces_its_recorded_test_top1():
    import json

    from tome_lab.evaluate import evaluate

    rec = json.loads(c.ZOO_CHECKPOINT.with_suffix(".json").read_text())
    assert rec["split"] == "test" and rec["splits"] == {"train": 8000, "val": 1000, "test": 2000}
    assert c.ZOO_CHECKPOINT.stat().st_size <= 20 * 2**20  # the budget: 20 MB
    out = evaluate(ExperimentConfig(model=ModelConfig(name="vit_clutter"),  # zoo weights
                                    data=DataConfig(name="clutter", batch_size=250),
                                    eval=EvalConfig(speed=False, threads=2)))
    assert out["n_images"] == 2000
    assert_top1_reproduces(out, rec, "vit_clutter")
