"""Training (or fine-tuning) a timm ViT, optionally with Token Merging switched on.

``python -m tome_lab.train`` with no arguments reproduces the embedded zoo model
``tome_lab/zoo/vit_digits.safetensors``: a DeiT-style ``vit_digits`` trained on ``mnist5k``'s
4,000 training digits. DeiT's recipe for small data (Touvron et al., ICML 2021): a small CNN
teacher is trained first (about a minute), then the ViT learns from the true labels through its
class token and from the teacher's hard labels through its distillation token, on randomly
shifted, rotated and scaled digits.

With ``--tome-r R`` the ViT merges ``R`` tokens per block while it trains (ToMe paper, Sec. 4.3:
merging during training speeds it up and shrinks the accuracy drop at that ``r``);
``--prop-attn`` / ``--no-prop-attn`` selects proportional attention. Every run reports the
training img/s with and without merging (timed interleaved in the same process) and the final
held-out top-1. One JSON line of metrics per epoch goes to stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tome_lab.config import DataConfig, ModelConfig
from tome_lab.data import build_loader, progress

_TEACHERS = ("cnn", "none")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults reproduce the embedded zoo model.

    Attributes:
        model: timm model name.
        checkpoint: weights to start from (fine-tuning); None: random init.
        data: dataset name (``tome_lab.registry.DATASETS``); trains on its ``train`` split and
            reports top-1 on its ``val`` split.
        data_path: root folder for ``imagefolder``.
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak AdamW learning rate, reached after ``warmup_epochs`` and decayed by cosine.
        min_lr: the learning rate at the end of the cosine.
        warmup_epochs: linear warm-up length.
        weight_decay: AdamW decoupled weight decay.
        label_smoothing: on the class-token loss (DeiT uses 0.1).
        drop_path: stochastic depth rate of the ViT.
        augment: random shifts, rotations and scaling of every training batch.
        teacher: ``cnn`` (train a small CNN first, hard-label distillation through the
            distillation token) or ``none``.
        teacher_epochs: epochs of the CNN teacher.
        tome_r: tokens merged per block while training (0: off).
        prop_attn: proportional attention while merging.
        seed: seeds weights, shuffling, augmentation and dropout.
        threads: torch CPU threads (None: torch's default).
        max_steps: stop after this many steps (tests and smoke runs); None: full epochs.
        limit: use at most this many training (and held-out) images (smoke runs); None: all.
        speed_steps: timed steps per setting for training img/s (0: skip).
        eval_every: held-out top-1 every this many epochs (and after the last); it is logged
            only, never used to pick a checkpoint.
        output: where to write the safetensors checkpoint (a JSON record goes beside it).
        progress: show progress bars.
    """

    model: str = "vit_digits"
    checkpoint: str | None = None
    data: str = "mnist5k"
    data_path: str | None = None
    epochs: int = 36
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.05
    augment: bool = True
    teacher: str = "cnn"
    teacher_epochs: int = 12
    tome_r: int = 0
    prop_attn: bool = True
    seed: int = 0
    threads: int | None = None
    max_steps: int | None = None
    limit: int | None = None
    speed_steps: int = 5
    eval_every: int = 4
    output: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.teacher not in _TEACHERS:
            raise ValueError(f"unknown teacher {self.teacher!r}; valid: {', '.join(_TEACHERS)}")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("teacher_epochs", "tome_r", "speed_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"lr must be > 0 and min_lr >= 0, got {self.lr!r}, {self.min_lr!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be None or >= 1, got {self.max_steps!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be None or >= 1, got {self.threads!r}")


def teacher_cnn(in_chans: int, classes: int, size: int = 32) -> nn.Module:
    """A small CNN (three 3x3 conv stages, about 0.12M parameters) used as DeiT's teacher.

    The head flattens the last 4x4 map instead of averaging it: where a stroke sits tells
    digits apart (a global average scored 96.3% held-out, this head 97.6%, 12 epochs).
    """

    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(
        *stage(in_chans, 32), *stage(32, 64), *stage(64, 128),  # (B, 128, H/8, W/8)
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * (size // 8) ** 2, classes),
    )


def augment(x: Tensor, generator: torch.Generator, shift: float = 3.0, degrees: float = 12.0,
            scale: tuple[float, float] = (0.9, 1.1)) -> Tensor:
    """Random affine per image: shift by up to ``shift`` pixels, rotate, scale.

    Args:
        x: [B, C, H, W] normalised images.
        generator: seeds the draws (determinism).
        shift: largest translation in pixels.
        degrees: largest rotation.
        scale: zoom range.

    Returns:
        [B, C, H, W]; borders are filled by replication, i.e. with the background of digits.
    """
    B, _, H, W = x.shape

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=generator)

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(*scale)
    tx, ty = uniform(-shift, shift) * 2 / W, uniform(-shift, shift) * 2 / H
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border",
                         align_corners=False)


def _lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def accuracy(model: nn.Module, loader: Any, enabled: bool = True) -> float:
    """Top-1 (percent) of ``model`` over ``loader``, in eval mode."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in progress(loader, "eval", enabled=enabled):
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    model.train(was)
    return 100.0 * correct / max(1, total)


def _fit(model: nn.Module, loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], loader: Any,
         cfg: TrainConfig, epochs: int, lr: float, weight_decay: float, name: str,
         gen: torch.Generator, on_epoch: Callable[[int, dict[str, Any]], None]) -> int:
    """AdamW with linear warm-up and cosine decay; returns the number of steps taken."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # norms, biases, tokens
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    per_epoch = len(loader)
    total = epochs * per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = min(int(cfg.warmup_epochs * per_epoch), total // 2)
    step = 0
    model.train()
    for epoch in range(epochs):
        t0, seen, losses = time.perf_counter(), 0, []
        for x, y in progress(loader, f"{name} epoch {epoch + 1}/{epochs}", enabled=cfg.progress):
            if step >= total:
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, lr, cfg.min_lr)
            if cfg.augment:
                x = augment(x, gen)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            seen += len(y)
            step += 1
        dt = time.perf_counter() - t0
        on_epoch(epoch, {"loss": statistics.fmean(losses) if losses else float("nan"),
                         "img_per_s": seen / dt if dt > 0 else 0.0, "steps": step,
                         "lr": opt.param_groups[0]["lr"]})
        if step >= total:
            break
    return step


def train_speed(model: nn.Module, x: Tensor, y: Tensor, r: int, prop_attn: bool,
                steps: int) -> dict[str, float]:
    """Training img/s (forward + backward) without and with merging, interleaved.

    Timed on a copy, so the model being trained is untouched. Median over ``steps`` timed
    steps per setting, after one warm-up step each.
    """
    import tome_lab
    from tome_lab.config import ToMeConfig

    state = tome_lab.tome_state(model)
    tome_cfg = state.config if state is not None else ToMeConfig(r=r, prop_attn=prop_attn)
    # A patched model holds bound methods and its config's read-only options, which deepcopy
    # cannot copy: copy the plain model and patch the copy.
    if state is not None:
        tome_lab.remove_tome(model)
    try:
        base = copy.deepcopy(model).train()
        merged = tome_lab.apply_config(copy.deepcopy(model).train(), tome_cfg)
    finally:
        if state is not None:
            tome_lab.apply_config(model, tome_cfg)

    def one(m: nn.Module) -> float:
        t = time.perf_counter()
        out = m(x)
        logits = out[0] if isinstance(out, tuple) else out
        F.cross_entropy(logits, y).backward()
        m.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    one(base), one(merged)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"base": [], "tome": []}
    for _ in range(steps):
        times["base"].append(one(base))
        times["tome"].append(one(merged))
    b, t = statistics.median(times["base"]), statistics.median(times["tome"])
    return {"train_img_per_s_base": len(y) / b, "train_img_per_s_tome": len(y) / t,
            "train_speedup": b / t}


def _log(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _versions() -> dict[str, str]:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "platform": platform.platform()}


def train(cfg: TrainConfig, command: str | None = None) -> dict[str, Any]:
    """Trains a model as ``cfg`` says; returns the final metrics (and writes ``cfg.output``).

    Returns:
        A dict with ``top1`` (held-out, with merging at ``tome_r`` when it is on),
        ``top1_r0`` (same weights without merging), ``teacher_top1``, ``train_img_per_s_base``,
        ``train_img_per_s_tome``, ``train_speedup``, ``first_loss``, ``last_loss``, ``steps``,
        ``wall_s``, and the config.
    """
    import tome_lab
    from tome_lab.models import create_model

    wall0 = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)  # cheap on the CPU; a GPU may need CUBLAS env
    gen = torch.Generator().manual_seed(cfg.seed)

    mcfg = ModelConfig(name=cfg.model, checkpoint=cfg.checkpoint, pretrained=False)
    from tome_lab.models import _register

    _register()
    import timm

    if cfg.checkpoint is None:
        model = timm.create_model(cfg.model, pretrained=False, drop_path_rate=cfg.drop_path)
    else:
        model = create_model(mcfg)
    dist = hasattr(model, "set_distilled_training")
    train_cfg = DataConfig(name=cfg.data, path=cfg.data_path, split="train",
                           batch_size=cfg.batch_size, limit=cfg.limit)
    val_cfg = DataConfig(name=cfg.data, path=cfg.data_path, split="val", batch_size=250,
                         limit=cfg.limit)
    loader = build_loader(train_cfg, model, shuffle=True, seed=cfg.seed, drop_last=True)
    val_loader = build_loader(val_cfg, model)
    _log({"event": "start", "config": asdict(cfg), "command": command,
          "train_images": len(loader.dataset), "val_images": len(val_loader.dataset),
          "params": sum(p.numel() for p in model.parameters()), **_versions()})

    teacher, teacher_top1 = None, None
    if cfg.teacher == "cnn" and cfg.teacher_epochs > 0:
        x_first = next(iter(loader))[0]  # (B, C, H, W): the teacher sees what the ViT sees
        teacher = teacher_cnn(x_first.shape[1], model.num_classes, size=x_first.shape[-1])

        def teacher_loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(m(x), y)

        t0 = time.perf_counter()
        _fit(teacher, teacher_loss, loader, cfg, cfg.teacher_epochs, lr=3e-3,
             weight_decay=1e-4, name="teacher", gen=gen,
             on_epoch=lambda e, m: _log({"event": "teacher_epoch", "epoch": e + 1, **m}))
        teacher.eval()
        teacher_top1 = accuracy(teacher, val_loader, cfg.progress)
        _log({"event": "teacher_done", "teacher_top1": teacher_top1,
              "teacher_s": time.perf_counter() - t0})
        for p in teacher.parameters():
            p.requires_grad_(False)

    if cfg.tome_r > 0:
        tome_lab.apply_tome(model, r=cfg.tome_r, prop_attn=cfg.prop_attn)
    if dist and teacher is not None:
        model.set_distilled_training(True)

    def student_loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out = m(x)
        if isinstance(out, tuple):  # DeiT: class head learns y, distillation head the teacher
            cls, dst = out
            with torch.no_grad():
                hard = teacher(x).argmax(-1) if teacher is not None else y
            return 0.5 * F.cross_entropy(cls, y, label_smoothing=cfg.label_smoothing) \
                + 0.5 * F.cross_entropy(dst, hard)
        return F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)

    losses: list[float] = []

    def on_epoch(e: int, m: dict[str, Any]) -> None:
        losses.append(m["loss"])
        last = e + 1 == cfg.epochs or (cfg.max_steps is not None and m["steps"] >= cfg.max_steps)
        # Evaluating costs about a tenth of an epoch here, so not after every one.
        top1 = accuracy(model, val_loader, cfg.progress) if (e + 1) % cfg.eval_every == 0 \
            or last else None
        _log({"event": "epoch", "epoch": e + 1, "top1": top1,
              "elapsed_s": time.perf_counter() - wall0, **m})

    # The first batch's loss, before any step, is the baseline a short run must beat. The
    # probes run in train mode, so they also feed BatchNorm's running statistics one more
    # batch each; the zoo checkpoint was trained (and is reproduced) with them.
    x0, y0 = next(iter(loader))
    with torch.no_grad():
        model.train()
        first_loss = float(student_loss(model, x0, y0))
    steps = _fit(model, student_loss, loader, cfg, cfg.epochs, cfg.lr, cfg.weight_decay,
                 "train", gen, on_epoch)
    with torch.no_grad():
        last_loss = float(student_loss(model, x0, y0))
    if dist:
        model.set_distilled_training(False)

    speed: dict[str, float] = {}
    if cfg.speed_steps > 0:
        speed = train_speed(model, x0, y0, max(cfg.tome_r, _default_speed_r(model)),
                            cfg.prop_attn, cfg.speed_steps)
        speed["speed_r"] = max(cfg.tome_r, _default_speed_r(model))
    top1 = accuracy(model, val_loader, cfg.progress)
    if cfg.tome_r > 0:
        tome_lab.remove_tome(model)
    top1_r0 = accuracy(model, val_loader, cfg.progress) if cfg.tome_r > 0 else top1
    wall = time.perf_counter() - wall0
    result: dict[str, Any] = {
        "top1": top1, "top1_r0": top1_r0, "teacher_top1": teacher_top1, "steps": steps,
        "first_loss": first_loss, "last_loss": last_loss, "wall_s": wall, **speed}
    if cfg.output:
        _save(model, cfg, result, command)
    _log({"event": "done", **result})
    return {**result, "config": asdict(cfg)}


def _default_speed_r(model: nn.Module) -> int:
    """An r that merges about half the tokens by the last block, for the speed report."""
    depth = len(getattr(model, "blocks", [])) or 1
    tokens = getattr(getattr(model, "patch_embed", None), "num_patches", 2 * depth)
    return max(1, tokens // (2 * depth))


def _save(model: nn.Module, cfg: TrainConfig, result: dict[str, Any],
          command: str | None) -> None:
    """Writes the checkpoint (safetensors) and a JSON record beside it, atomically."""
    from safetensors.torch import save_file

    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "model": cfg.model})
    tmp.replace(out)
    record = {"command": command, "seed": cfg.seed, "model": cfg.model, "dataset": cfg.data,
              "held_out_top1": result["top1_r0"], **result, "config": asdict(cfg),
              "versions": _versions()}
    tmp_json = out.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(record, indent=2) + "\n")
    tmp_json.replace(out.with_suffix(".json"))


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m tome_lab.train",
        description="Train a ViT (the embedded vit_digits on mnist5k by default), optionally "
                    "with ToMe on. With no arguments it reproduces the zoo checkpoint.")
    p.add_argument("--model", default=d.model, help="timm model name")
    p.add_argument("--checkpoint", default=None, help="weights to fine-tune from")
    p.add_argument("--data", default=d.data, help="dataset (mnist5k, digits, imagefolder, ...)")
    p.add_argument("--data-path", default=None, help="root folder for imagefolder")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--drop-path", type=float, default=d.drop_path)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--teacher", default=d.teacher, choices=_TEACHERS)
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--tome-r", type=int, default=d.tome_r,
                   help="tokens merged per block while training (0: off)")
    p.add_argument("--prop-attn", action=argparse.BooleanOptionalAction, default=d.prop_attn,
                   help="proportional attention while merging")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop early (smoke runs)")
    p.add_argument("--limit", type=int, default=None, help="images per split (smoke runs)")
    p.add_argument("--speed-steps", type=int, default=d.speed_steps)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--output", default=None, help="checkpoint path (.safetensors)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line: parse, validate (exit status 2 on bad input), train."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        cfg = TrainConfig(**vars(args))
    except ValueError as e:
        p.error(str(e))
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python -m tome_lab.train" + "".join(" " + shlex.quote(a) for a in argv)
    return train(cfg, command=command)


if __name__ == "__main__":
    main()
