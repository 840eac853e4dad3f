"""tome_lab.vis: merge pictures colour each patch by its group; a known merge on a tiny ViT."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import tome_lab
from tome_lab import vis

GRID = 4  # 32x32 input, 8x8 patches: 16 patches
P = 8


def _tiny(depth: int = 1) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=P, in_chans=3, num_classes=10,
                              embed_dim=32, depth=depth, num_heads=2, mlp_ratio=2.0).eval()
    with torch.no_grad():
        model.pos_embed.zero_()  # identical patches then give identical tokens
    return model


def _noise_image(copy_from: int, copy_to: int) -> np.ndarray:
    """16 patches of random texture; patch ``copy_to`` is an exact copy of ``copy_from``."""
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3))
    fr, fc = divmod(copy_from, GRID)
    tr, tc = divmod(copy_to, GRID)
    img[tr * P:(tr + 1) * P, tc * P:(tc + 1) * P] = img[fr * P:(fr + 1) * P, fc * P:(fc + 1) * P]
    return img


def _patch(pic: np.ndarray, k: int, scale: int = 1) -> np.ndarray:
    r, c = divmod(k, GRID)
    s = P * scale
    return pic[r * s:(r + 1) * s, c * s:(c + 1) * s]


def test_a_known_merge_colours_the_merged_patches_alike():
    # Tokens (class first): patch k sits at index k + 1; bipartite deals even indices to A and
    # odd ones to B, so patch 1 (index 2, A) and patch 6 (index 7, B) can merge. They are
    # identical, so their keys have cosine 1, the largest: r = 1 merges exactly them.
    model = tome_lab.apply_tome(_tiny(), r=1, trace_source=True)
    img = _noise_image(1, 6)
    x, shown = vis.prepare(model, img)
    np.testing.assert_allclose(shown, img, atol=1e-6)  # already the model's size: unchanged
    groups = vis.trace_groups(model, x)[0].tolist()
    assert groups[1] == groups[6]
    assert len(set(groups)) == 15
    pic = vis.merge_picture(model, img, border=False)
    assert pic.shape == (32, 32, 3)
    for k in range(16):
        # every patch shows its group's mean colour; the merged pair is one group of two
        # identical patches, so that mean is each one's own mean
        own = _patch(img, k).reshape(-1, 3).mean(0)
        np.testing.assert_allclose(_patch(pic, k), np.broadcast_to(own, (P, P, 3)), atol=1e-6)
    np.testing.assert_array_equal(_patch(pic, 1), _patch(pic, 6))


def test_paint_uses_the_group_mean_and_draws_lines_between_groups():
    red, blue, green, white = (1, 0, 0), (0, 0, 1), (0, 1, 0), (1, 1, 1)
    img = np.zeros((4, 4, 3))
    for k, col in enumerate((red, blue, green, white)):  # 2x2 grid of 2x2-pixel patches
        r, c = divmod(k, 2)
        img[2 * r:2 * r + 2, 2 * c:2 * c + 2] = col
    out = vis.paint(img, [0, 0, 1, 2], (2, 2), border=False)
    np.testing.assert_allclose(out[:2, :4], np.broadcast_to([0.5, 0, 0.5], (2, 4, 3)))
    np.testing.assert_allclose(out[2:, :2], np.broadcast_to(green, (2, 2, 3)))
    lined = vis.paint(img, [0, 0, 1, 2], (2, 2), border=True, scale=2, border_colour=(0, 0, 0))
    assert lined.shape == (8, 8, 3)
    np.testing.assert_allclose(lined[0, :], np.broadcast_to([0.5, 0, 0.5], (8, 3)))  # no line
    np.testing.assert_allclose(lined[3, :], 0)  # line between the top group and the bottom
    np.testing.assert_allclose(lined[5:, 3], 0)  # line between green and white
    np.testing.assert_allclose(lined[6, 0], green)


def test_layer_by_layer_groups_refine_and_match_token_counts():
    model = tome_lab.apply_tome(_tiny(depth=3), r=2, trace_source=True)
    x, _ = vis.prepare(model, np.random.default_rng(1).random((32, 32, 3)))
    per_layer = vis.trace_groups(model, x, layers=True)[0]  # (3, 16)
    counts = [len(set(g.tolist())) for g in per_layer]
    assert counts == [14, 12, 10]  # 16 patches, 2 merged per block
    assert counts == [t - 1 for t in tome_lab.tome_state(model).tokens]  # class token apart
    for early, late in zip(per_layer[:-1], per_layer[1:], strict=True):
        for g in set(early.tolist()):  # each earlier group lies inside one later group
            assert len(set(late[early == g].tolist())) == 1
    final = vis.trace_groups(model, x)[0]
    np.testing.assert_array_equal(final.numpy(), per_layer[-1].numpy())
    pics = vis.merge_picture(model, x[0].permute(1, 2, 0).clamp(0, 1).numpy(), layers=[0, 2])
    assert len(pics) == 2 and all(p.shape == (32, 32, 3) for p in pics)
    with pytest.raises(ValueError, match="out of range"):
        vis.merge_picture(model, np.zeros((32, 32, 3)), layers=[3])


def test_tracing_is_switched_on_for_the_call_only():
    model = tome_lab.apply_tome(_tiny(depth=2), r=2)
    groups = vis.trace_groups(model, torch.randn(2, 3, 32, 32))
    assert groups.shape == (2, 16)
    assert [len(set(g.tolist())) for g in groups] == [12, 12]
    assert tome_lab.tome_state(model).config.trace_source is False


def test_pruned_patches_are_painted_black():
    model = tome_lab.apply_tome(_tiny(depth=2), r=2, matching="pruning", criterion="norm",
                                trace_source=True)
    img = np.random.default_rng(2).random((32, 32, 3)) * 0.5 + 0.5  # no black pixel
    x, _ = vis.prepare(model, img)
    groups = vis.trace_groups(model, x)[0]
    assert int((groups == vis.DROPPED).sum()) == 4
    pic = vis.merge_picture(model, img, border=False)
    for k in torch.nonzero(groups == vis.DROPPED).flatten().tolist():
        assert np.all(_patch(pic, k) == 0)


def test_embedded_model_on_a_digit():
    from tome_lab.models import create_model

    model = create_model()  # vit_digits with the zoo weights, 1 channel, 8x8 patch grid
    tome_lab.apply_tome(model, r=4, trace_source=True)
    digit = np.zeros((28, 28))
    digit[4:24, 12:16] = 1.0  # a "1"
    pic = vis.merge_picture(model, digit, scale=4)
    assert pic.shape == (128, 128, 3)
    groups = vis.trace_groups(model, vis.prepare(model, digit)[0])[0]
    assert len(set(groups.tolist())) == tome_lab.tome_state(model).tokens[-1] - 2
    assert np.allclose(pic[..., 0], pic[..., 1])  # grey in, grey out (lines are white)


def test_bad_inputs():
    with pytest.raises(ValueError, match="ToMe-patched"):
        vis.trace_groups(_tiny(), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        vis.to_image(np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="multiple of"):
        vis.paint(np.zeros((5, 4, 3)), [0, 1, 2, 3], (2, 2))


def test_figure_lays_out_rows(tmp_path):
    from tome_lab import plots

    pics = [("input", np.zeros((8, 8, 3))), ("merged", np.ones((8, 8, 3)) * 0.5)]
    fig = vis.figure([("a", pics), ("b", pics[:1])], caption="random weights")
    assert len(fig.axes) == 4
    assert fig.axes[1].get_title() == "merged"
    plots.save(fig, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_clip_picture_paints_each_space_time_group_with_its_mean_over_the_clip():
    """Independent check of merge_clip: every pixel of frame f, patch (i, j) equals the mean of
    all the clip's pixels in the tubes of its group, computed here by explicit loops."""
    from tome_lab.tasks import moving_digits as md

    torch.manual_seed(0)
    model = timm.create_model("vit_video_digits", depth=3).eval()
    tome_lab.apply_tome(model, r=60)
    clip = md.generate("test").clips[0]  # (T, 32, 32) in [0, 1]
    pic = vis.merge_clip(model, clip, border=False, gap=2)
    gt, gh, gw = model.patch_embed.grid_size
    t = clip.shape[0]
    pt, ph, pw = t // gt, 32 // gh, 32 // gw
    assert pic.shape == (32, t * 32 + (t - 1) * 2, 3)
    x = (torch.tensor(clip, dtype=torch.float32)[None, None] - 0.1) / 0.2  # mean, std
    groups = vis.trace_groups(model, x)[0].numpy().reshape(gt, gh, gw)
    assert len(np.unique(groups)) == gt * gh * gw - 3 * 60  # 3 blocks merge 60 tokens each
    spans_time = [g for g in np.unique(groups) if len(np.unique(np.nonzero(groups == g)[0])) > 1]
    assert spans_time, "with r=60 some token should hold tubes of different times"
    for g in spans_time[:3] + [groups[0, 0, 0]]:
        pixels = [clip[a * pt:(a + 1) * pt, b * ph:(b + 1) * ph, c * pw:(c + 1) * pw]
                  for a, b, c in zip(*np.nonzero(groups == g), strict=True)]
        want = np.mean([p.mean() for p in pixels])
        for a, b, c in zip(*np.nonzero(groups == g), strict=True):
            for f in range(a * pt, (a + 1) * pt):
                x0 = f * (32 + 2) + c * pw
                np.testing.assert_allclose(pic[b * ph:(b + 1) * ph, x0:x0 + pw], want,
                                           rtol=0, atol=1e-6)  # float32 clip


def test_clip_and_picture_refuse_the_other_kind():
    video = tome_lab.apply_tome(timm.create_model("vit_video_digits", depth=1), r=2)
    with pytest.raises(TypeError, match="merge_clip"):
        vis.merge_picture(video, np.zeros((32, 32)))
    with pytest.raises(ValueError, match="clip"):
        vis.merge_clip(video, np.zeros((3, 32, 32)))
    with pytest.raises(TypeError, match="merge_picture"):
        vis.merge_clip(tome_lab.apply_tome(_tiny(), r=2), np.zeros((8, 32, 32)))
