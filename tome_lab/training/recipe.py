"""The training recipe: the student network, weight-decay groups, learning rate, losses.

DeiT's recipe (Touvron et al., ICML 2021) on small data: AdamW with linear warm-up and cosine
decay; no weight decay on norms, biases, the position embedding or the prefix tokens (class,
distillation, register); stochastic depth; label smoothing on the class head and hard-label
distillation through the distillation head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tome_lab.config import ModelConfig

# Parameters that hold positions or whole tokens rather than weights: never decayed.
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token"})


def build_student(cfg: ModelConfig, drop_path: float) -> nn.Module:
    """The network to train, with stochastic depth ``drop_path``, in train mode.

    Weights come from :func:`tome_lab.models.create_model` (a checkpoint, the zoo or timm's
    cache; random when ``pretrained`` is False and no checkpoint is given) and are copied into
    a model built with ``drop_path_rate``, so fine-tuning has drop-path as training from
    scratch does.

    Raises:
        ValueError: an unknown model, or weights that do not fit it.
        FileNotFoundError: a missing checkpoint.
    """
    import timm

    from tome_lab.models import create_model

    loaded = create_model(cfg)
    model = timm.create_model(cfg.name, pretrained=False, drop_path_rate=drop_path)
    model.load_state_dict(loaded.state_dict())
    return model.train()


def no_decay(name: str, param: Tensor, skip: frozenset[str] = NO_DECAY_NAMES) -> bool:
    """Whether parameter ``name`` is exempt from weight decay: a norm or bias (at most one
    dimension), the position embedding or a prefix token, or a name in ``skip``."""
    return param.ndim <= 1 or name.split(".")[-1] in skip or name in skip


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``[{decayed, weight_decay}, {exempt, 0.0}]``.

    Exempt: see :func:`no_decay`, plus whatever the model's own ``no_weight_decay()`` names
    (timm's convention).
    """
    skip = NO_DECAY_NAMES | frozenset(getattr(model, "no_weight_decay", lambda: ())())
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (exempt if no_decay(name, p, skip) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": exempt, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps to ``lr``, then cosine decay to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


def student_loss(teacher: nn.Module | None, label_smoothing: float
                 ) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The student's loss ``(model, x [B, C, H, W], y [B]) -> scalar``.

    A distilled model in training returns two heads: the class head learns ``y`` (label
    smoothed), the distillation head the teacher's hard labels (``y`` without a teacher).
    """

    def loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out = m(x)
        if isinstance(out, tuple):  # DeiT: (class logits, distillation logits), each (B, K)
            cls, dst = out
            with torch.no_grad():
                hard = teacher(x).argmax(-1) if teacher is not None else y
            return 0.5 * F.cross_entropy(cls.float(), y, label_smoothing=label_smoothing) \
                + 0.5 * F.cross_entropy(dst.float(), hard)
        return F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)

    return loss


def plain_loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of a single-head model (the teacher)."""
    return F.cross_entropy(m(x).float(), y)
