"""How often ToMe merges a moving digit into one token across time steps (vit_video_digits).

    .venv/bin/python benchmarks/video_groups.py --r 20 --clips 50

For each held-out ``moving_digits`` clip, the patched zoo model traces which space-time tubes
each output token holds (``trace_source``); a tube is "digit" when its mean pixel value (0..1)
is above ``--ink``. Counts the output tokens that hold at least two digit tubes, from at least
two of the 4 time steps, with digit tubes at least half of their members: digit parts merged
over several frames.
"""

from __future__ import annotations

import argparse

import torch

import tome_lab
from tome_lab.config import DataConfig, ModelConfig
from tome_lab.data import build_dataset, model_data_config
from tome_lab.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--r", type=int, default=20)
    ap.add_argument("--clips", type=int, default=50)
    ap.add_argument("--ink", type=float, default=0.3)
    args = ap.parse_args()
    model = tome_lab.apply_tome(create_model(ModelConfig(name="vit_video_digits")), r=args.r,
                                trace_source=True)
    cfg = model_data_config(model)
    _, t, h, w = cfg["input_size"]
    grid = model.patch_embed.grid_size  # (T', H', W')
    kt, kh, kw = t // grid[0], h // grid[1], w // grid[2]
    data = build_dataset(DataConfig(name="moving_digits", limit=args.clips), model)
    hits, clips_with = 0, 0
    for i in range(len(data)):
        x, _ = data[i]
        with torch.no_grad():
            model(x[None])
        src = tome_lab.tome_state(model).source[0].bool()  # (tokens, tubes)
        frames = x[0] * cfg["std"][0] + cfg["mean"][0]  # (T, H, W) in 0..1
        ink = frames.reshape(grid[0], kt, grid[1], kh, grid[2], kw).mean((1, 3, 5)).flatten()
        digit = ink > args.ink  # (tubes,)
        step = torch.arange(src.shape[1]) // (grid[1] * grid[2])  # time step of each tube
        n = 0
        for mem in src:
            d = mem & digit
            if d.sum() >= 2 and d.sum() * 2 >= mem.sum() and step[mem].unique().numel() >= 2:
                n += 1
        hits += n
        clips_with += n > 0
    print(f"r={args.r}: {hits} tokens in {len(data)} clips ({hits / len(data):.1f} per clip) "
          f"hold digit tubes from >= 2 time steps; {clips_with} clips have at least one")


if __name__ == "__main__":
    main()
