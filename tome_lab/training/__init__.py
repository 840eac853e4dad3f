"""Training (or fine-tuning) a timm ViT, optionally with Token Merging on while it trains.

One file per part: :mod:`~tome_lab.training.recipe` (the student, weight-decay groups,
learning rate, losses), :mod:`~tome_lab.training.teacher` (DeiT's CNN teacher),
:mod:`~tome_lab.training.augmentation` (random affine warps) and
:mod:`~tome_lab.training.loop` (set-up, the loop, selection on ``val``, the final numbers on
``test``, training img/s, the checkpoint). ``python -m tome_lab.train`` is the command line.
"""

from __future__ import annotations

from tome_lab.training.augmentation import augment
from tome_lab.training.loop import fit, merges, prepare, run, save, train, train_speed
from tome_lab.training.recipe import build_student, lr_at, no_decay, param_groups
from tome_lab.training.teacher import teacher_cnn

__all__ = ["augment", "build_student", "fit", "lr_at", "merges", "no_decay", "param_groups",
           "prepare", "run", "save", "teacher_cnn", "train", "train_speed"]
