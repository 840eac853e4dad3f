"""Typed, frozen configurations, validated on construction.

A bad value fails here, with a ``ValueError`` naming it and the valid choices, not deep inside
a forward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tome_lab.merge import DISTANCES


def _plugins() -> None:
    # Importing the packages fills the registries (and is cheap after the first time).
    import tome_lab.attention  # noqa: F401
    import tome_lab.combine  # noqa: F401
    import tome_lab.features  # noqa: F401
    import tome_lab.matching  # noqa: F401
    import tome_lab.partition  # noqa: F401
    import tome_lab.schedules  # noqa: F401


def _params(fn: Any, skip: int) -> list[str]:
    return list(inspect.signature(fn).parameters)[skip:]


@dataclass(frozen=True)
class ToMeConfig:
    """How to merge tokens in a ViT.

    Attributes:
        r: tokens merged per block (int), or an explicit per-layer list.
        matching: matching plug-in name (``tome_lab.registry.MATCHING``).
        schedule: schedule plug-in name (``tome_lab.registry.SCHEDULES``); a list ``r``
            implies ``list``.
        prop_attn: proportional attention (add log size to the logits) or plain attention.
        trace_source: keep which input patches each token holds after a forward.
        distance: similarity used by the matcher: cosine, dot or euclidean.
        feature: similarity feature plug-in (``k``, ``q``, ``v``, ``x``).
        head_agg: how per-head features become one: ``mean`` or ``concat``.
        combine: combine-rule plug-in (``wavg``, ``mean``, ``keep``, ``max``).
        partition: how bipartite matching splits A / B (``alternate``, ``halves``, ``random``).
        options: plug-in keyword options (e.g. ``gflops`` for ``schedule="flops"``), each
            routed to the matching or schedule plug-in whose parameter it names.
    """

    r: int | tuple[int, ...] = 16
    matching: str = "bipartite"
    schedule: str = "constant"
    prop_attn: bool = True
    trace_source: bool = False
    distance: str = "cosine"
    feature: str = "k"
    head_agg: str = "mean"
    combine: str = "wavg"
    partition: str = "alternate"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from tome_lab.registry import COMBINE, FEATURES, MATCHING, PARTITIONS, SCHEDULES

        _plugins()
        r = self.r
        if isinstance(r, (list, tuple)):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r):
                raise ValueError(f"r as a list must hold ints >= 0, got {list(r)!r}")
            r = tuple(int(v) for v in r)
            schedule = "list" if self.schedule in ("constant", "list") else self.schedule
            if SCHEDULES.canonical(schedule) != "list":
                raise ValueError(f"a list r needs schedule 'list', not {self.schedule!r}")
        elif isinstance(r, int) and not isinstance(r, bool):
            if r < 0:
                raise ValueError(f"r must be >= 0 (tokens merged per block), got {r}")
            schedule = self.schedule
        else:
            raise ValueError(f"r must be an int >= 0 or a list of them, got {r!r}")
        object.__setattr__(self, "r", r)
        object.__setattr__(self, "schedule", SCHEDULES.canonical(schedule))
        object.__setattr__(self, "matching", MATCHING.canonical(self.matching))
        for name in ("prop_attn", "trace_source"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; valid: {', '.join(DISTANCES)}")
        from tome_lab.features import HEAD_AGG

        if self.head_agg not in HEAD_AGG:
            raise ValueError(f"unknown head_agg {self.head_agg!r}; valid: {', '.join(HEAD_AGG)}")
        for name, reg in (("feature", FEATURES), ("combine", COMBINE),
                          ("partition", PARTITIONS)):
            object.__setattr__(self, name, reg.canonical(getattr(self, name)))
        self._check_knobs(getattr(MATCHING.get(self.matching), "uses", frozenset()))
        m_params = _params(MATCHING.get(self.matching), 2)
        s_params = _params(SCHEDULES.get(self.schedule), 2)
        for key in self.options:
            if key not in m_params and key not in s_params:
                valid = sorted(set(m_params + s_params)) or ["none"]
                raise ValueError(
                    f"option {key!r} is not taken by matching {self.matching!r} nor schedule "
                    f"{self.schedule!r}; their options: {', '.join(valid)}")
        # a plain dict copy (not a MappingProxyType) so configs and patched models deep-copy
        # and pickle, e.g. when submitit ships them to a cluster job
        object.__setattr__(self, "options", dict(self.options))

    def _check_knobs(self, uses: frozenset[str]) -> None:
        """Refuses choices the matcher would silently ignore, naming the pair and why."""
        defaults = {f.name: f.default for f in fields(self)}
        groups = {"metric": ("feature", "head_agg", "distance"), "partition": ("partition",),
                  "combine": ("combine",)}
        for knob, names in groups.items():
            for name in names:
                if knob not in uses and getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} cannot go with matching="
                        f"{self.matching!r}: that matcher does not use a {knob} "
                        f"(leave {name} at {defaults[name]!r})")
        if self.combine == "keep" and "keep" not in uses:
            raise ValueError(
                f"combine='keep' cannot go with matching={self.matching!r}: its groups have no "
                f"destination token to keep; use wavg, mean or max")

    @property
    def attention(self) -> str:
        """The attention plug-in name this config selects."""
        return "proportional" if self.prop_attn else "plain"

    def matching_options(self) -> dict[str, Any]:
        """The options the matching plug-in takes."""
        from tome_lab.registry import MATCHING

        names = _params(MATCHING.get(self.matching), 2)
        return {k: v for k, v in self.options.items() if k in names}

    def schedule_options(self) -> dict[str, Any]:
        """The options the schedule plug-in takes."""
        from tome_lab.registry import SCHEDULES

        names = _params(SCHEDULES.get(self.schedule), 2)
        return {k: v for k, v in self.options.items() if k in names}


_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to run.

    Attributes:
        name: a timm model name; the default is tome_lab's embedded digits ViT.
        checkpoint: a safetensors file or a torch state dict (loaded with weights_only);
            None means the embedded zoo checkpoint for the embedded model, and timm's local
            cache (never the network) for pretrained timm models.
        pretrained: load weights (False: random init, for speed-only runs).
    """

    name: str = "vit_digits"
    checkpoint: str | None = None
    pretrained: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model name must be a non-empty string, got {self.name!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which images to evaluate on.

    Attributes:
        name: a dataset registered in ``tome_lab.registry.DATASETS``.
        path: root folder for ``imagefolder``.
        split: ``val`` (held-out) or ``train``.
        batch_size: images per batch.
        num_workers: DataLoader workers.
        limit: evaluate at most this many images (None: all).
    """

    name: str = "mnist5k"
    path: str | None = None
    split: str = "val"
    batch_size: int = 250
    num_workers: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {self.split!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be None or an int >= 1, got {self.limit!r}")


@dataclass(frozen=True)
class EvalConfig:
    """How to run and time.

    Attributes:
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``).
        dtype: ``fp32``, or ``bf16`` / ``fp16`` autocast.
        threads: torch CPU threads (None: torch's default).
        speed: also measure img/s against the unmerged model.
        speed_batches: timed batches per setting for img/s.
    """

    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None
    speed: bool = True
    speed_batches: int = 3

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(_DTYPES)}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        if not isinstance(self.speed_batches, int) or self.speed_batches < 1:
            raise ValueError(f"speed_batches must be an int >= 1, got {self.speed_batches!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One point of a sweep: a model with a ToMe setting evaluated on a dataset.

    The default ToMe setting is r=4 because the default model is the embedded ``vit_digits``
    (66 tokens, 12 blocks): r=4 merges 48 of them, as r=16 merges 192 of DeiT's 197.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tome: ToMeConfig = field(default_factory=lambda: ToMeConfig(r=4))
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
