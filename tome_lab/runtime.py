"""Running and timing models: the one autocast helper and the one interleaved timer.

Every command that times models (``bench``, ``evaluate``, ``train``) goes through
:func:`interleaved_times`: after ``warmup`` untimed calls of each, every repeat calls each
function once in turn, so drift in a shared machine's speed hits all alike; figures are the
median over repeats (the ToMe paper's throughput is also a ratio taken on one machine).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                         "fp16": torch.float16}

K = TypeVar("K")


def autocast(device: torch.device | str, dtype: str) -> contextlib.AbstractContextManager:
    """The context that runs a forward in ``dtype`` (``fp32``: none; else autocast).

    Raises:
        ValueError: an unknown dtype name.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


def sync(device: torch.device | str) -> None:
    """Waits for queued work on ``device`` (CUDA runs asynchronously; the CPU does not)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Compiled graphs dynamo may keep per code object while a module compiled here runs. Every
# timm ViT shares one ``forward`` code object, so its default (8) would let the ninth distinct
# model or input shape in a process (a bench over many settings, a batch-size table) fall
# back to eager Python with only a log warning, or fail under ``fullgraph=True``. 1024: far
# above any sweep run in one process (settings x batch shapes), while still a bound.
_RECOMPILE_LIMIT = 1024


def compile_model(model: nn.Module, backend: str = "inductor", mode: str = "default",
                  freezing: bool = False, fullgraph: bool = False) -> nn.Module:
    """``torch.compile(model)`` with ``backend``; the compiled module shares the weights.

    ``dynamic=False``: a new input shape (a last, smaller batch; the timing batch) compiles a
    graph of its own. With dynamic shapes, tracing token merging's gathers symbolically can
    take longer than the whole evaluation. Up to 1024 models and shapes a process compiles
    this way each get their own graphs (dynamo's per-function limit is raised to that around
    the calls of these modules only). The returned module only calls the compiled one: reach
    the model's attributes through the original module.

    Args:
        model: the module to compile.
        backend: a ``torch.compile`` backend.
        mode: inductor's mode (``default``, ``reduce-overhead``, ``max-autotune``,
            ``max-autotune-no-cudagraphs``); ``max-autotune`` times candidate kernels for
            every matrix product shape, which on a CPU can choose inductor's own GEMM
            templates over oneDNN / MKL (minutes of compilation).
        freezing: inductor's freezing, for inference only: graphs traced without autograd
            (``torch.no_grad`` / ``inference_mode``) fold the weights in as constants and
            pre-pack them for the matrix-product kernels. Changing the weights afterwards
            is not seen by the compiled module.
        fullgraph: fail on any graph break instead of falling back to Python.

    Raises:
        ValueError: an unknown mode, or a mode / freezing asked of another backend.
    """
    from tome_lab.config import check_compile

    check_compile(backend, mode, freezing)
    compiled = torch.compile(model, backend=backend, dynamic=False, fullgraph=fullgraph,
                             mode=None if mode == "default" else mode)
    return _CompiledCall(compiled, freezing)


class _CompiledCall(nn.Module):
    """Calls a compiled module with the compiler settings it needs switched on.

    Dynamo reads them from the global config while it traces (on the first call, and on any
    recompilation): the recompilation limit, and inductor's ``freezing``, which makes it
    treat the weights as constants (``torch.compile(options=...)`` reaches inductor only,
    too late for that). They are set around every call instead of for the whole process.
    """

    def __init__(self, compiled: nn.Module, freezing: bool = False) -> None:
        super().__init__()
        self.compiled = compiled
        self.freezing = freezing

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config

        freezing = inductor_config.patch(freezing=True) if self.freezing \
            else contextlib.nullcontext()  # a process-wide freezing setting stays as it is
        with dynamo_config.patch(recompile_limit=_RECOMPILE_LIMIT,
                                 accumulated_recompile_limit=_RECOMPILE_LIMIT), freezing:
            return self.compiled(*args, **kwargs)


def interleaved_times(fns: Mapping[K, Callable[[], Any]], repeats: int, warmup: int = 1,
                      device: torch.device | str = "cpu",
                      on_step: Callable[[], None] | None = None,
                      calls: int = 1) -> dict[K, list[float]]:
    """Seconds per call of each function, timed interleaved, round by round.

    Args:
        fns: name -> a function doing one timed unit of work (a forward, a training step).
        repeats: timed rounds per function.
        warmup: untimed rounds per function first (allocator, kernels, compilation).
        device: synchronised around every round, so CUDA work is timed to its end.
        on_step: called after every round (e.g. a progress bar's update).
        calls: calls of the function in each round (for work too short to time alone); the
            round's time is divided by it.

    Returns:
        name -> ``repeats`` durations per call, in seconds, in round order.

    Raises:
        ValueError: ``repeats < 1``, ``warmup < 0`` or ``calls < 1``.
    """
    if repeats < 1 or warmup < 0 or calls < 1:
        raise ValueError(f"repeats and calls must be >= 1 and warmup >= 0, got {repeats}, "
                         f"{calls}, {warmup}")
    times: dict[K, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            if i >= warmup:
                times[k].append((time.perf_counter() - t0) / calls)
            if on_step is not None:
                on_step()
    return times


def throughput(times: Mapping[K, list[float]], batch: int, base: K) -> dict[K, dict[str, float]]:
    """img/s (median over repeats) and speed-up over ``base`` for each timed function.

    Args:
        times: the output of :func:`interleaved_times`.
        batch: images per call.
        base: the key the speed-ups are relative to.
    """
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: {"img_per_s": batch / t, "speedup": med[base] / t} for k, t in med.items()}


def ratio_quartiles(times: list[float], ref: list[float]) -> tuple[float, float, float]:
    """Speed-up over ``ref`` call by call, as (first quartile, median, third quartile).

    Calls adjacent in :func:`interleaved_times` share the machine's state, so a slow spell
    slows both; the spread of these ratios shows how far one reading can be trusted.

    Args:
        times: one function's durations from :func:`interleaved_times`.
        ref: the reference function's durations from the same call.
    """
    ratios = [t_ref / t for t, t_ref in zip(times, ref, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, med, q3
