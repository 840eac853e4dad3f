"""Training: a few steps lower the loss, with and without ToMe; runs are deterministic."""

from __future__ import annotations

import pytest
import torch

from tome_lab.train import TrainConfig, augment, main, teacher_cnn, train, train_speed

# A few steps on the same 32 of scikit-learn's digits: the loss on them must fall.
SHORT = dict(data="digits", epochs=6, batch_size=32, limit=32, max_steps=6, teacher="none",
             augment=False, speed_steps=0, progress=False, drop_path=0.0, threads=1,
             warmup_epochs=0.0, eval_every=100)


@pytest.mark.parametrize("tome_r", [0, 4])
def test_a_few_steps_lower_the_loss(tome_r):
    out = train(TrainConfig(**SHORT, tome_r=tome_r))
    assert out["steps"] == 6
    assert out["last_loss"] < out["first_loss"] - 0.1
    assert 0.0 <= out["top1"] <= 100.0 and 0.0 <= out["top1_r0"] <= 100.0


def test_same_seed_same_run():
    a = train(TrainConfig(**{**SHORT, "max_steps": 2}))
    b = train(TrainConfig(**{**SHORT, "max_steps": 2}))
    assert a["last_loss"] == b["last_loss"]


def test_teacher_distillation_path_runs_and_writes_a_checkpoint(tmp_path):
    out = train(TrainConfig(**{**SHORT, "max_steps": 2, "teacher": "cnn", "teacher_epochs": 1,
                               "output": str(tmp_path / "m.safetensors")}))
    assert out["teacher_top1"] is not None
    assert (tmp_path / "m.safetensors").is_file() and (tmp_path / "m.json").is_file()


def test_train_speed_reports_both_settings():
    import timm

    import tome_lab.models  # noqa: F401  (registers vit_digits)

    m = timm.create_model("vit_digits")
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    s = train_speed(m, x, y, r=4, prop_attn=True, steps=1)
    assert s["train_img_per_s_base"] > 0 and s["train_img_per_s_tome"] > 0
    assert not hasattr(m, "_tome")  # the timed copies leave the model alone


def test_train_speed_on_a_patched_model_keeps_its_patch():
    import timm

    import tome_lab
    import tome_lab.models  # noqa: F401

    m = tome_lab.apply_tome(timm.create_model("vit_digits"), r=3)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    s = train_speed(m, x, y, r=3, prop_attn=True, steps=1)
    assert s["train_img_per_s_tome"] > 0
    assert tome_lab.tome_state(m).config.r == 3


def test_augment_keeps_shape_and_moves_pixels():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 12:20, 14:18] = 1.0
    g = torch.Generator().manual_seed(0)
    y = augment(x, g)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_teacher_cnn_shape():
    assert teacher_cnn(1, 10)(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("bad", [dict(teacher="resnet"), dict(epochs=0), dict(tome_r=-1)])
def test_bad_config_is_a_value_error(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_bad_command_line_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["--teacher", "resnet"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--epochs", "0"])
    assert e.value.code == 2
