"""The ``spoken_digits`` task (espeak-ng clips, librosa log-mel) and ``vit_audio_digits``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import timm
import torch
from conftest import assert_top1_reproduces, patched_at_r0_then_r

import tome_lab
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.data import DataError, build_dataset
from tome_lab.tasks import spoken_digits as sd

REQUIRE_ESPEAK = "TOME_LAB_REQUIRE_ESPEAK"  # set to 1 by .ci/run: a missing espeak-ng fails


@pytest.fixture
def espeak():
    """espeak-ng's path; skips without it, or fails where $TOME_LAB_REQUIRE_ESPEAK is 1."""
    try:
        return sd.espeak_binary()
    except sd.EspeakNotFound as err:
        if os.environ.get(REQUIRE_ESPEAK) == "1":
            pytest.fail(f"{REQUIRE_ESPEAK}=1 but espeak-ng is missing: install it with "
                        f".ci/espeak-ng.sh as root ({err})")
        pytest.skip("espeak-ng is not installed (.ci/espeak-ng.sh): synthesis cannot run; the "
                    "committed test split still covers the rest")


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_audio_digits", **kw).eval()


def _committed():
    return sd.read_split(sd.COMMITTED_TEST)


# ---- synthesis and features ------------------------------------------------------------------


@pytest.mark.full
@pytest.mark.usefixtures("espeak")
def test_generation_is_deterministic_and_reproduces_the_committed_test_split():
    idx = [0, 13, 587, 999]  # first speaker, a middle one, the last clip
    a = sd.generate("test", indices=idx, workers=2)
    b = sd.generate("test", indices=idx[::-1], workers=1)  # another order, another pool size
    np.testing.assert_array_equal(a.features, b.features[::-1])
    committed = _committed()
    np.testing.assert_array_equal(a.features, committed.features[idx])
    np.testing.assert_array_equal(a.labels, committed.labels[idx])
    assert a.labels.tolist() == [0, 3, 7, 9] and a.speakers.tolist() == [0, 1, 58, 99]


@pytest.mark.full
@pytest.mark.usefixtures("espeak")
def test_synthesis_follows_the_voice_setting():
    spk = sd.speakers("train")[0]
    slow = sd.synthesize(spk._replace(rate=120), "seven")
    fast = sd.synthesize(spk._replace(rate=240), "seven")
    assert slow.dtype == np.float32 and 0 < np.abs(slow).max() <= 1.0
    assert len(slow) > 1.5 * len(fast)  # twice the words per minute, about half the samples
    loud = sd.synthesize(spk._replace(amplitude=160), "seven")
    quiet = sd.synthesize(spk._replace(amplitude=60), "seven")
    assert np.abs(loud).max() > 1.5 * np.abs(quiet).max()


def test_missing_espeak_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no espeak-ng on PATH
    monkeypatch.delenv(sd.ESPEAK_ENV, raising=False)
    monkeypatch.setenv(sd.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(sd.EspeakNotFound, match="apt-get install espeak-ng"):
        sd.espeak_binary()
    with pytest.raises(sd.EspeakNotFound, match="espeak-ng"):
        sd.load("train")  # not cached: it would have to synthesise
    monkeypatch.setenv(sd.ESPEAK_ENV, str(tmp_path / "nosuch-espeak"))
    with pytest.raises(DataError, match="nosuch-espeak"):  # a DataError: the CLIs exit 2
        sd.espeak_binary()
    assert sd.main(["--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    # The committed test split needs no espeak-ng.
    assert len(sd.load("test").labels) == 1000


def test_cli_rejects_a_bad_split_with_exit_2():
    with pytest.raises(SystemExit) as e:
        sd.main(["--split", "holdout"])
    assert e.value.code == 2


def test_log_mel_equals_librosa_melspectrogram():
    import librosa

    rng = np.random.default_rng(0)
    t = np.arange((sd.FRAMES - 1) * sd.HOP) / sd.SAMPLE_RATE
    clip = (0.3 * np.sin(2 * np.pi * 440 * t) * np.hanning(len(t))
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    mel = librosa.feature.melspectrogram(
        y=clip, sr=sd.SAMPLE_RATE, n_fft=sd.N_FFT, hop_length=sd.HOP, n_mels=sd.N_MELS,
        fmin=sd.FMIN, fmax=sd.FMAX, power=2.0)
    db = librosa.power_to_db(mel, ref=(sd.N_FFT / 4) ** 2, top_db=None)
    ref = np.round((np.clip(db, sd.DB_MIN, sd.DB_MAX) - sd.DB_MIN) / (sd.DB_MAX - sd.DB_MIN)
                   * 255)
    out = sd.log_mel(clip)
    assert out.shape == (sd.N_MELS, sd.FRAMES) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).max() <= 1  # float rounding at a quantisation edge
    # 440 Hz is loudest in the mel band containing it.
    centres = librosa.mel_frequencies(sd.N_MELS + 2, fmin=sd.FMIN, fmax=sd.FMAX)[1:-1]
    assert abs(centres[out[:, sd.FRAMES // 2].argmax()] - 440) < 60


def test_render_places_scales_and_adds_noise_at_the_drawn_snr():
    import librosa

    speech = np.zeros(8000, np.float32)
    speech[3000:6600] = np.sin(np.arange(3600) * 0.3).astype(np.float32)
    clip = sd.render(speech, np.random.default_rng(5))
    assert clip.shape == ((sd.FRAMES - 1) * sd.HOP,)
    np.testing.assert_array_equal(clip, sd.render(speech, np.random.default_rng(5)))
    trimmed, (start, end) = librosa.effects.trim(speech, top_db=40)
    assert start <= 3000 and 6600 <= end < 8000  # silence is trimmed, frame by frame
    rng = np.random.default_rng(5)  # the same draws, in render's order
    offset = int(rng.integers(0, len(clip) - len(trimmed) + 1))
    gain = 10 ** (rng.uniform(*sd.GAIN_DB) / 20)
    snr = rng.uniform(*sd.SNR_DB)
    clean = np.zeros_like(clip)
    clean[offset:offset + len(trimmed)] = gain * trimmed
    noise = clip - clean
    assert abs(noise.mean()) < 0.01 * noise.std()  # white noise: what is left is noise only
    measured = 10 * np.log10(np.mean((gain * trimmed) ** 2) / np.mean(noise ** 2))
    assert measured == pytest.approx(snr, abs=0.2)


def test_speakers_hold_out_variants_and_accents_for_test():
    train, val, test = (sd.speakers(s) for s in ("train", "val", "test"))
    assert [len(train), len(val), len(test)] == [sd.SPLITS[s] for s in ("train", "val", "test")]
    assert sd.speakers("val") == val  # deterministic
    held = set(sd.HELD_OUT_VARIANTS)
    assert len(held) == 25 and held < set(sd.VARIANTS)
    assert {s.variant for s in test} <= held
    for s in train + val:
        assert s.variant not in held and s.accent not in sd.HELD_OUT_ACCENTS
    assert {s.accent for s in test} & set(sd.HELD_OUT_ACCENTS)  # some test accents are new too
    assert not {s.voice() for s in test} & {s.voice() for s in train + val}
    for s in train + val + test:
        assert sd.RATE[0] <= s.rate <= sd.RATE[1] and sd.PITCH[0] <= s.pitch <= sd.PITCH[1]


def test_committed_test_split_is_balanced_and_standardised_by_the_constants():
    s = _committed()
    assert s.features.shape == (1000, sd.N_MELS, sd.FRAMES) and s.features.dtype == np.uint8
    assert np.bincount(s.labels).tolist() == [100] * 10
    np.testing.assert_array_equal(s.labels, np.arange(1000) % 10)
    np.testing.assert_array_equal(s.speakers, np.arange(1000) // 10)
    x = (s.features.astype(np.float64) - sd.FEATURE_MEAN) / sd.FEATURE_STD
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.05


def test_save_and_read_round_trip_and_reject_other_formats(tmp_path):
    s = _committed()
    part = sd.SpokenSplit(s.features[:5], s.labels[:5], s.speakers[:5])
    sd.save_split(part, tmp_path / "a.npz")
    back = sd.read_split(tmp_path / "a.npz")
    for x, y in zip(part, back, strict=True):
        np.testing.assert_array_equal(x, y)
    np.savez(tmp_path / "b.npz", features=np.zeros((2, 8, 8), np.uint8), labels=np.zeros(2),
             speakers=np.zeros(2), format=np.int64(sd._FORMAT))
    with pytest.raises(DataError, match="regenerate"):
        sd.read_split(tmp_path / "b.npz")
    (tmp_path / "c.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a spoken_digits split"):
        sd.read_split(tmp_path / "c.npz")


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="valid: train, val, test"):
        sd.speakers("holdout")
    with pytest.raises(ValueError, match="unknown split"):  # DataConfig, before any dataset
        DataConfig(name="spoken_digits", split="holdout")


# ---- the dataset and the model ---------------------------------------------------------------


def test_dataset_feeds_the_model_standardised_log_mel():
    m = _model()
    ds = build_dataset(DataConfig(name="spoken_digits", split="test", limit=4), m)
    x, y = ds[0]
    assert x.shape == (1, sd.N_MELS, sd.FRAMES) and x.dtype == torch.float32
    i = int(np.sort(np.random.default_rng(0).permutation(1000)[:4])[0])  # build_dataset's cut
    s = _committed()
    expect = (torch.from_numpy(s.features[i].astype(np.float32)) - sd.FEATURE_MEAN) \
        / sd.FEATURE_STD
    torch.testing.assert_close(x[0], expect, atol=1e-6, rtol=0)
    assert int(y) == int(s.labels[i])


def test_dataset_refuses_a_model_of_another_input_size():
    with pytest.raises(DataError, match="vit_audio_digits"):
        build_dataset(DataConfig(name="spoken_digits", split="test"),
                      timm.create_model("vit_digits"))


def test_model_is_audiomae_layout_with_128_time_frequency_patches():
    m = _model()
    assert m.patch_embed.grid_size == (8, 16) and m.patch_embed.num_patches == 128
    assert m.num_prefix_tokens == 0 and m.cls_token is None and m.global_pool == "avg"
    assert m.pos_embed.shape == (1, 128, 64)  # one position per spectrogram patch
    assert m(torch.randn(2, 1, 64, 128)).shape == (2, 10)
    # Token (f, t) is the 8 x 8 cell of mel bands 8f..8f+7 and frames 8t..8t+7 (its stem
    # sees a pixel into each neighbour): a change inside one cell moves that token most and
    # only tokens next to it.
    x = torch.randn(1, 1, 64, 128)
    x2 = x.clone()
    x2[0, 0, 20, 44] += 3.0  # band 20 -> row 2, frame 44 -> column 5 (inside the cell)
    with torch.no_grad():
        diff = (m.patch_embed(x2) - m.patch_embed(x)).abs().sum(-1)[0].view(8, 16)
    assert int(diff.flatten().argmax()) == 2 * 16 + 5
    rows, cols = diff.nonzero(as_tuple=True)
    assert (rows - 2).abs().max() <= 1 and (cols - 5).abs().max() <= 1


def test_spec_stem_rejects_other_strides_and_sizes():
    with pytest.raises(ValueError, match="stride of 8"):
        sd.SpecStem(patch_size=16)
    with pytest.raises(ValueError, match="divisible by 8"):
        sd.SpecStem(img_size=(60, 128))


def test_patch_at_r0_equals_unpatched_and_merges_at_r():
    m = _model()
    x = torch.randn(3, 1, 64, 128)
    ref, out, state = patched_at_r0_then_r(m, x, 12)
    assert out.shape == (3, 10)
    assert not torch.allclose(out, ref, atol=1e-4)
    assert list(state.tokens) == [128 - 12 * (i + 1) for i in range(8)]
    assert state.size.sum(1).flatten().tolist() == [128.0] * 3  # every patch accounted for
    tome_lab.remove_tome(m)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def test_flops_match_the_closed_form_and_fall_with_r():
    m = _model()
    spec = tome_lab.vit_spec(m)
    assert spec.num_tokens == 128 and spec.depth == 8
    base = tome_lab.count_flops(m, input_size=(1, 64, 128))
    assert base == pytest.approx(tome_lab.analytic_gflops(spec, [0] * 8), rel=1e-6)
    tome_lab.apply_tome(m, r=12)
    merged = tome_lab.count_flops(m, input_size=(1, 64, 128))
    st = tome_lab.tome_state(m)
    assert merged == pytest.approx(tome_lab.analytic_gflops(st.spec, st.r), rel=1e-6)
    assert merged < base


def test_evaluate_end_to_end_on_the_committed_test_split():
    from tome_lab.evaluate import evaluate

    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_audio_digits", pretrained=False),
        data=DataConfig(name="spoken_digits", limit=8, batch_size=8),
        tome=ToMeConfig(r=12), eval=EvalConfig(speed=False, threads=1)))
    assert out["n_images"] == 8 and out["tokens"] == [128 - 12 * (i + 1) for i in range(8)]
    assert out["gflops"] < out["gflops_base"]


@pytest.mark.full  # a training
def test_train_end_to_end_on_a_few_clips(monkeypatch, tmp_path):
    from tome_lab.config import TrainConfig, TrainRunConfig
    from tome_lab.train import train

    # train / val come from the cache; fill a fresh one with committed clips (no espeak-ng).
    monkeypatch.setenv(sd.CACHE_ENV, str(tmp_path))
    s = _committed()
    for split, sl in (("train", slice(0, 16)), ("val", slice(16, 24))):
        sd.save_split(sd.SpokenSplit(*(a[sl] for a in s)), sd.split_path(split))
    out = train(TrainRunConfig(
        model=ModelConfig(name="vit_audio_digits", pretrained=False),
        data=DataConfig(name="spoken_digits"),
        tome=ToMeConfig(r=8),
        train=TrainConfig(epochs=6, batch_size=16, max_steps=6, teacher="none", augment=False,
                          speed_steps=1, progress=False, drop_path=0.0, threads=1,
                          warmup_epochs=0.0, eval_every=100, select="last")))
    assert out["steps"] == 6 and out["last_loss"] < out["first_loss"] - 0.1
    assert out["splits"] == {"train": 16, "val": 8, "test": 1000}


def test_pretrained_without_checkpoint_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(sd, "ZOO_CHECKPOINT", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="python -m tome_lab.train"):
        timm.create_model("vit_audio_digits", pretrained=True)


@pytest.mark.full  # 1,000 clips through each full-size model
@pytest.mark.parametrize("name", ["vit_audio_digits", "vit_audio_digits_tome16"])
def test_committed_checkpoints_reproduce_their_recorded_test_top1(name):
    import json

    from tome_lab.evaluate import evaluate

    zoo = sd.ZOO_CHECKPOINT.parent
    rec = json.loads((zoo / f"{name}.json").read_text())
    assert rec["split"] == "test" and rec["splits"]["test"] == 1000
    r = rec["config"]["tome"]["r"]
    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_audio_digits", checkpoint=str(zoo / f"{name}.safetensors")),
        data=DataConfig(name="spoken_digits", batch_size=250),
        tome=ToMeConfig(r=r), eval=EvalConfig(speed=False, threads=2)))
    assert_top1_reproduces(out, rec, name)
    if r == 0:  # the off-the-shelf model also loads as the zoo default
        m = timm.create_model("vit_audio_digits", pretrained=True)
        x = torch.from_numpy(_committed().features[:4].astype(np.float32))[:, None]
        x = (x - sd.FEATURE_MEAN) / sd.FEATURE_STD
        from tome_lab.models import load_checkpoint

        other = load_checkpoint(_model(), zoo / f"{name}.safetensors")
        with torch.no_grad():
            torch.testing.assert_close(m.eval()(x), other(x))
