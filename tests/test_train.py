"""Training: a few steps lower the loss, with and without ToMe; the recipe's parts; selection
looks at val only; runs are deterministic on the CPU; bad input exits 2."""

from __future__ import annotations

import dataclasses
import json

import pytest
import timm
import torch

import tome_lab
import tome_lab.models  # noqa: F401  (registers vit_digits)
from tome_lab.config import DataConfig, ModelConfig, ToMeConfig, TrainConfig, TrainRunConfig
from tome_lab.train import augment, main, param_groups, teacher_cnn, train, train_speed
from tome_lab.training import build_student, loop

# A few steps on the same 32 of scikit-learn's digits: the loss on them must fall.
RECIPE = dict(epochs=6, batch_size=32, max_steps=6, teacher="none", augment=False,
              speed_steps=0, progress=False, drop_path=0.0, threads=1, warmup_epochs=0.0,
              eval_every=100, select="last")


def _cfg(tome_r=0, data=None, **train_kw):
    return TrainRunConfig(
        data=DataConfig(**{"name": "digits", "limit": 32, **(data or {})}),
        tome=ToMeConfig(r=tome_r), train=TrainConfig(**{**RECIPE, **train_kw}))


@pytest.mark.parametrize("tome_r", [0, pytest.param(4, marks=pytest.mark.full)])
def test_a_few_steps_lower_the_loss(tome_r):
    out = train(_cfg(tome_r))
    assert out["steps"] == 6
    assert out["last_loss"] < out["first_loss"] - 0.1
    assert 0.0 <= out["top1"] <= 100.0 and 0.0 <= out["top1_r0"] <= 100.0
    assert out["split"] == "test" and out["splits"] == {"train": 32, "val": 32, "test": 32}


@pytest.mark.full  # trainings (test_a_few_steps_lower_the_loss[0] stays fast)
def test_same_seed_same_run():
    a = train(_cfg(max_steps=2))
    b = train(_cfg(max_steps=2))
    assert a["last_loss"] == b["last_loss"] and a["top1"] == b["top1"]
    assert not torch.are_deterministic_algorithms_enabled()  # the run restored the flag


@pytest.mark.full
def test_loader_workers_and_compile_leave_the_run_unchanged():
    """Two DataLoader workers and torch.compile (a tracing backend, to stay fast) give the same
    steps as the plain CPU run: same batches, same arithmetic."""
    plain = train(_cfg(max_steps=2))
    workers = train(dataclasses.replace(_cfg(max_steps=2), data=DataConfig(
        name="digits", limit=32, num_workers=2)))
    compiled = train(_cfg(max_steps=2, compile=True, compile_backend="eager"))
    assert workers["last_loss"] == plain["last_loss"]
    assert compiled["last_loss"] == pytest.approx(plain["last_loss"], rel=1e-5)


@pytest.mark.full
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_steps_lower_the_loss(dtype):
    """bf16 / fp16 autocast (fp16 through a gradient scaler) with channels-last still learns."""
    out = train(_cfg(dtype=dtype, channels_last=True))
    assert out["last_loss"] < out["first_loss"] - 0.1


@pytest.mark.full
def test_selection_keeps_the_best_val_epoch_and_never_reads_test(monkeypatch, capsys):
    """With select=best the kept weights are those of the epoch with the best val top-1; during
    training no loader of the test split is built."""
    built = []
    real = loop.build_loader

    def spy(cfg, *args, **kwargs):
        built.append(cfg.split)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "build_loader", spy)
    out = train(_cfg(epochs=4, max_steps=None, eval_every=1, select="best", lr=3e-3,
                     data={"limit": 64}))
    assert "test" not in built and {"train", "val"} <= set(built)
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    vals = {r["epoch"]: r["val_top1"] for r in logs if r.get("event") == "epoch"}
    assert len(vals) == 4
    best = max(vals, key=lambda e: (vals[e], -e))  # the first epoch reaching the best
    assert out["epoch"] == best and out["val_top1"] == vals[best]


@pytest.mark.full
def test_teacher_distillation_path_writes_a_checkpoint_and_record(tmp_path):
    path = tmp_path / "m.safetensors"
    out = train(_cfg(max_steps=2, teacher="cnn", teacher_epochs=1, output=str(path)))
    assert out["teacher_val_top1"] is not None and out["teacher_top1"] is not None
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["numbers"]["top1"] == "test" and record["numbers"]["val_top1"].startswith("val")
    assert record["splits"] == {"train": 32, "val": 32, "test": 32}
    assert record["env"]["torch"] == torch.__version__ and "git_rev" in record["env"]
    # the checkpoint evaluates back to the recorded test top-1
    from tome_lab.config import EvalConfig, ExperimentConfig
    from tome_lab.evaluate import evaluate

    again = evaluate(ExperimentConfig(model=ModelConfig(checkpoint=str(path)),
                                      data=DataConfig(name="digits", limit=32),
                                      tome=ToMeConfig(r=0), eval=EvalConfig(speed=False)))
    assert again["top1"] == record["top1"]


def test_weight_decay_skips_norms_biases_pos_embed_and_prefix_tokens():
    m = timm.create_model("vit_digits")
    decay, exempt = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    ids = {id(p) for p in exempt["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in ids}
    # written out independently of the implementation's rule
    expect = {n for n, p in m.named_parameters()
              if n in ("pos_embed", "cls_token", "dist_token") or n.endswith(".bias")
              or ".norm" in n or n.startswith("norm.") or "norm1" in n or "norm2" in n
              or ("stem" in n and p.ndim == 1)}
    assert names == expect
    assert {"pos_embed", "cls_token", "dist_token"} <= names
    assert "blocks.0.attn.qkv.weight" not in names and "head.weight" not in names
    assert len(decay["params"]) + len(exempt["params"]) == len(list(m.parameters()))


def test_register_tokens_are_not_decayed():
    m = timm.create_model("vit_base_patch16_reg4_gap_256", pretrained=False, depth=1,
                          img_size=32, embed_dim=32, num_heads=2)
    _, exempt = param_groups(m, 0.05)
    assert any(p is m.reg_token for p in exempt["params"])


def test_fine_tuning_has_drop_path_and_the_checkpoint_weights(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("vit_digits")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    m = build_student(ModelConfig(checkpoint=str(path)), drop_path=0.1)
    assert m.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert m.training
    for k, v in src.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=0, atol=0)


def test_train_speed_reports_both_settings():
    m = timm.create_model("vit_digits")
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    s = train_speed(m, x, y, ToMeConfig(r=4), steps=1)
    assert s["train_img_per_s_base"] > 0 and s["train_img_per_s_tome"] > 0
    assert s["train_speedup"] == pytest.approx(
        s["train_img_per_s_tome"] / s["train_img_per_s_base"])
    assert tome_lab.tome_state(m) is None  # the timed copies leave the model alone


def test_train_speed_on_a_patched_model_keeps_its_patch():
    m = tome_lab.apply_tome(timm.create_model("vit_digits"), r=3)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    s = train_speed(m, x, y, ToMeConfig(r=3), steps=1)
    assert s["train_img_per_s_tome"] > 0
    assert tome_lab.tome_state(m).config.r == 3


def test_augment_keeps_shape_moves_pixels_and_follows_its_seed():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 12:20, 14:18] = 1.0
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(y, augment(x, torch.Generator().manual_seed(0)))


def test_teacher_cnn_shape():
    assert teacher_cnn(1, 10)(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("bad", [dict(teacher="resnet"), dict(epochs=0), dict(select="worst"),
                                 dict(dtype="fp8"), dict(device="gpu0"), dict(drop_path=1.5)])
def test_bad_config_is_a_value_error(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_training_never_reports_on_the_train_split():
    with pytest.raises(ValueError, match="train"):
        TrainRunConfig(data=DataConfig(split="train"))


@pytest.mark.parametrize("argv,message", [
    (["--teacher", "resnet"], "unknown teacher"),
    (["--epochs", "0"], "train.epochs must be an int >= 1"),
    (["--model", "vit_digitz"], "Did you mean 'vit_digits'"),
    (["--data", "imagefolder", "--data-path", "/no/such"], "does not exist"),
    (["--data", "nosuch"], "unknown dataset"),
    (["--tome.r", "[1,2]"], "r"),
    (["--train.devise", "cpu"], ""),
])
def test_bad_command_line_exits_2(argv, message, capsys):
    assert main(["--limit", "32", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.full
def test_cli_takes_an_ablate_point_config_and_train_flags(tmp_path, capsys):
    """A sweep point's config.yaml runs in train; its model and ToMe sections are used."""
    from tome_lab.config import ExperimentConfig, to_dict

    point = ExperimentConfig(model=ModelConfig(pretrained=False),
                             data=DataConfig(name="digits", limit=32),
                             tome=ToMeConfig(r=2, matching="kth_bipartite", options={"k": 3}))
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(point)))
    flags = [f"--train.{k}={str(v).lower() if isinstance(v, bool) else v}"
             for k, v in RECIPE.items()]
    assert main(["--config", str(tmp_path / "config.yaml"), *flags, "--max-steps", "1"]) == 0
    logs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert logs[-1]["event"] == "done" and logs[-1]["steps"] == 1
    used = logs[0]["config"]
    assert used["tome"] == to_dict(point.tome) and used["model"] == to_dict(point.model)
    assert used["train"]["max_steps"] == 1
