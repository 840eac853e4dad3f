"""tome_lab: a research framework for Token Merging (Bolya et al., ICLR 2023) on timm ViTs."""

from __future__ import annotations

# The plug-in packages register themselves on import; importing them here fills the registries.
from tome_lab import attention, combine, features, matching, partition, schedules  # noqa: F401
from tome_lab.config import ToMeConfig
from tome_lab.flops import analytic_gflops, count_flops
from tome_lab.patch import apply_config, apply_tome, remove_tome, tome_state, vit_spec

__all__ = ["ToMeConfig", "analytic_gflops", "apply_config", "apply_tome", "count_flops",
           "remove_tome", "tome_state", "vit_spec"]
__version__ = "0.1.0"
