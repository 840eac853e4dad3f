"""Typed, frozen configurations, validated on construction, shared by every command.

A bad value fails here, with a ``ValueError`` naming it and the valid choices, not deep inside
a forward pass. The sections (``ModelConfig``, ``DataConfig``, ``ToMeConfig``, ``EvalConfig``,
``TrainConfig``) are the same in every command; a command's configuration is a dataclass whose
fields are sections (``ExperimentConfig`` for ``evaluate`` and ``ablate``, ``TrainRunConfig``
for ``train``), so a flag such as ``--tome.r`` means the same thing everywhere.
:func:`to_dict`, :func:`from_dict` and :func:`config_hash` turn any of them into plain data and
back, and hash the resolved configuration.

Plain data: importing this module imports neither torch nor a plug-in. Plug-in names are
checked (aliases resolved, did-you-mean errors) by the registries of :mod:`tome_lab.registry`,
which import their plug-ins on the first lookup.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar


def _params(fn: Any, skip: int) -> list[str]:
    return list(inspect.signature(fn).parameters)[skip:]


# where a merged token sits (ToMeConfig.position_rule)
POSITION_RULES = ("mean", "keep")


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
        attn_impl: how proportional attention is computed (``tome_lab.registry.ATTN_IMPL``):
            ``mask`` (a float mask for SDPA), ``bias_channel`` (log s as one more q / k
            channel, no mask), ``flex`` (FlexAttention), or ``auto`` (by device and dtype, see
            ``tome_lab.attention.impl.auto``). Plain attention has nothing to compute, so a
            choice other than ``auto`` needs ``prop_attn``. Left out of :func:`config_hash`
            while ``auto`` (added after results were recorded under their hashes).
        position_rule: where a merged token sits, for the blocks and matchers that read token
            positions (rotary embeddings, windowed matchers): ``mean``, the size-weighted mean
            of its patches' positions, or ``keep``, the position of the token it was merged
            into (the destination). Left out of :func:`config_hash` while ``mean``.
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
    attn_impl: str = field(default="auto", metadata={"hash": "omit_default"})
    position_rule: str = field(default="mean", metadata={"hash": "omit_default"})
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # names are checked by the registries, which import their plug-ins on the first lookup
        from tome_lab.registry import ATTN_IMPL, COMBINE, FEATURES, MATCHING, PARTITIONS, SCHEDULES

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
        from tome_lab.merge import DISTANCES

        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; valid: {', '.join(DISTANCES)}")
        from tome_lab.features import HEAD_AGG

        if self.head_agg not in HEAD_AGG:
            raise ValueError(f"unknown head_agg {self.head_agg!r}; valid: {', '.join(HEAD_AGG)}")
        for name, reg in (("feature", FEATURES), ("combine", COMBINE),
                          ("partition", PARTITIONS), ("attn_impl", ATTN_IMPL)):
            object.__setattr__(self, name, reg.canonical(getattr(self, name)))
        if self.attn_impl != "auto" and not self.prop_attn:
            raise ValueError(
                f"attn_impl={self.attn_impl!r} cannot go with prop_attn=False: plain attention "
                f"adds no bias and always runs SDPA without a mask (leave attn_impl at 'auto')")
        from tome_lab.matching import capabilities

        caps = capabilities(MATCHING.get(self.matching))
        if self.position_rule not in POSITION_RULES:
            raise ValueError(f"unknown position_rule {self.position_rule!r}; valid: "
                             f"{', '.join(POSITION_RULES)}")
        if self.position_rule == "keep" and "keep" not in caps.uses:
            raise ValueError(
                f"position_rule='keep' needs a matcher whose merged tokens have a destination "
                f"to take the position of; matching {self.matching!r} has none (use 'mean')")
        self._check_knobs(caps.uses)
        if getattr(MATCHING.get(self.matching), "pads", False) and not self.prop_attn:
            raise ValueError(
                f"matching {self.matching!r} pads its batches with size-0 tokens that only "
                f"proportional attention masks; prop_attn=False would attend to them "
                f"(use prop_attn=True)")
        if self.trace_source and not caps.sources:
            raise ValueError(
                f"trace_source=True cannot go with matching={self.matching!r}: its output "
                f"tokens are not groups of input patches (reduction {caps.reduction!r})")
        # an option of the matcher that fixes every block's count (composite's ``pairs``)
        # implies the schedule of that name, as a list r implies ``list``
        own = getattr(MATCHING.get(self.matching), "schedule_option", None)
        if own is not None and own in self.options:
            if self.schedule not in ("constant", own):
                raise ValueError(
                    f"option {own!r} of matching {self.matching!r} sets every block's count "
                    f"and implies schedule {own!r}; it cannot go with schedule "
                    f"{self.schedule!r} (leave r and schedule at their defaults)")
            object.__setattr__(self, "schedule", SCHEDULES.canonical(own))
        m_params = _params(MATCHING.get(self.matching), 2)
        s_params = _params(SCHEDULES.get(self.schedule), 2)
        for key in self.options:
            if key not in m_params and key not in s_params:
                import difflib

                valid = sorted(set(m_params + s_params))
                close = difflib.get_close_matches(key, valid, n=2, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(
                    f"option {key!r} is not taken by matching {self.matching!r} nor schedule "
                    f"{self.schedule!r}.{hint} Their options: {', '.join(valid) or 'none'}")
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
_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check_device(device: Any) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; a torch device such as cpu, cuda, "
                         f"cuda:1, mps") from None


def _check_backend(backend: Any) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown compile_backend {backend!r}; valid: {', '.join(_BACKENDS)}")


def check_compile(backend: str, mode: str, freezing: bool) -> None:
    """Refuses an unknown inductor mode, or a mode / freezing asked of another backend."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile_mode {mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if backend != "inductor" and (mode != "default" or freezing):
        raise ValueError(f"compile_mode ({mode!r}) and compile_freezing ({freezing}) are "
                         f"inductor options; compile_backend is {backend!r}")


def _check_int(owner: str, name: str, value: Any, low: int, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        extra = "None or " if none_ok else ""
        raise ValueError(f"{owner}.{name} must be {extra}an int >= {low}, got {value!r}")


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")


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


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataConfig:
    """Which images to use.

    Attributes:
        name: a dataset registered in ``tome_lab.registry.DATASETS``.
        path: root folder for ``imagefolder``.
        split: ``test`` (held out: every reported number comes from it), ``val`` (carved
            from the training data, for choices made during training or a search) or
            ``train`` (the rest of the training data).
        batch_size: images per evaluation batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        pin_memory: page-locked host batches for faster copies to a GPU (None: when the
            device is CUDA).
        limit: use at most this many images of the split (a seeded subset; None: all).
    """

    name: str = "mnist5k"
    path: str | None = None
    split: str = "test"
    batch_size: int = 250
    num_workers: int = 0
    pin_memory: bool | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; valid: {', '.join(SPLITS)}")
        if self.pin_memory is not None and not isinstance(self.pin_memory, bool):
            raise ValueError(f"pin_memory must be None, True or False, got {self.pin_memory!r}")
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
        speed_batches: timed batches per setting for img/s (after the warm-up).
        speed_warmup: untimed batches per setting before timing starts.
        compile: ``torch.compile`` the unmerged and the merged model before scoring and
            timing them.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``eager`` and
            ``aot_eager`` trace without generating code, for quick checks).
        compile_mode: inductor's mode (``default``, ``reduce-overhead``, ``max-autotune``,
            ``max-autotune-no-cudagraphs``), for every compiled model alike.
        compile_freezing: inductor's freezing (weights folded in as constants and pre-packed;
            inference only), for every compiled model alike.
    """

    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None
    speed: bool = True
    speed_batches: int = 3
    speed_warmup: int = 1
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str = "default"
    compile_freezing: bool = False

    def __post_init__(self) -> None:
        _check_device(self.device)
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(_DTYPES)}")
        _check_int("eval", "threads", self.threads, 1, none_ok=True)
        _check_int("eval", "speed_batches", self.speed_batches, 1)
        _check_int("eval", "speed_warmup", self.speed_warmup, 0)
        for name in ("speed", "compile", "compile_freezing"):
            _check_bool("eval", name, getattr(self, name))
        _check_backend(self.compile_backend)
        check_compile(self.compile_backend, self.compile_mode, self.compile_freezing)
        if not self.compile and (self.compile_mode != "default" or self.compile_freezing):
            raise ValueError("compile_mode and compile_freezing apply to compiled models: "
                             "set eval.compile true")


_TEACHERS = ("cnn", "none")
_SELECT = ("best", "last")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the ``train`` section): DeiT's small-data recipe for the embedded model.

    The committed zoo checkpoint was trained before the ``val`` split existed; its record
    (``tome_lab/zoo/vit_digits.json``) says how its recipe differs from these defaults.

    Attributes:
        epochs: passes over the ``train`` split.
        batch_size: images per optimisation step.
        lr: peak AdamW learning rate, reached after ``warmup_epochs``, then cosine decay.
        min_lr: the learning rate at the end of the cosine.
        warmup_epochs: linear warm-up length.
        weight_decay: AdamW decoupled weight decay; norms, biases, the position embedding
            and the prefix tokens are never decayed.
        label_smoothing: on the class-token loss (DeiT uses 0.1).
        drop_path: stochastic depth rate, from scratch and when fine-tuning alike.
        augment: random shifts, rotations and scaling of every training batch.
        teacher: ``cnn`` (train a small CNN first, hard-label distillation through the
            distillation token) or ``none``.
        teacher_epochs: epochs of the CNN teacher.
        teacher_lr: peak learning rate of the CNN teacher.
        select: ``best``: keep the weights (student and teacher alike) with the highest
            top-1 on the ``val`` split, checked every ``eval_every`` epochs and after the
            last; ``last``: keep the last. The ``test`` split is never looked at.
        eval_every: ``val`` top-1 every this many epochs (and after the last).
        device: torch device to train on (``cpu``, ``cuda``, ``cuda:1``, ...).
        dtype: ``fp32``, or ``bf16`` / ``fp16`` autocast (fp16 with a gradient scaler).
        channels_last: channels-last memory format for the model and its input.
        compile: ``torch.compile`` the model for the training steps.
        compile_backend: the ``torch.compile`` backend.
        threads: torch CPU threads (None: torch's default).
        max_steps: stop after this many steps (tests and smoke runs); None: full epochs.
        speed_steps: timed steps per setting for the training img/s with and without
            merging (0: skip).
        output: where to write the safetensors checkpoint (a JSON record goes beside it).
        progress: show progress bars.
    """

    epochs: int = 36
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.05
    augment: bool = True
    teacher: str = "cnn"
    teacher_epochs: int = 12
    teacher_lr: float = 3e-3
    select: str = "best"
    eval_every: int = 4
    device: str = "cpu"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    threads: int | None = None
    max_steps: int | None = None
    speed_steps: int = 5
    output: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.teacher not in _TEACHERS:
            raise ValueError(f"unknown teacher {self.teacher!r}; valid: {', '.join(_TEACHERS)}")
        if self.select not in _SELECT:
            raise ValueError(f"unknown select {self.select!r}; valid: {', '.join(_SELECT)}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(_DTYPES)}")
        _check_device(self.device)
        _check_backend(self.compile_backend)
        for name in ("epochs", "batch_size", "eval_every"):
            _check_int("train", name, getattr(self, name), 1)
        for name in ("teacher_epochs", "speed_steps"):
            _check_int("train", name, getattr(self, name), 0)
        _check_int("train", "max_steps", self.max_steps, 1, none_ok=True)
        _check_int("train", "threads", self.threads, 1, none_ok=True)
        for name in ("augment", "channels_last", "compile", "progress"):
            _check_bool("train", name, getattr(self, name))
        for name in ("lr", "min_lr", "warmup_epochs", "weight_decay", "label_smoothing",
                     "drop_path", "teacher_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"train.{name} must be a number >= 0, got {v!r}")
        if self.lr <= 0 or self.teacher_lr <= 0:
            raise ValueError(f"train.lr and train.teacher_lr must be > 0, got {self.lr!r}, "
                             f"{self.teacher_lr!r}")
        if not 0 <= self.drop_path < 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.drop_path and train.label_smoothing must be in [0, 1), got "
                             f"{self.drop_path!r}, {self.label_smoothing!r}")


@dataclass(frozen=True)
class BenchConfig:
    """The throughput bench's own fields (the ``bench`` section).

    Attributes:
        r: the r values to time (one setting per matching and r).
        matching: matching plug-ins to time, or ``[all]`` for every registered one.
        batch_size: images per timed batch (random input of the model's size).
        channels_last: channels-last memory format for the model and its input.
        memory: also report each setting's peak memory of one forward: on CUDA the peak
            allocated by torch, on the CPU the growth of the peak resident set size of a
            fresh process (one per setting).
        json: write the rows as JSON to this path (``-``: stdout).
        csv: write the rows as CSV to this path.
        progress: show a progress bar.
    """

    r: tuple[int, ...] = (0, 8, 16)
    matching: tuple[str, ...] = ("bipartite",)
    batch_size: int = 32
    channels_last: bool = False
    memory: bool = False
    json: str | None = None
    csv: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from tome_lab.registry import MATCHING

        r = (self.r,) if isinstance(self.r, int) else tuple(self.r)
        if not r or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                            for v in r):
            raise ValueError(f"bench.r must be ints >= 0, got {self.r!r}")
        matching = (self.matching,) if isinstance(self.matching, str) else tuple(self.matching)
        if tuple(matching) == ("all",):
            matching = tuple(m for m in MATCHING.names() if m != "none")
        if not matching:
            raise ValueError("bench.matching is empty; give plug-in names or [all]")
        object.__setattr__(self, "r", r)
        object.__setattr__(self, "matching", tuple(MATCHING.canonical(m) for m in matching))
        _check_int("bench", "batch_size", self.batch_size, 1)
        for name in ("channels_last", "memory", "progress"):
            _check_bool("bench", name, getattr(self, name))


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One point of a sweep, and ``evaluate``'s configuration: a model with a ToMe setting
    evaluated on a dataset.

    The default ToMe setting is r=4 because the default model is the embedded ``vit_digits``
    (66 tokens, 12 blocks): r=4 merges 48 of them, as r=16 merges 192 of DeiT's 197.

    Attributes:
        model: which network.
        data: which images (the ``test`` split by default).
        tome: how to merge tokens.
        eval: where and how to run and time.
        seed: seeds torch (random weights, a random partition or matcher) and the loader.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tome: ToMeConfig = field(default_factory=lambda: ToMeConfig(r=4))
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_seed(self.seed)


@dataclass(frozen=True)
class TrainRunConfig:
    """``train``'s configuration: the sections of :class:`ExperimentConfig` plus ``train``.

    A sweep point's ``config.yaml`` loads unchanged: its model and ToMe sections say what to
    train and how to merge while training, its data section which dataset (training uses its
    ``train`` split, choices use ``val``, the final numbers come from ``data.split``), its
    eval section how the trained model is finally evaluated.

    Attributes:
        model: the network; ``checkpoint`` (or ``pretrained``) fine-tunes from weights,
            otherwise training starts from random weights.
        data: the dataset; ``split`` is where the final numbers come from (``test``).
        tome: merging while training (``r=0``: off) and in the final evaluation.
        eval: how the trained model is finally evaluated.
        train: the training recipe and where it runs.
        seed: seeds weights, shuffling, augmentation and dropout.
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig(pretrained=False))
    data: DataConfig = field(default_factory=DataConfig)
    tome: ToMeConfig = field(default_factory=lambda: ToMeConfig(r=0))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(speed=False))
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_seed(self.seed)
        if self.data.split == "train":
            raise ValueError("data.split is where a training run's final numbers come from: "
                             "'test' (or 'val'), not the 'train' split it learns from")


@dataclass(frozen=True)
class BenchRunConfig:
    """``bench``'s configuration: a model, ToMe knobs, how to run, and the settings to time.

    Every setting is ``tome`` with the setting's ``matching`` and ``r`` (from ``bench``), so
    ``--tome.prop_attn false`` or a plug-in option applies to all of them.

    Attributes:
        model: the network (random weights by default: speed does not depend on them).
        tome: ToMe knobs shared by every setting (``r`` and ``matching`` come from ``bench``).
        eval: device, dtype, threads, timed and warm-up batches, compile.
        bench: the settings to time and where to write the rows.
    """

    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="deit_small_patch16_224", pretrained=False))
    tome: ToMeConfig = field(default_factory=lambda: ToMeConfig(r=0))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(speed_batches=5,
                                                                speed_warmup=2))
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        if self.tome.r != 0 or self.tome.matching != "bipartite":
            raise ValueError("the bench times the r values of bench.r and the plug-ins of "
                             "bench.matching; give them there, not in tome.r / tome.matching")


# --------------------------------------------------------------------------- plain data, hash

C = TypeVar("C")


def to_dict(cfg: Any) -> Any:
    """A configuration as plain YAML/JSON-able data (dataclasses and mappings to dicts,
    tuples to lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Builds (and so validates) a configuration ``cls`` from :func:`to_dict` data.

    Missing fields take their defaults; a section is built recursively.

    Raises:
        ValueError: an unknown field (the valid ones are named), or a value the
            configuration classes reject.
    """
    owner = cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{owner} takes a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    extra = sorted(set(data) - set(known))
    if extra:
        raise ValueError(f"unknown {owner} field(s) {extra}; valid: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value if value is not None else {})
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # e.g. a section given a scalar
        raise ValueError(f"{owner}: {err}") from None


def _hash_data(cfg: Any) -> Any:
    """:func:`to_dict` without the fields marked ``metadata={"hash": "omit_default"}`` while
    they hold their default: a field added later leaves earlier configurations' hashes (and
    the result folders named by them) as they were."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: _hash_data(getattr(cfg, f.name)) for f in fields(cfg)
                if not (f.metadata.get("hash") == "omit_default"
                        and getattr(cfg, f.name) == f.default)}
    return to_dict(cfg)


def config_hash(cfg: Any) -> str:
    """A short, stable hash of a resolved configuration (12 hex digits)."""
    text = json.dumps(_hash_data(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
