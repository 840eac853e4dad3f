"""tome_lab: a research framework for Token Merging (Bolya et al., ICLR 2023) on ViTs.

Model families: timm, Hugging Face transformers and open_clip (``tome_lab.engine``).

Importing the package imports nothing heavy: the names below load on first use (PEP 562), and
each registry imports its plug-in packages on its first lookup (:mod:`tome_lab.registry`), so
``tome_lab.config`` and the command lines' parsers do not need torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tome_lab.config import ToMeConfig
    from tome_lab.engine import apply_config, apply_tome, remove_tome, tome_state, vit_spec
    from tome_lab.flops import analytic_gflops, count_flops

# public name -> the module that defines it
_EXPORTS = {"ToMeConfig": "tome_lab.config", "analytic_gflops": "tome_lab.flops",
            "count_flops": "tome_lab.flops", "apply_config": "tome_lab.engine",
            "apply_tome": "tome_lab.engine", "remove_tome": "tome_lab.engine",
            "tome_state": "tome_lab.engine", "vit_spec": "tome_lab.engine"}
# the plug-in packages, reachable as attributes as when this module imported them
_PLUGINS = ("attention", "combine", "features", "matching", "partition", "schedules")

__all__ = ["ToMeConfig", "analytic_gflops", "apply_config", "apply_tome", "count_flops",
           "remove_tome", "tome_state", "vit_spec"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _PLUGINS:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_PLUGINS))
