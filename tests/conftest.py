"""Shared fixtures: small, randomly initialised timm ViTs so the suite runs on a CPU.

The suite has two tiers (the rule for new tests is in tests/README.md):

- fast, ``make test`` (``pytest -m "not full"``): tiny models and the eager backend, every
  module covered, a few minutes on a 2-core CPU;
- full, ``make test-all`` and ``.ci/run`` (plain ``pytest``): everything, including the tests
  marked ``@pytest.mark.full``: notebooks, Slurm, inductor compiles, fvcore traces, trainings,
  checkpoint reproductions, espeak-ng synthesis, model-family x zoo matrices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest
import timm
import torch

REQUIRE_EXTRAS = "TOME_LAB_REQUIRE_EXTRAS"  # 1 in .ci/run and make test: a missing extra fails


def need_extra(module: str, extra: str):
    """Imports an optional extra's library for a test: skips without it, or fails where
    ``$TOME_LAB_REQUIRE_EXTRAS`` is 1 (the development install has every extra)."""
    try:
        return __import__(module)
    except ImportError as err:
        if os.environ.get(REQUIRE_EXTRAS) == "1":
            raise RuntimeError(f"{REQUIRE_EXTRAS}=1 but {module} is missing: "
                               f"pip install 'tome_lab[{extra}]'") from err
        pytest.skip(f"{module} not installed (pip install 'tome_lab[{extra}]')")


def tiny_vit(name: str = "deit_tiny_patch16_224", **kw):
    """A timm ViT shrunk to a few blocks at 64 px (16 patches) unless kw says otherwise."""
    defaults = dict(img_size=64, depth=3, embed_dim=64, num_heads=4)
    defaults.update(kw)
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **defaults).eval()


def patched_at_r0_then_r(model, x, r: int):
    """Checks that ``model`` patched at r=0 computes what it computed unpatched, then patches
    it at ``r`` (source tracing on) and returns ``(unpatched output, merged output, state)``."""
    import tome_lab

    with torch.no_grad():
        ref = model(x)
        tome_lab.apply_tome(model, r=0)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        tome_lab.apply_tome(model, r=r, trace_source=True)
        out = model(x)
    assert torch.isfinite(out).all()
    return ref, out, tome_lab.tome_state(model)


# A recorded top-1 is reproduced to within this many test images: exact equality breaks across
# BLAS builds and thread counts, where a near-tie between two logits can flip an image.
TOP1_IMAGES = 2


def assert_top1_reproduces(got: Mapping[str, Any], record: Mapping[str, Any], name: str,
                           images: int = TOP1_IMAGES) -> None:
    """Regression check of a committed checkpoint: the test top-1 measured now (``got``, an
    evaluation result) is within ``images`` test images of the one recorded beside the
    checkpoint (``record``, its zoo JSON)."""
    n = got["n_images"]
    assert n == record["splits"]["test"], f"{name}: scored {n} images, recorded on " \
                                          f"{record['splits']['test']}"
    off = round((got["top1"] - record["top1"]) * n / 100)  # in images
    assert abs(off) <= images, (
        f"regression: {name} now scores {got['top1']:.2f}% top-1 on its {n} test images, "
        f"{off:+d} images from the {record['top1']:.2f}% recorded in its zoo JSON "
        f"(tolerance: {images} images)")


@pytest.fixture(autouse=True, scope="session")
def _no_fsync():
    """``os.fsync`` does nothing in this process: it makes a write survive a power cut, which no
    test can observe, and it cost a third of the time of the tests that write many records or
    Optuna journal lines (3 ms a call on ext4). Atomicity (write, then rename) does not depend
    on it; a test that checks the calls patches ``os.fsync`` itself."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def requested_stats(matching: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The attention statistics ``matching`` makes a block compute, on a class-token model and
    on one without a class token (four registers, average pooling)."""
    import tome_lab

    def stats(model):
        return tome_lab.tome_state(tome_lab.apply_tome(model, r=2, matching=matching)).spec.stats

    return stats(tiny_vit()), stats(tiny_vit("vit_base_patch16_reg4_gap_256", reg_tokens=4))
