"""The ``moving_digits_dir`` task (issue 24): ``moving_digits``' clips, unchanged, labelled by
digit x direction (80 classes), and its model ``vit_video_dir``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import timm
import torch
from conftest import assert_top1_reproduces

from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.data import DataError, _mnist_arrays, build_dataset, data_version
from tome_lab.tasks import moving_digits as md
from tome_lab.tasks import moving_digits_dir as d

# sha256 over (clips, labels, sources, starts) of moving_digits' test split, computed from the
# code before moving_digits_dir existed (commit 34c2331): the old task must not change.
OLD_TEST_SHA256 = "ea8f9c9375ea8a80e2117a61149036f199e4b0851b42649db4ca6145d73600af"


def _sha256(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_the_old_task_draws_the_same_clips_and_keeps_its_version():
    assert _sha256(md.generate("test")) == OLD_TEST_SHA256
    assert data_version("moving_digits") == "1"


def test_generator_version_names_both_generators():
    assert data_version("moving_digits_dir") == f"{d.VERSION}+moving_digits1"
    assert data_version("video_digits_dir") == data_version("moving_digits_dir")


def test_labels_are_digit_times_eight_plus_direction():
    _, y = _mnist_arrays()
    for split, (_, n) in d.SPLITS.items():
        s, old = d.generate(split), md.generate(split)
        assert s.clips is old.clips and s.clips.shape == (n, 8, 32, 32)  # the same clips
        np.testing.assert_array_equal(s.directions, old.labels)
        np.testing.assert_array_equal(s.digits, y[old.sources])
        np.testing.assert_array_equal(s.labels, s.digits * 8 + s.directions)
        assert s.labels.dtype == np.int64 and 0 <= s.labels.min() and s.labels.max() < 80
        assert not s.labels.flags.writeable
    # every class is trained on, and the test split covers nearly all of them
    assert set(np.unique(d.generate("train").labels)) == set(range(80))
    assert len(np.unique(d.generate("test").labels)) >= 78


def test_splits_draw_from_disjoint_digit_pools():
    pools = md.pools()
    srcs = {split: set(d.generate(split).sources.tolist()) for split in d.SPLITS}
    for split in d.SPLITS:
        assert srcs[split] <= set(pools[split].tolist())
    assert not srcs["train"] & srcs["val"] and not srcs["train"] & srcs["test"]
    assert not srcs["val"] & srcs["test"]


def test_generation_is_deterministic_and_cached():
    a = d._generate.__wrapped__("val")  # a fresh labelling, bypassing this module's cache
    b = d.generate("val")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert d.generate("val") is b


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="train, val, test"):
        d.generate("dev")


def test_model_has_256_tokens_and_80_classes():
    torch.manual_seed(0)
    m = timm.create_model("vit_video_dir", depth=2).eval()
    assert m.patch_embed.num_patches == 256 and m.num_classes == 80
    assert m.pretrained_cfg["input_size"] == (1, 8, 32, 32)
    ref = timm.create_model("vit_video_digits", depth=2)
    same = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("head")}
    assert {k: v.shape for k, v in m.state_dict().items() if not k.startswith("head")} == same
    with torch.no_grad():
        assert m(torch.zeros(2, 1, 8, 32, 32)).shape == (2, 80)


def test_dataset_feeds_the_model_and_refuses_the_8_class_one():
    ds = build_dataset(DataConfig(name="moving_digits_dir", split="val"),
                       timm.create_model("vit_video_dir", depth=1))
    x, y = ds[0]
    assert x.shape == (1, 8, 32, 32) and int(y) == int(d.generate("val").labels[0])
    with pytest.raises(DataError, match="80 classes"):
        build_dataset(DataConfig(name="moving_digits_dir", split="val"),
                      timm.create_model("vit_video_digits", depth=1))


def test_evaluate_end_to_end():
    from tome_lab.evaluate import evaluate

    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_video_dir", pretrained=False),
        data=DataConfig(name="moving_digits_dir", limit=8, batch_size=8),
        tome=ToMeConfig(r=16), eval=EvalConfig(speed=False, threads=1)))
    assert out["n_images"] == 8 and out["tokens"] == [256 - 16 * (i + 1) for i in range(12)]


@pytest.mark.full  # 1,000 clips through each full-size model
@pytest.mark.parametrize("name", ["vit_video_dir", "vit_video_dir_tome16"])
def test_committed_checkpoints_reproduce_their_recorded_test_top1(name):
    from tome_lab.evaluate import evaluate

    zoo = d.ZOO_CHECKPOINT.parent
    rec = json.loads((zoo / f"{name}.json").read_text())
    assert rec["dataset"] == "moving_digits_dir" and rec["split"] == "test"
    assert rec["splits"] == {"train": 6000, "val": 500, "test": 1000}
    assert (zoo / f"{name}.safetensors").stat().st_size <= 20 * 2**20
    out = evaluate(ExperimentConfig(
        model=ModelConfig(name="vit_video_dir", checkpoint=str(zoo / f"{name}.safetensors")),
        data=DataConfig(name="moving_digits_dir", batch_size=250),
        tome=ToMeConfig(r=rec["config"]["tome"]["r"]), eval=EvalConfig(speed=False, threads=2)))
    assert_top1_reproduces(out, rec, name)
