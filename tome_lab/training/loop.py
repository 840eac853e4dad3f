"""The training loop: set up (validating everything), fit, select on ``val``, report on
``test``, time training with and without merging, save.

``prepare(cfg)`` builds the student, the three loaders and checks the ToMe setting against the
model, so bad input fails before any step; ``run`` trains. Selection (``train.select=best``)
looks only at the ``val`` split carved from the training data; the final numbers come from
``data.split`` (``test``) through the evaluator (:mod:`tome_lab.evaluate`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tome_lab.config import ExperimentConfig, ToMeConfig, TrainConfig, TrainRunConfig, to_dict
from tome_lab.data import build_loader, progress
from tome_lab.runtime import autocast, compile_model, interleaved_times, throughput
from tome_lab.training.augmentation import augment
from tome_lab.training.recipe import (
    build_student,
    lr_at,
    param_groups,
    plain_loss,
    student_loss,
)
from tome_lab.training.teacher import teacher_cnn

Loss = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _log(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def merges(tome: ToMeConfig) -> bool:
    """Whether ``tome`` merges anything (r=0 with a constant schedule, or ``none``, does not)."""
    if tome.matching == "none":
        return False
    return not (tome.schedule == "constant" and tome.r == 0)


def _to(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 \
        else x


@dataclass
class Fit:
    """What :func:`fit` did: steps taken, and the ``val`` top-1 of the weights it kept."""

    steps: int
    val_top1: float | None
    epoch: int | None


def fit(model: nn.Module, loss_fn: Loss, loader: Any, t: TrainConfig, *, epochs: int,
        lr: float, weight_decay: float, name: str, gen: torch.Generator,
        device: torch.device, validate: Callable[[], float] | None,
        on_epoch: Callable[[dict[str, Any]], None]) -> Fit:
    """AdamW with warm-up and cosine decay, autocast and a gradient scaler for fp16.

    Args:
        model: trained in place (``t.compile`` compiles a wrapper for the steps).
        loss_fn: ``(model, x, y) -> scalar``.
        loader: the ``train`` split, on the CPU.
        t: the recipe (max steps, warm-up, dtype, augmentation, selection).
        epochs: passes over ``loader``.
        lr: peak learning rate.
        weight_decay: AdamW decay of the decayed group (see :func:`param_groups`).
        name: a label for logs and progress bars.
        gen: seeds the augmentation.
        device: where the steps run.
        validate: top-1 on ``val``, called every ``t.eval_every`` epochs and after the last;
            with ``t.select == "best"`` the best weights are kept.
        on_epoch: receives one metrics record per epoch.
    """
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=t.dtype == "fp16")
    step_model = compile_model(model, t.compile_backend) if t.compile else model
    per_epoch = len(loader)
    total = epochs * per_epoch if t.max_steps is None else min(epochs * per_epoch, t.max_steps)
    warmup = min(int(t.warmup_epochs * per_epoch), total // 2)
    step = 0
    best: tuple[float, int, dict[str, Tensor]] | None = None
    last_val: float | None = None
    model.train()
    for epoch in range(epochs):
        t0, seen, losses = time.perf_counter(), 0, []
        for x, y in progress(loader, f"{name} epoch {epoch + 1}/{epochs}", enabled=t.progress):
            if step >= total:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, lr, t.min_lr)
            x, y = _to(x, device, t.channels_last), y.to(device, non_blocking=True)
            if t.augment:
                x = augment(x, gen)
            with autocast(device, t.dtype):
                loss = loss_fn(step_model, x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            seen += len(y)
            step += 1
        dt = time.perf_counter() - t0
        done = step >= total or epoch + 1 == epochs
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": statistics.fmean(losses) if losses else float("nan"),
            "img_per_s": seen / dt if dt > 0 else 0.0, "steps": step,
            "lr": opt.param_groups[0]["lr"], "val_top1": None}
        if validate is not None and ((epoch + 1) % t.eval_every == 0 or done):
            last_val = record["val_top1"] = validate()
            if t.select == "best" and (best is None or last_val > best[0]):
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = (last_val, epoch + 1, state)
        on_epoch(record)
        if done:
            break
    model.train(False)
    if best is not None:
        model.load_state_dict(best[2])
        return Fit(step, best[0], best[1])
    return Fit(step, last_val, epoch + 1 if validate is not None else None)


def train_speed(model: nn.Module, x: Tensor, y: Tensor, tome: ToMeConfig, steps: int,
                device: torch.device | str = "cpu", dtype: str = "fp32",
                warmup: int = 1) -> dict[str, float]:
    """Training img/s (forward + backward) without and with merging, interleaved.

    Timed on copies, so ``model`` (patched or not) is left as it was.

    Args:
        model: the network (its unpatched copy is the base).
        x: [B, C, H, W] one batch on ``device``.
        y: [B] its labels.
        tome: the merging setting of the merged copy.
        steps: timed steps per setting.
        device: where the copies run.
        dtype: ``fp32`` or an autocast dtype name.
        warmup: untimed steps per setting first.
    """
    import tome_lab

    base = copy.deepcopy(model)
    if tome_lab.tome_state(base) is not None:
        tome_lab.remove_tome(base)
    merged = tome_lab.apply_config(copy.deepcopy(base), tome)

    def step(m: nn.Module) -> Callable[[], None]:
        m.train().to(device)

        def call() -> None:
            with autocast(device, dtype):
                out = m(x)
            logits = out[0] if isinstance(out, tuple) else out
            torch.nn.functional.cross_entropy(logits.float(), y).backward()
            m.zero_grad(set_to_none=True)

        return call

    times = interleaved_times({"base": step(base), "tome": step(merged)}, steps, warmup, device)
    out = throughput(times, len(y), base="base")
    return {"train_img_per_s_base": out["base"]["img_per_s"],
            "train_img_per_s_tome": out["tome"]["img_per_s"],
            "train_speedup": out["tome"]["speedup"]}


def _default_speed_r(model: nn.Module) -> int:
    """An r that merges about half the tokens by the last block, for the speed report."""
    depth = len(getattr(model, "blocks", [])) or 1
    tokens = getattr(getattr(model, "patch_embed", None), "num_patches", 2 * depth)
    return max(1, tokens // (2 * depth))


@dataclass
class Prepared:
    """A training run, set up and validated."""

    cfg: TrainRunConfig
    model: nn.Module
    loader: Any
    val_loader: Any
    test_images: int
    device: torch.device


def prepare(cfg: TrainRunConfig) -> Prepared:
    """Builds the student and the ``train`` / ``val`` loaders, checks the test split and the
    ToMe setting against the model.

    Raises:
        ValueError: an unknown model or dataset, data that does not fit the model, a ToMe
            setting the model cannot take (e.g. a per-layer r of the wrong length).
        FileNotFoundError: a missing checkpoint or data path.
    """
    import tome_lab
    from tome_lab.data import build_dataset

    t = cfg.train
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(t.device)
    model = build_student(cfg.model, t.drop_path)
    loader = build_loader(dataclasses.replace(cfg.data, split="train"), model, shuffle=True,
                          seed=cfg.seed, drop_last=True, device=device, batch_size=t.batch_size)
    if len(loader) == 0:
        raise ValueError(f"the train split ({len(loader.dataset)} images) is smaller than one "
                         f"batch of train.batch_size={t.batch_size}")
    val_loader = build_loader(dataclasses.replace(cfg.data, split="val"), model, device=device)
    test_images = len(build_dataset(cfg.data, model))
    if merges(cfg.tome):
        tome_lab.apply_config(model, cfg.tome)
    else:
        tome_lab.apply_config(copy.deepcopy(model), cfg.tome)  # validates the setting
    return Prepared(cfg, model, loader, val_loader, test_images, device)


def run(p: Prepared, command: str | None = None) -> dict[str, Any]:
    """Trains a :func:`prepare`-d run; returns the final metrics (and writes the checkpoint).

    Returns:
        ``top1`` / ``top5`` (on ``data.split``, with merging as ``tome`` says), ``top1_r0``
        (same weights, unmerged), ``val_top1`` and ``epoch`` (the kept weights), the teacher's
        ``teacher_val_top1`` and ``teacher_top1`` (on ``data.split``), the training img/s
        with and without merging (``train_img_per_s_base``, ``train_img_per_s_tome``,
        ``train_speedup``, ``speed_r``), ``first_loss``, ``last_loss``, ``steps``, ``wall_s``,
        ``splits`` (images per split), ``split`` and the configuration.
    """
    import tome_lab
    from tome_lab import results
    from tome_lab.evaluate import measure, score
    from tome_lab.evaluate import prepare as prepare_eval

    cfg, t, model, device = p.cfg, p.cfg.train, p.model, p.device
    wall0 = time.perf_counter()
    deterministic = torch.are_deterministic_algorithms_enabled()
    # Deterministic kernels are cheap on the CPU; a GPU may lack some (warn there, not fail).
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        gen = torch.Generator().manual_seed(cfg.seed)
        splits = {"train": len(p.loader.dataset), "val": len(p.val_loader.dataset),
                  cfg.data.split: p.test_images}
        _log({"event": "start", "config": to_dict(cfg), "command": command, "splits": splits,
              "params": sum(q.numel() for q in model.parameters()),
              "env": results.environment(t.device, t.dtype)})
        x0, y0 = next(iter(p.loader))
        x0, y0 = _to(x0, device, t.channels_last), y0.to(device)

        teacher, teacher_val = None, None
        if t.teacher == "cnn" and t.teacher_epochs > 0:
            teacher = teacher_cnn(x0.shape[1], model.num_classes, size=x0.shape[-1]).to(device)
            if t.channels_last:
                teacher = teacher.to(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            tfit = fit(teacher, plain_loss, p.loader, t, epochs=t.teacher_epochs,
                       lr=t.teacher_lr, weight_decay=1e-4, name="teacher", gen=gen,
                       device=device,
                       validate=lambda: score(teacher, p.val_loader, device, t.dtype,
                                              "teacher val", t.progress)["top1"],
                       on_epoch=lambda m: _log({"event": "teacher_epoch", **m}))
            teacher.eval()
            teacher_val = tfit.val_top1
            _log({"event": "teacher_done", "teacher_val_top1": teacher_val,
                  "teacher_epoch": tfit.epoch, "teacher_s": time.perf_counter() - t0})
            for q in teacher.parameters():
                q.requires_grad_(False)

        model.to(device)
        if t.channels_last:
            model.to(memory_format=torch.channels_last)
        distilled = hasattr(model, "set_distilled_training")
        if distilled and teacher is not None:
            model.set_distilled_training(True)
        loss_fn = student_loss(teacher, t.label_smoothing)
        with torch.no_grad():  # the loss before any step: the baseline a short run must beat
            model.train()
            with autocast(device, t.dtype):
                first_loss = float(loss_fn(model, x0, y0))

        def validate() -> float:
            if distilled:
                model.set_distilled_training(False)
            top1 = score(model, p.val_loader, device, t.dtype, "val", t.progress)["top1"]
            if distilled and teacher is not None:
                model.set_distilled_training(True)
            return top1

        sfit = fit(model, loss_fn, p.loader, t, epochs=t.epochs, lr=t.lr,
                   weight_decay=t.weight_decay, name="train", gen=gen, device=device,
                   validate=validate,
                   on_epoch=lambda m: _log({"event": "epoch", **m,
                                            "elapsed_s": time.perf_counter() - wall0}))
        with torch.no_grad():
            model.train()
            with autocast(device, t.dtype):
                last_loss = float(loss_fn(model, x0, y0))
        if distilled:
            model.set_distilled_training(False)
        model.eval()

        speed: dict[str, Any] = {}
        if t.speed_steps > 0:
            tome = cfg.tome if merges(cfg.tome) else dataclasses.replace(
                cfg.tome, r=_default_speed_r(model), schedule="constant", matching="bipartite")
            speed = train_speed(model, x0, y0, tome, t.speed_steps, device, t.dtype)
            speed["speed_r"] = list(tome.r) if isinstance(tome.r, tuple) else tome.r

        final = model.to(memory_format=torch.contiguous_format)
        if tome_lab.tome_state(final) is not None:
            tome_lab.remove_tome(final)
        exp = ExperimentConfig(model=cfg.model, data=cfg.data, tome=cfg.tome, eval=cfg.eval,
                               seed=cfg.seed)
        test = measure(prepare_eval(exp, model=final))
        r0 = test if not merges(cfg.tome) else measure(prepare_eval(dataclasses.replace(
            exp, tome=ToMeConfig(r=0), eval=dataclasses.replace(cfg.eval, speed=False)),
            model=final))
        teacher_top1 = None
        if teacher is not None:
            test_loader = build_loader(cfg.data, final, device=device)
            teacher_top1 = score(teacher, test_loader, device, t.dtype, "teacher",
                                 t.progress)["top1"]
        result: dict[str, Any] = {
            "top1": test["top1"], "top5": test["top5"], "top1_r0": r0["top1"],
            "split": cfg.data.split, "val_top1": sfit.val_top1, "epoch": sfit.epoch,
            "teacher_val_top1": teacher_val, "teacher_top1": teacher_top1,
            "gflops": test["gflops"], "gflops_base": test["gflops_base"],
            "steps": sfit.steps, "first_loss": first_loss, "last_loss": last_loss,
            "wall_s": time.perf_counter() - wall0, "splits": splits, **speed}
        if t.output:
            save(final, cfg, result, command)
        _log({"event": "done", **result})
        return {**result, "config": to_dict(cfg)}
    finally:
        torch.use_deterministic_algorithms(deterministic)


def train(cfg: TrainRunConfig, command: str | None = None) -> dict[str, Any]:
    """Trains as ``cfg`` says (see :func:`run` for what it returns)."""
    return run(prepare(cfg), command)


def save(model: nn.Module, cfg: TrainRunConfig, result: dict[str, Any],
         command: str | None) -> None:
    """Writes the checkpoint (safetensors) and a JSON record beside it, each atomically.

    The record says which split each number comes from (``numbers``) and how many images
    each split holds (``splits``), with the command, configuration and environment.
    """
    from safetensors.torch import save as to_bytes

    from tome_lab import results

    out = Path(cfg.train.output)  # type: ignore[arg-type]
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    results.write_bytes_atomic(out, to_bytes(state, metadata={"format": "pt",
                                                              "model": cfg.model.name}))
    split = cfg.data.split
    record = {
        "command": command, "seed": cfg.seed, "model": cfg.model.name,
        "dataset": cfg.data.name, "splits": result["splits"],
        "numbers": {"top1": split, "top1_r0": split, "teacher_top1": split,
                    "val_top1": "val (selection)", "teacher_val_top1": "val (selection)"},
        **{k: v for k, v in result.items() if k != "splits"},
        "config": to_dict(cfg), "env": results.environment(cfg.train.device, cfg.train.dtype),
    }
    results.write_json_atomic(out.with_suffix(".json"), record)
