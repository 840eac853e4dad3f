"""CPU throughput of one base-size model per model family, merged and not (issue 27).

    python benchmarks/families_speed.py --threads 2 --repeats 5 \
        --json benchmarks/families_speed_cpu.json

Each family's base-size model is built with random weights (speed does not depend on them;
nothing is downloaded), fp32, batch 32 at 224 px. Per family, the unpatched model and the
patched one at r = 0, 8 and 16 (bipartite, proportional attention) are timed interleaved,
round by round (:func:`tome_lab.runtime.interleaved_times`), after a warm-up; a row gives the
median img/s, the speed-up over the unpatched model (ratio of medians) with the quartiles of
the round-by-round ratios, and the analytic GFLOPs ratio (unpatched / patched; the tests hold
the analytic count equal to fvcore's for each family). Families whose library is missing are
reported as skipped. Run it alone on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import tome_lab
from tome_lab.runtime import interleaved_times, ratio_quartiles


def _timm_vit() -> nn.Module:
    import timm

    return timm.create_model("vit_base_patch16_224", pretrained=False)


def _timm_eva() -> nn.Module:
    import timm

    return timm.create_model("vit_base_patch16_rope_224", pretrained=False)


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(image_size=224, patch_size=16), add_pooling_layer=False)


def _hf_dinov2() -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(image_size=224, patch_size=16))


def _hf_clip() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=16))


def _hf_siglip() -> nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return SiglipVisionModel(SiglipVisionConfig(image_size=224, patch_size=16))


def _open_clip() -> nn.Module:
    import open_clip

    return open_clip.create_model("ViT-B-16", pretrained=None).visual


# family -> (model description, builder); base size (12 blocks of 768), patch 16, 224 px
MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "timm": ("timm vit_base_patch16_224", _timm_vit),
    "eva": ("timm vit_base_patch16_rope_224 (RoPE)", _timm_eva),
    "hf_vit": ("transformers ViTModel, base", _hf_vit),
    "hf_dinov2": ("transformers Dinov2Model, base, patch 16", _hf_dinov2),
    "hf_clip": ("transformers CLIPVisionModel, ViT-B/16", _hf_clip),
    "hf_siglip": ("transformers SiglipVisionModel, base/16, attention-pool head", _hf_siglip),
    "open_clip": ("open_clip ViT-B-16 image tower", _open_clip),
}
RS = (0, 8, 16)


def measure(family: str, batch: int, repeats: int) -> list[dict]:
    label, build = MODELS[family]
    torch.manual_seed(0)
    base = build().eval()
    x = torch.randn(batch, 3, 224, 224)
    models = {"unpatched": base}
    gflops = {}
    for r in RS:
        m = tome_lab.apply_tome(copy.deepcopy(base), r=r)
        st = tome_lab.tome_state(m)
        gflops[f"r={r}"] = tome_lab.analytic_gflops(st.spec, st.r)
        models[f"r={r}"] = m
    gflops["unpatched"] = gflops["r=0"]

    fns = {}
    for name, m in models.items():
        def call(m: nn.Module = m) -> None:
            with torch.inference_mode():
                m(x)
        fns[name] = call
    times = interleaved_times(fns, repeats, warmup=1)
    ref = statistics.median(times["unpatched"])
    rows = []
    for name in models:
        med = statistics.median(times[name])
        rows.append({
            "family": family, "model": label, "setting": name, "batch": batch,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "load_1min": os.getloadavg()[0],
            "img_per_s": batch / med, "speedup": ref / med,
            "speedup_quartiles": list(ratio_quartiles(times[name], times["unpatched"])),
            "gflops": gflops[name], "flop_ratio": gflops["unpatched"] / gflops[name]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--families", default=",".join(MODELS))
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for family in args.families.split(","):
        try:
            got = measure(family, args.batch, args.repeats)
        except ImportError as err:
            print(f"{family}: skipped ({err})", file=sys.stderr)
            continue
        for r in got:
            print(f"{family:<10} {r['setting']:<10} {r['img_per_s']:7.2f} img/s  "
                  f"x{r['speedup']:.2f}  GFLOPs x{r['flop_ratio']:.2f}", flush=True)
        rows += got
        args.json.write_text(json.dumps(rows, indent=1) + "\n")  # after each family


if __name__ == "__main__":
    main()
