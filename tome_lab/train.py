"""``python -m tome_lab.train``: train (or fine-tune) a timm ViT, optionally with ToMe on.

The command line over :class:`~tome_lab.config.TrainRunConfig` (sections ``model``, ``data``,
``tome``, ``eval``, ``train``); the work is in :mod:`tome_lab.training`. By default it trains
the embedded ``vit_digits`` on ``mnist5k`` with DeiT's small-data recipe (Touvron et al., ICML
2021): a small CNN teacher first, then the ViT learns the true labels through its class token
and the teacher's hard labels through its distillation token, on randomly shifted, rotated and
scaled digits. It trains on the ``train`` split, keeps the weights with the best ``val`` top-1
(``--train.select best``), and reports top-1 on ``test`` with and without merging and the
training img/s with and without merging (timed interleaved). One JSON line per epoch goes to
stdout.

With ``--tome.r R`` the ViT merges ``R`` tokens per block while it trains (ToMe paper,
Sec. 4.3); every ToMe knob of a sweep is reachable (``--tome.matching``, ``--tome.schedule``,
``--tome.options.gflops``, ...), and a sweep point's ``config.yaml`` loads with ``--config``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Any

from tome_lab import cli
from tome_lab.config import TrainConfig, TrainRunConfig
from tome_lab.training import augment, param_groups, teacher_cnn, train, train_speed
from tome_lab.training import loop as _loop

PROG = "python -m tome_lab.train"

ALIASES: dict[str, cli.Alias] = {
    **cli.MODEL_ALIASES, **cli.DATA_ALIASES, **cli.TOME_ALIASES,
    **cli.section_aliases("train", TrainConfig),
}

DESCRIPTION = __doc__.split("\n\n")[1] + """

Exit status: 0 trained; 2 bad input (flags, values, an unknown model or dataset, a missing
checkpoint or data path), before any step; 1 a crash."""


def build_parser() -> Any:
    """The jsonargparse parser over every TrainRunConfig field."""
    return cli.build_parser(TrainRunConfig, PROG, DESCRIPTION, ALIASES)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse, validate (exit status 2 on bad input), train."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = PROG + "".join(" " + shlex.quote(a) for a in args)

    def body() -> int:
        cfg, _ = cli.parse(build_parser(), TrainRunConfig, args, ALIASES)
        with cli.setting_up():
            prepared = _loop.prepare(cfg)
        with cli.running():
            _loop.run(prepared, command)
        return 0

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["TrainConfig", "TrainRunConfig", "augment", "main", "param_groups", "teacher_cnn",
           "train", "train_speed"]
