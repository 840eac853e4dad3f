"""Merge pictures: every input patch coloured by the token it ended up in (ToMe, Fig. 4 style).

With ``trace_source=True`` a patched model records, after each forward, which input patches
each remaining token holds (``tome_lab.tome_state(model).source``, [B, N, N0]). Here each
patch is painted with the mean colour of all the pixels of its group, and a line is drawn
between patches of different groups; layer by layer if asked (forward hooks read the source
after every block).

    model = timm.create_model("deit_small_patch16_224")
    tome_lab.apply_tome(model, r=16)
    pic = vis.merge_picture(model, skimage.data.astronaut())   # (224, 224, 3) in [0, 1]

Without pretrained weights a model's similarities follow pixel content only, so the groups of
a random-initialised model show colour and texture, not objects. Works on still images for
any patched timm ViT whose patch embedding exposes ``grid_size`` (timm's ``PatchEmbed``, the
embedded ``ConvStem``), and on video clips (:func:`merge_clip`, frames side by side) for models
whose patch embedding has a (T', H', W') ``grid_size`` (``vit_video_digits``' tube embedding).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from tome_lab.data import model_data_config
from tome_lab.engine import apply_config, tome_state

DROPPED = -1  # group index of a patch whose token was dropped (pruning), painted black


def _grid(model: nn.Module) -> tuple[int, ...]:
    """The patch grid: (H', W') for images, (T', H', W') for clips."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise TypeError(f"{type(model).__name__} has no patch_embed.grid_size: cannot map "
                        f"tokens back to image patches")
    return tuple(int(g) for g in grid)


def to_image(image: Any) -> np.ndarray:
    """Any picture (uint8 or float, [H, W], [H, W, C] or a [C, H, W] tensor) as float [H, W, C].

    Values end in [0, 1]; uint8 is divided by 255, RGBA loses its alpha.
    """
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = image.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an [H, W], [H, W, C] or [C, H, W] image with 1, 3 or 4 "
                         f"channels; got shape {arr.shape}")
    arr = arr[..., :3].astype(np.float64)
    if np.asarray(image).dtype == np.uint8:
        arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def prepare(model: nn.Module, image: Any) -> tuple[Tensor, np.ndarray]:
    """The model's input for ``image`` and the picture it sees.

    Args:
        model: a timm ViT (its data config gives input size, mean and std).
        image: see :func:`to_image`.

    Returns:
        [1, C, H, W] normalised input at the model's size, and the [H, W, 3] picture in
        [0, 1] at that size (grey pictures repeated over three channels).
    """
    dcfg = model_data_config(model)
    c, h, w = dcfg["input_size"]
    img = torch.from_numpy(to_image(image)).float().permute(2, 0, 1)[None]  # (1, C0, H0, W0)
    if img.shape[-2:] != (h, w):
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False,
                            antialias=True).clamp(0, 1)
    if c == 1:
        img = img.mean(1, keepdim=True)
    elif img.shape[1] == 1:
        img = img.expand(-1, c, -1, -1)
    mean = torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(dcfg["std"], dtype=torch.float32).view(1, -1, 1, 1)
    x = (img - mean) / std
    shown = img[0].permute(1, 2, 0).numpy().astype(np.float64)
    if shown.shape[-1] == 1:
        shown = np.repeat(shown, 3, axis=-1)
    return x, shown


def groups_from_source(source: Tensor | None, num_prefix: int, num_patches: int) -> Tensor:
    """[B, P] the output token that holds each patch (``DROPPED`` where none does).

    Args:
        source: [B, N, N0] 0/1 membership of tokens over the N0 input tokens (prefix
            first), or None when nothing was merged (every patch its own group).
        num_prefix: protected prefix tokens at the start of the input sequence.
        num_patches: P = N0 - num_prefix.
    """
    if source is None:
        return torch.arange(num_patches)[None]
    member = source[:, :, num_prefix:]  # (B, N, P)
    if member.shape[-1] != num_patches:
        raise ValueError(f"source covers {member.shape[-1]} patches, the grid has "
                         f"{num_patches}")
    groups = member.argmax(1)  # (B, P)
    return torch.where(member.amax(1) > 0, groups, torch.full_like(groups, DROPPED))


def paint(picture: np.ndarray, groups: Sequence[int] | np.ndarray, grid: tuple[int, int],
          border: bool = True, scale: int = 1, border_colour: Sequence[float] = (1, 1, 1)
          ) -> np.ndarray:
    """Paints each patch with the mean colour of its group, with lines between groups.

    Args:
        picture: [H, W, 3] in [0, 1]; H and W multiples of the grid.
        groups: [gh * gw] group of each patch in raster order (``DROPPED`` for none).
        grid: (gh, gw) patches down and across.
        border: draw a one-pixel line (after scaling) where neighbouring patches differ.
        scale: nearest-neighbour upscaling before drawing lines (thin lines on small
            pictures such as 32x32 digits).
        border_colour: RGB of the lines.

    Returns:
        [H * scale, W * scale, 3] in [0, 1].
    """
    gh, gw = grid
    h, w = picture.shape[:2]
    if h % gh or w % gw:
        raise ValueError(f"picture {h}x{w} is not a multiple of the {gh}x{gw} patch grid")
    g = np.asarray(groups, dtype=np.int64).reshape(gh, gw)
    ph, pw = h // gh, w // gw
    patch_mean = picture.reshape(gh, ph, gw, pw, 3).mean(axis=(1, 3))  # (gh, gw, 3)
    return _draw(_group_colours(patch_mean, g), g, (ph, pw), border, scale, border_colour)


def _group_colours(patch_mean: np.ndarray, g: np.ndarray) -> np.ndarray:
    """[..., 3] each patch's colour -> the mean over its group (black where dropped).

    Every patch has as many pixels, so the mean of patch means is the group's pixel mean.
    """
    out = np.zeros(patch_mean.shape)
    for gid in np.unique(g):
        if gid != DROPPED:
            sel = g == gid
            out[sel] = patch_mean[sel].mean(0)
    return out


def _draw(colours: np.ndarray, g: np.ndarray, patch: tuple[int, int], border: bool,
          scale: int, border_colour: Sequence[float]) -> np.ndarray:
    """[gh, gw, 3] patch colours -> [gh * ph * s, gw * pw * s, 3] pixels, lines between groups."""
    ph, pw = patch
    pix = np.repeat(np.repeat(colours, ph * scale, 0), pw * scale, 1)  # (H*s, W*s, 3)
    if border:
        gpix = np.repeat(np.repeat(g, ph * scale, 0), pw * scale, 1)  # (H*s, W*s)
        edge = np.zeros(gpix.shape, dtype=bool)
        edge[:-1] |= gpix[:-1] != gpix[1:]
        edge[:, :-1] |= gpix[:, :-1] != gpix[:, 1:]
        pix[edge] = np.asarray(border_colour, dtype=float)
    return pix


def paint_clip(clip: np.ndarray, groups: Sequence[int] | np.ndarray, grid: tuple[int, int, int],
               border: bool = True, scale: int = 1, border_colour: Sequence[float] = (1, 1, 1),
               gap: int = 2) -> np.ndarray:
    """Frames side by side, each patch painted with the mean colour of its group over the clip.

    A token that holds patches of several frames (a tube merged over time) gives them one
    colour in every frame it covers.

    Args:
        clip: [T, H, W, 3] in [0, 1]; T, H, W multiples of the grid.
        groups: [gt * gh * gw] group of each space-time patch, time-major (as the tokens).
        grid: (gt, gh, gw) tubes in time, down and across.
        border: lines between groups inside each frame.
        scale: nearest-neighbour upscaling.
        border_colour: RGB of the lines.
        gap: blank pixels (after scaling) between frames.

    Returns:
        [H * scale, T * W * scale + (T - 1) * gap, 3] in [0, 1].
    """
    gt, gh, gw = grid
    t, h, w = clip.shape[:3]
    if t % gt or h % gh or w % gw:
        raise ValueError(f"clip {t}x{h}x{w} is not a multiple of the {gt}x{gh}x{gw} tube grid")
    g = np.asarray(groups, dtype=np.int64).reshape(gt, gh, gw)
    pt, ph, pw = t // gt, h // gh, w // gw
    tube_mean = clip.reshape(gt, pt, gh, ph, gw, pw, 3).mean(axis=(1, 3, 5))  # (gt, gh, gw, 3)
    colours = _group_colours(tube_mean, g)
    frames = [_draw(colours[f // pt], g[f // pt], (ph, pw), border, scale, border_colour)
              for f in range(t)]
    blank = np.ones((h * scale, gap, 3))
    out = [frames[0]]
    for frame in frames[1:]:
        out += [blank, frame]
    return np.concatenate(out, axis=1)


@torch.no_grad()
def trace_groups(model: nn.Module, x: Tensor, layers: bool = False) -> Tensor:
    """Runs ``model`` on ``x`` with source tracing; returns each patch's group.

    The model must be ToMe-patched; tracing is switched on for this call if it was off.

    Args:
        model: a patched timm ViT.
        x: [B, C, H, W] model input ([B, C, T, H, W] for a video model).
        layers: also return the groups after every block.

    Returns:
        [B, P] groups after the last block, or [B, depth, P] after each block.

    Raises:
        ValueError: the model is not patched.
    """
    state = tome_state(model)
    if state is None:
        raise ValueError("merge pictures need a ToMe-patched model: call "
                         "tome_lab.apply_tome(model, r=..., trace_source=True) first")
    n_patches = math.prod(_grid(model))
    n_prefix = state.spec.num_prefix
    cfg = state.config
    if not cfg.trace_source:
        apply_config(model, dataclasses.replace(cfg, trace_source=True))
    was_training = model.training
    try:
        model.eval()
        model(x)
        st = tome_state(model)  # the forward's sources, one slot per block boundary
        final = groups_from_source(st.source, n_prefix, n_patches).expand(x.shape[0], -1).clone()
        slots = st.sources[1:] if layers else []
        per_layer = [groups_from_source(src, n_prefix, n_patches).expand(x.shape[0], -1).clone()
                     for src in slots]
    finally:
        model.train(was_training)
        if not cfg.trace_source:
            apply_config(model, cfg)
    return torch.stack(per_layer, 1) if layers else final


def merge_picture(model: nn.Module, image: Any, layers: Sequence[int] | None = None,
                  border: bool = True, scale: int = 1) -> np.ndarray | list[np.ndarray]:
    """The merge picture of one image through a patched model.

    Args:
        model: a ToMe-patched timm ViT.
        image: see :func:`to_image`; resized to the model's input size.
        layers: block indices (0-based) to picture after; None: after the last block.
        border: lines between groups.
        scale: nearest upscaling of the output (for small inputs).

    Returns:
        [H * scale, W * scale, 3] in [0, 1], or one such picture per entry of ``layers``.
    """
    grid = _grid(model)
    if len(grid) != 2:
        raise TypeError(f"{type(model).__name__} takes clips (patch grid {grid}); use "
                        f"merge_clip")
    x, shown = prepare(model, image)
    if layers is None:
        return paint(shown, trace_groups(model, x)[0].numpy(), grid, border, scale)
    depth = len(model.blocks)
    bad = [i for i in layers if not -depth <= i < depth]
    if bad:
        raise ValueError(f"layers {bad} out of range for a {depth}-block model")
    every = trace_groups(model, x, layers=True)[0]  # (depth, P)
    return [paint(shown, every[i].numpy(), grid, border, scale) for i in layers]


def merge_clip(model: nn.Module, clip: Any, border: bool = True, scale: int = 1,
               gap: int = 2) -> np.ndarray:
    """The merge picture of one clip through a patched video ViT: frames side by side.

    Args:
        model: a ToMe-patched video ViT whose patch embedding has a (T', H', W') grid.
        clip: [T, H, W] or [T, H, W, C] frames (uint8, or float in [0, 1]) at the model's
            input size (clips are not resized).
        border: lines between groups inside each frame.
        scale: nearest upscaling of the output.
        gap: blank pixels between frames.

    Returns:
        [H * scale, T * W * scale + (T - 1) * gap, 3] in [0, 1].
    """
    grid = _grid(model)
    if len(grid) != 3:
        raise TypeError(f"{type(model).__name__} takes images (patch grid {grid}); use "
                        f"merge_picture")
    dcfg = model_data_config(model)
    c, t, h, w = dcfg["input_size"]
    arr = np.asarray(clip)
    frames = arr.astype(np.float64) / (255.0 if arr.dtype == np.uint8 else 1.0)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[:3] != (t, h, w) or frames.shape[-1] not in (1, 3):
        raise ValueError(f"expected a [{t}, {h}, {w}] or [{t}, {h}, {w}, C] clip (C = 1 or 3) "
                         f"for this model; got shape {arr.shape}")
    frames = np.clip(frames, 0.0, 1.0)
    x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None]  # (1, C0, T, H, W)
    x = x.mean(1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1, -1)
    mean = torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, -1, 1, 1, 1)
    std = torch.tensor(dcfg["std"], dtype=torch.float32).view(1, -1, 1, 1, 1)
    shown = np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames
    groups = trace_groups(model, (x - mean) / std)[0].numpy()
    return paint_clip(shown, groups, grid, border, scale, gap=gap)


def figure(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
           caption: str | None = None, size: float = 1.9) -> Figure:
    """A grid of pictures: one row per image, panels titled.

    Args:
        rows: (row name, [(panel title, [H, W, 3] picture), ...]) per row.
        caption: text under the grid.
        size: inches per panel.
    """
    n_rows = len(rows)
    n_cols = max(len(panels) for _, panels in rows)
    fig = Figure(figsize=(size * n_cols, size * n_rows + (0.5 if caption else 0)),
                 layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for (name, panels), ax_row in zip(rows, axes, strict=True):
        for j, ax in enumerate(ax_row):
            ax.set_axis_off()
            if j < len(panels):
                title, pic = panels[j]
                ax.imshow(np.clip(pic, 0, 1), interpolation="nearest")
                ax.set_title(title, fontsize=8)
        ax_row[0].text(-0.06, 0.5, name, transform=ax_row[0].transAxes, rotation=90,
                       ha="right", va="center", fontsize=8)
    if caption:
        fig.supxlabel(caption, fontsize=7, wrap=True)
    return fig
