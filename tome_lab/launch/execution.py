"""One point: its point function, its identity, and :func:`execute`, which every launcher runs.

:func:`execute` evaluates one point with the point function (``module:function``, imported
where it runs) and writes that point's folder and nothing else; :class:`PointJob` is the same
call as a submitit job (``local`` and ``slurm``), which requeues itself on SIGUSR2.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from tome_lab import results


class PointLike(Protocol):
    """What a launcher needs of a point (e.g. :class:`tome_lab.sweep.Point`); picklable."""

    config: Any
    key: str

    @property
    def name(self) -> str: ...

    @property
    def dirname(self) -> str: ...


PointFn = Callable[[Any], Mapping[str, Any]]


def fn_name(fn: str | PointFn) -> str:
    """The ``module:function`` name of a point function (recorded in each result's identity)."""
    if isinstance(fn, str):
        return fn
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}:{qual}"


def resolve_fn(spec: str | PointFn) -> PointFn:
    """Imports a point function from ``module:function`` (a callable is returned as is).

    Raises:
        ValueError: the spec is malformed, or the module or function cannot be found.
    """
    if callable(spec):
        return spec
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"the point function is given as module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load point function {spec!r}: {err}") from None
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn


def checkpoint_of(config: Any) -> Path | None:
    """The weights file a configuration loads, whatever the model: asked of the model factory
    (:func:`tome_lab.models.weights_file`); None when there is none (random weights, or
    pretrained weights that are not on this machine)."""
    model = getattr(config, "model", None)
    if model is None:
        return None
    from tome_lab.models import weights_file

    return weights_file(model)


def identity(point: PointLike, fn_spec: str | PointFn,
             _digests: dict[Path, str | None] | None = None) -> dict[str, Any]:
    """What decides a point's result: configuration hash, point function, checkpoint digest,
    and the generator version of a procedural dataset.

    Args:
        point: the point.
        fn_spec: its point function, ``module:function``.
        _digests: a cache of file digests shared across the points of a sweep.

    Returns:
        ``{"config": key, "fn": spec, "checkpoint": {"path", "sha256"} | None}``, plus
        ``"data": {"name", "version"}`` when the dataset declares a generator version
        (:func:`tome_lab.data.generator_version`).
    """
    ckpt = checkpoint_of(point.config)
    entry = None
    if ckpt is not None:
        cache = {} if _digests is None else _digests
        if ckpt not in cache:
            cache[ckpt] = results.file_digest(ckpt)
        entry = {"path": str(ckpt), "sha256": cache[ckpt]}
    ident: dict[str, Any] = {"config": point.key, "fn": fn_name(fn_spec), "checkpoint": entry}
    data_name = getattr(getattr(point.config, "data", None), "name", None)
    if data_name:
        from tome_lab.data import data_version

        version = data_version(data_name)
        if version is not None:
            ident["data"] = {"name": data_name, "version": version}
    return ident


def execute(point: PointLike, pdir: str | os.PathLike[str], fn_spec: str | PointFn,
            ident: Mapping[str, Any], job: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Runs one point and writes its folder: ``config.yaml`` first, ``result.json`` last.

    Anything that goes wrong, loading the function, running it or writing its result, becomes
    this point's failed record; if even that cannot be written the error propagates (the job
    then fails, and the launcher reports its log).

    Args:
        point: the point.
        pdir: its folder.
        fn_spec: the point function, ``module:function`` (or, in this process, a callable).
        ident: the point's :func:`identity`.
        job: where it runs (launcher, job id), recorded as is.

    Returns:
        The record written to ``result.json``.
    """
    from tome_lab.sweep import config_to_dict

    pdir = Path(pdir)
    pdir.mkdir(parents=True, exist_ok=True)
    results.remove_stale_temps(pdir)
    config = config_to_dict(point.config)
    results.write_text_atomic(pdir / results.CONFIG, yaml.safe_dump(config, sort_keys=False))
    started, t0 = results.now(), time.perf_counter()
    metrics: dict[str, Any] = {}
    error = None
    try:
        out = resolve_fn(fn_spec)(point.config)
        if not isinstance(out, Mapping):
            raise TypeError(f"the point function returned {type(out).__name__}, not a mapping")
        metrics = dict(out)
    except Exception as err:  # a failing point is recorded; the sweep goes on
        error = _error(err)
    eval_cfg = getattr(point.config, "eval", None)
    record = results.make_record(
        status="failed" if error else "ok", key=point.key, name=point.name,
        overrides=getattr(point, "overrides", None) or {}, config=config,
        identity=dict(ident), metrics=metrics, error=error,
        job=dict(job or {"launcher": "inline"}),
        env=results.environment(metrics.get("device", getattr(eval_cfg, "device", None)),
                                metrics.get("dtype", getattr(eval_cfg, "dtype", None))),
        started=started, finished=results.now(), seconds=round(time.perf_counter() - t0, 3))
    try:
        results.write_json_atomic(pdir / results.RESULT, record)
    except Exception as err:  # e.g. metrics that JSON cannot hold: record the write failure
        record.update(status="failed", metrics={},
                      error={**_error(err), "message": f"writing result.json failed: {err}"})
        results.write_json_atomic(pdir / results.RESULT, record)
    return record


def _error(err: BaseException) -> dict[str, str]:
    return {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}


@contextlib.contextmanager
def preserved_state() -> Iterator[None]:
    """Restores torch's thread count, deterministic-algorithms flags, cuDNN flags and the
    Python, NumPy and torch (CPU and CUDA) random states when the block ends."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    py_rng, np_rng, torch_rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


class PointJob:
    """The job of one point under ``local`` and ``slurm``: a submitit ``Checkpointable``.

    On SIGUSR2 (time limit near, or pre-emption) submitit calls :meth:`checkpoint`, which
    resubmits the same point (attempt + 1); the point then starts again from its beginning.
    """

    def __init__(self, point: PointLike, pdir: str, fn_spec: str, ident: Mapping[str, Any],
                 launcher: str, attempt: int = 1) -> None:
        self.point, self.pdir, self.fn_spec = point, pdir, fn_spec
        self.ident, self.launcher, self.attempt = dict(ident), launcher, attempt

    def __call__(self) -> str:
        job_id = _current_job_id()
        record = execute(self.point, self.pdir, self.fn_spec, self.ident,
                         {"launcher": self.launcher, "job_id": job_id,
                          "attempt": self.attempt})
        return str(record["status"])

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeues this point as a new attempt (submitit calls it on SIGUSR2)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(PointJob(self.point, self.pdir, self.fn_spec, self.ident,
                                          self.launcher, self.attempt + 1))


def _current_job_id() -> str | None:
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is not None:
        return f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{task}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")

