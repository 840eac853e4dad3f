"""The ``dots`` task: a deterministic counting generator with disjoint splits, and ``vit_dots``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import timm
import torch
from conftest import patched_at_r0_then_r
from scipy import ndimage

import tome_lab
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.data import DataError, build_dataset
from tome_lab.tasks import dots as d

# Tokens after each block at r = 16: 16 a block until block 12, where bipartite matching can
# merge at most (21 - 1) // 2 = 10 (the class token is protected).
TOKENS_R16 = [181, 165, 149, 133, 117, 101, 85, 69, 53, 37, 21, 11]


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_dots", **kw).eval()


@pytest.fixture(scope="module")
def clean(request):
    """The ``val`` split drawn again without pixel noise (same seed, so the same dots)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(d, "NOISE", 0.0)
    try:  # undone before any test runs: NOISE stays 0 only while this split is drawn
        split = d._generate.__wrapped__("val")
    finally:
        mp.undo()
    return split


def test_generator_is_deterministic_cached_and_versioned():
    a = d._generate.__wrapped__("val")  # a fresh generation, bypassing the cache
    b = d.generate("val")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert d.generate("val") is b  # one generation per process
    assert not any(arr.flags.writeable for arr in b)
    assert isinstance(d.VERSION, int) and d.VERSION >= 1


@pytest.mark.parametrize("split", ["val", "test"])
def test_split_shapes_ranges_and_label_range(split):
    s = d.generate(split)
    n, k = d.SPLITS[split], d.MAX_COUNT + d.MAX_DISTRACTORS
    assert s.images.shape == (n, 56, 56, 3) and s.images.dtype == np.float32
    assert s.centres.shape == (n, k, 2) and s.colours.shape == (n, k)
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert set(np.unique(s.labels)) == set(range(1, d.MAX_COUNT + 1))
    np.testing.assert_array_equal(s.labels, (s.colours == 0).sum(1))


def _target_mask(img: np.ndarray) -> np.ndarray:
    """Pixels of exactly the target colour: [H, W] bool (for noise-free images)."""
    return np.abs(img - np.array(d.TARGET, np.float32)).max(-1) < 1e-6


def test_labels_count_the_target_dots_in_the_pixels(clean):
    # Independently of the recorded slots: the connected blobs of target-coloured pixels in the
    # noise-free image are the dots, whole and apart.
    for i in range(200):
        blobs, n = ndimage.label(_target_mask(clean.images[i]))
        assert n == clean.labels[i]
        assert (np.bincount(blobs.ravel())[1:] == d.DOT_PIXELS).all()  # whole, none merged


def test_dots_are_apart_inside_the_canvas_and_straddle_patches(clean):
    c, used = clean.centres, clean.colours >= 0
    assert (c[used] >= d.RADIUS).all() and (c[used] < 56 - d.RADIUS).all()
    for i in range(200):
        p = c[i][used[i]].astype(float)
        dist = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)) + np.eye(len(p)) * 1e9
        assert dist.min() >= d.MIN_DIST
    # The recorded centre of every dot carries its colour (distractors included).
    palette = np.array((d.TARGET, *d.DISTRACTORS), np.float32)
    i, j = np.nonzero(used[:50])
    np.testing.assert_allclose(clean.images[i, c[i, j, 0], c[i, j, 1]],
                               palette[clean.colours[i, j]])
    # Dots sit anywhere, so many cross a 4-px patch border.
    lo = c[used] - d.RADIUS
    assert ((lo // 4) != ((lo + 2 * d.RADIUS) // 4)).any(1).mean() > 0.5


def test_distractors_are_drawn_and_never_target_coloured(clean):
    n_dis = (clean.colours > 0).sum(1)
    assert n_dis.min() == 0 and n_dis.max() == d.MAX_DISTRACTORS
    for colour in d.DISTRACTORS:
        assert not np.allclose(colour, d.TARGET, atol=0.3)


def _digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


def test_splits_use_disjoint_seeds_and_share_no_image():
    val, test = d.generate("val"), d.generate("test")
    assert not _digests(val.images) & _digests(test.images)
    # The dot layouts differ too (noise alone cannot make two splits disjoint).
    lay = {tuple(map(tuple, c.tolist())) for c in val.centres[:200]}
    assert not lay & {tuple(map(tuple, c.tolist())) for c in test.centres[:200]}
    # A shared seed would repeat val's label sequence at the start of test's (the splits
    # differ in size, so their later draws would part): independent draws agree on about 1/12.
    assert (val.labels != test.labels[:len(val.labels)]).mean() > 0.8


def test_normalisation_constants_are_per_channel_pixel_statistics():
    # The recorded constants are the train split's (full tier checks them exactly); val is
    # drawn from the same distribution, so its statistics agree closely.
    mean, std = d.channel_stats("val")
    np.testing.assert_allclose(mean, d._DOTS_CFG["mean"], atol=0.005)
    np.testing.assert_allclose(std, d._DOTS_CFG["std"], atol=0.005)


def test_dataset_feeds_the_model_rgb_normalised():
    m = _model()
    ds = build_dataset(DataConfig(name="dots", split="val", limit=4), m)
    x, y = ds[0]
    assert x.shape == (3, 56, 56) and x.dtype == torch.float32
    s = d.generate("val")
    i = int(np.sort(np.random.default_rng(0).permutation(1000)[:4])[0])  # build_dataset's cut
    mean = torch.tensor(d._DOTS_CFG["mean"]).view(3, 1, 1)
    std = torch.tensor(d._DOTS_CFG["std"]).view(3, 1, 1)
    expect = (torch.from_numpy(s.images[i].copy()).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(x, expect, atol=1e-5, rtol=0)
    assert int(y) == int(s.labels[i])


def test_dataset_refuses_a_model_of_another_input():
    with pytest.raises(DataError, match="vit_dots"):
        build_dataset(DataConfig(name="dots", split="val"),
                      timm.create_model("vit_clutter", pretrained=False))


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="valid: train, val, test"):
        d.generate("holdout")


def test_model_has_196_patch_tokens_and_a_class_token():
    m = _model()
    assert m.patch_embed.num_patches == 196 and m.num_prefix_tokens == 1
    assert m.patch_embed(torch.randn(2, 3, 56, 56)).shape == (2, 196, 64)
    assert m(torch.randn(2, 3, 56, 56)).shape == (2, d.MAX_COUNT + 1)


def test_patch_at_r0_equals_unpatched_and_merges_at_r():
    m = _model()
    _, out, state = patched_at_r0_then_r(m, torch.randn(2, 3, 56, 56), 16)
    assert out.shape == (2, d.MAX_COUNT + 1)
    assert list(state.tokens) == TOKENS_R16
    assert state.size.sum(1).flatten().tolist() == [197.0, 197.0]  # every token accounted for


def test_flops_fall_with_r():
    m = _model()
    spec = tome_lab.vit_spec(m)
    assert spec.num_tokens == 197 and spec.depth == 12
    tome_lab.apply_tome(m, r=16)
    merged = tome_lab.count_flops(m, input_size=(3, 56, 56))  # fvcore, one pass
    st = tome_lab.tome_state(m)
    assert merged == pytest.approx(tome_lab.analytic_gflops(st.spec, st.r), rel=1e-6)
    assert merged < 0.6 * tome_lab.analytic_gflops(spec, [0] * 12)


def test_evaluate_end_to_end():
    from tome_lab.evaluate import evaluate

    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_dots", pretrained=False),
        data=DataConfig(name="dots", split="val", limit=8, batch_size=8),
        tome=ToMeConfig(r=16), eval=EvalConfig(speed=False, threads=1)))
    assert out["n_images"] == 8 and out["tokens"] == TOKENS_R16


def test_zoo_weights_load_from_the_local_file_without_probing_the_network(monkeypatch):
    from tome_lab import models
    from tome_lab.models import create_model

    def no_probe(*a, **k):
        raise AssertionError("the network was probed for a model whose weights are local")

    monkeypatch.setattr(models, "_online", no_probe)
    m = create_model(ModelConfig(name="vit_dots", pretrained=True))
    assert timm.models.get_pretrained_cfg("vit_dots").file == str(d.ZOO_CHECKPOINT)
    ref = models.load_checkpoint(_model(), d.ZOO_CHECKPOINT)
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_pretrained_without_checkpoint_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(d, "ZOO_CHECKPOINT", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="python -m tome_lab.train"):
        timm.create_model("vit_dots", pretrained=True)


@pytest.mark.full
def test_normalisation_constants_are_the_train_statistics():
    mean, std = d.channel_stats("train")
    assert mean == d._DOTS_CFG["mean"] and std == d._DOTS_CFG["std"]


@pytest.mark.full
@pytest.mark.parametrize("name", ["vit_dots", "vit_dots_tome16"])
def test_committed_checkpoints_reproduce_their_recorded_test_top1(name):
    # A missing checkpoint or record fails here (FileNotFoundError), it does not skip.
    from tome_lab.evaluate import evaluate

    zoo = d.ZOO_CHECKPOINT.parent
    rec = json.loads((zoo / f"{name}.json").read_text())
    assert rec["split"] == "test" and rec["splits"]["test"] == d.SPLITS["test"]
    ckpt = zoo / f"{name}.safetensors"
    assert ckpt.stat().st_size <= 20 * 2**20  # the budget: 20 MB
    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_dots", checkpoint=str(ckpt)),
        data=DataConfig(name="dots", batch_size=250),
        tome=ToMeConfig(r=rec["config"]["tome"]["r"]), eval=EvalConfig(speed=False, threads=2)))
    assert out["n_images"] == d.SPLITS["test"]
    assert abs(out["top1"] - rec["top1"]) <= 2 * 100 / d.SPLITS["test"]  # two images
