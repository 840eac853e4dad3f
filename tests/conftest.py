"""Shared fixtures: small, randomly initialised timm ViTs so the suite runs on a CPU."""

from __future__ import annotations

import pytest
import timm
import torch


def tiny_vit(name: str = "deit_tiny_patch16_224", **kw):
    """A timm ViT shrunk to a few blocks at 64 px (16 patches) unless kw says otherwise."""
    defaults = dict(img_size=64, depth=3, embed_dim=64, num_heads=4)
    defaults.update(kw)
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **defaults).eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
