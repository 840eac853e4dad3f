"""The ``moving_digits`` task: deterministic clips whose label is the motion, and the video ViT
``vit_video_digits`` (tube embedding, space-time tokens) patched by ``apply_tome`` unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import assert_top1_reproduces, patched_at_r0_then_r

import tome_lab
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.data import DataError, _mnist_arrays, build_dataset
from tome_lab.tasks import moving_digits as v


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_video_digits", **kw).eval()


def test_generator_is_deterministic_and_cached():
    a = v._generate.__wrapped__("val")  # a fresh generation, bypassing the cache
    b = v.generate("val")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert v.generate("val") is b and not b.clips.flags.writeable


def test_split_shapes_and_pools():
    pools = v.pools()
    assert len(np.unique(np.concatenate(list(pools.values())))) == 5000
    for split, (_, n) in v.SPLITS.items():
        s = v.generate(split)
        assert s.clips.shape == (n, 8, 32, 32) and s.clips.dtype == np.float32
        assert 0.0 <= s.clips.min() and s.clips.max() <= 1.0
        assert np.isin(s.sources, pools[split]).all()
    assert set(np.unique(v.generate("val").labels)) == set(range(8))


def test_the_digit_moves_by_its_label_direction(monkeypatch):
    # Without noise the ink of frame t is the digit at start + t * SPEED * direction: its
    # bounding box, found independently from the pixels, moves exactly so.
    monkeypatch.setattr(v, "NOISE", 0.0)
    s = v._generate.__wrapped__("val")
    for i in range(16):
        corners = []
        for t in range(v.FRAMES):
            ys, xs = np.nonzero(s.clips[i, t] > 0)
            corners.append((ys.min(), xs.min()))
        moves = np.diff(np.array(corners), axis=0)  # (T - 1, 2)
        assert (moves == v.DIRECTIONS[s.labels[i]] * v.SPEED).all(), i


def test_one_frame_does_not_tell_the_direction():
    # Where the digit sits in frame 0 is spread over the frame (more than 3 px of standard
    # deviation per axis), and the classes' average starts lie within the 16 px of room, so
    # a digit's place in one frame leaves its direction open: the motion tells it.
    s = v.generate("train")
    centre = np.array([s.starts[s.labels == k].mean(0) for k in range(8)])  # (8, 2)
    spread = s.starts.std(0)
    assert (spread > 3).all()
    ends = s.starts + v.DIRECTIONS[s.labels] * v.SPEED * (v.FRAMES - 1)
    assert (ends >= 0).all() and (ends <= 32 - v.DIGIT).all()  # the digit never leaves
    assert np.ptp(centre, axis=0).max() < 16  # classes overlap in where they start


def test_dataset_feeds_the_model_normalised():
    m = _model()
    ds = build_dataset(DataConfig(name="moving_digits", split="val", limit=4), m)
    x, y = ds[0]
    assert x.shape == (1, 8, 32, 32)
    i = int(np.sort(np.random.default_rng(0).permutation(500)[:4])[0])  # build_dataset's cut
    s = v.generate("val")
    torch.testing.assert_close(x[0], (torch.from_numpy(s.clips[i].copy()) - 0.1) / 0.2)
    assert int(y) == int(s.labels[i])


def test_normalisation_constants_are_the_train_statistics():
    clips = v.generate("train").clips
    (mean,), (std,) = v._VIDEO_CFG["mean"], v._VIDEO_CFG["std"]
    assert abs(clips.mean() - mean) < 0.01 and abs(clips.std() - std) < 0.01


def test_a_model_of_another_shape_is_refused():
    with pytest.raises(DataError, match="vit_video_digits"):
        build_dataset(DataConfig(name="moving_digits", limit=4),
                      timm.create_model("vit_digits"))
    with pytest.raises(ValueError, match="valid: train, val, test"):
        v.generate("nosuch")


def test_tube_embedding_is_a_strided_3d_patchify():
    m = _model()
    pe = m.patch_embed
    assert pe.num_patches == 256 and pe.grid_size == (4, 8, 8)
    assert m.pos_embed.shape == (1, 256, 64)  # one per space-time position, no class token
    x = torch.randn(2, 1, 8, 32, 32)
    tok = pe(x)  # (2, 256, 64)
    # Token (t, i, j) is the linear map of the 2x4x4 tube at frames 2t..2t+1, rows 4i..,
    # columns 4j..: compare three tokens with that reference, computed by hand.
    w, b = pe.proj.weight.reshape(64, -1), pe.proj.bias
    for t, i, j in [(0, 0, 0), (1, 2, 5), (3, 7, 7)]:
        tube = x[:, 0, 2 * t:2 * t + 2, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(2, -1)
        torch.testing.assert_close(tok[:, t * 64 + i * 8 + j], tube @ w.T + b)
    with pytest.raises(ValueError, match="expects"):
        pe(torch.randn(2, 1, 32, 32))


def test_patch_at_r0_equals_unpatched_and_merges_across_frames_at_r():
    m = _model()
    _, out, st = patched_at_r0_then_r(m, torch.randn(2, 1, 8, 32, 32), 16)
    assert out.shape == (2, 8)
    assert list(st.tokens) == [256 - 16 * (i + 1) for i in range(12)]
    src = st.source  # (B, N_out, 256): which input tokens each output token holds
    assert src.sum(-1).flatten().tolist() == st.size.flatten().tolist()
    frames = torch.arange(256) // 64  # the tube-frame of each input token
    spans = [(frames[s.bool()].max() - frames[s.bool()].min()).item() for s in src[0]]
    assert max(spans) >= 1  # some token holds patches of more than one time step


def test_flops_match_the_closed_form():
    m = _model()
    size = m.pretrained_cfg["input_size"]
    assert size == (1, 8, 32, 32)
    base = tome_lab.count_flops(m, size)
    assert base == pytest.approx(tome_lab.analytic_gflops(tome_lab.vit_spec(m), [0] * 12),
                                 rel=1e-6)
    tome_lab.apply_tome(m, r=16)
    st = tome_lab.tome_state(m)
    merged = tome_lab.count_flops(m, size)
    assert merged == pytest.approx(tome_lab.analytic_gflops(st.spec, st.r), rel=1e-6)
    assert merged < base


def test_evaluate_end_to_end():
    from tome_lab.evaluate import evaluate

    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_video_digits", pretrained=False),
        data=DataConfig(name="moving_digits", limit=8, batch_size=8),
        tome=ToMeConfig(r=16), eval=EvalConfig(speed=False, threads=1)))
    assert out["n_images"] == 8 and out["tokens"] == [256 - 16 * (i + 1) for i in range(12)]


@pytest.mark.full  # a training
def test_train_end_to_end_lowers_the_loss():
    from tome_lab.config import TrainConfig, TrainRunConfig
    from tome_lab.train import train

    out = train(TrainRunConfig(
        model=ModelConfig(name="vit_video_digits", pretrained=False),
        data=DataConfig(name="moving_digits", limit=16),
        train=TrainConfig(epochs=6, batch_size=16, max_steps=6, teacher="none", augment=False,
                          speed_steps=0, progress=False, drop_path=0.0, threads=1,
                          warmup_epochs=0.0, eval_every=100, select="last")))
    assert out["steps"] == 6 and out["last_loss"] < out["first_loss"] - 0.1
    assert out["split"] == "test" and out["splits"] == {"train": 16, "val": 16, "test": 16}


def test_pretrained_without_checkpoint_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(v, "ZOO_CHECKPOINT", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="python -m tome_lab.train"):
        timm.create_model("vit_video_digits", pretrained=True)


def test_digits_come_from_the_bundled_set():
    x, _ = _mnist_arrays()
    s = v.generate("val")
    assert s.sources.max() < len(x)


@pytest.mark.full  # 1,000 clips through each full-size model
@pytest.mark.parametrize("name", ["vit_video_digits", "vit_video_digits_tome16"])
def test_committed_checkpoints_reproduce_their_recorded_test_top1(name):
    import json

    from tome_lab.evaluate import evaluate

    zoo = v.ZOO_CHECKPOINT.parent
    rec = json.loads((zoo / f"{name}.json").read_text())
    assert rec["split"] == "test" and rec["splits"] == {"train": 6000, "val": 500, "test": 1000}
    assert (zoo / f"{name}.safetensors").stat().st_size <= 20 * 2**20
    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_video_digits", checkpoint=str(zoo / f"{name}.safetensors")),
        data=DataConfig(name="moving_digits", batch_size=250),
        tome=ToMeConfig(r=rec["config"]["tome"]["r"]), eval=EvalConfig(speed=False, threads=2)))
    assert out["n_images"] == 1000
    assert_top1_reproduces(out, rec, name)
