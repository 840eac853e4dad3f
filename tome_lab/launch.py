"""Launchers: run the points of a sweep in this process, in local subprocesses, or on Slurm.

One code path: every launcher runs :func:`execute`, which evaluates one point with the point
function (``module:function``, imported where it runs) and writes that point's folder and
nothing else. Which points run is decided once, on the submitting machine (:func:`plan`):

- a point whose ``result.json`` has the same identity (resolved configuration, point function,
  checkpoint digest) is reused; ``rerun="failed"`` re-runs the failed ones, ``rerun="all"``
  every one;
- a point claimed by a live job (queued or running) is never submitted twice;
- everything else runs.

``inline`` runs the points here, one after the other, restoring the torch thread count, the
deterministic-algorithms flag and every RNG after each. ``local`` runs each point in a fresh
process through submitit's local executor, ``parallel`` at a time. ``slurm`` submits the sweep
as one job array through submitit; a job that reaches its time limit or is pre-empted gets
SIGUSR2 ``signal_delay_s`` before, requeues itself and starts its point again
(:class:`PointJob` is a submitit ``Checkpointable``). The submitter waits with a progress bar
whose counts (done, failed, running, queued) come from the results folder and the job states;
with ``wait=False`` it returns after submitting, and ``python -m tome_lab.launch status FOLDER``
shows the states and the table later.

Bookkeeping in each point folder (besides ``config.yaml`` and ``result.json`` of
:mod:`tome_lab.results`): ``claim.json``, written by the submitter, names the job (launcher, job
id, host, pid, log file) so that a later launch or status can ask whether it still lives. A job
that ended without writing ``result.json`` (killed, out of memory, cancelled, node failure) is
reported failed with its log and runs again on the next launch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from tome_lab import results

LAUNCHERS = ("inline", "local", "slurm")
RERUN = ("failed", "all")
CLAIM = "claim.json"
LOCK = ".launch.lock"  # held while a launch plans and claims its points
MANIFEST = "manifest.json"
LAUNCH_DIR = ".launch"

# squeue states of a job that is still queued or running (it may yet write its result).
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                "SUSPENDED", "STOPPED"}
SLURM_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING",
                 "STAGE_OUT"}


class PointLike(Protocol):
    """What a launcher needs of a point (e.g. :class:`tome_lab.sweep.Point`); picklable."""

    config: Any
    key: str

    @property
    def name(self) -> str: ...

    @property
    def dirname(self) -> str: ...


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class LaunchConfig:
    """Where and how the points of a sweep run.

    Attributes:
        launcher: ``inline`` (this process), ``local`` (submitit's local executor: one fresh
            process per point) or ``slurm`` (one submitit job array).
        parallel: points running at once (``local``: processes; ``slurm``: the array's
            ``%parallel`` throttle).
        partition: Slurm partition; None: the cluster's default.
        cpus_per_task: CPUs per point.
        gpus_per_task: GPUs per point (Slurm ``--gpus-per-task``).
        mem_gb: memory per point in GB; None: the cluster's default.
        time_min: time limit per point in minutes (Slurm rounds up to whole minutes).
        account: Slurm account.
        qos: Slurm quality of service.
        constraint: Slurm node constraint (e.g. ``a100``).
        sbatch: extra sbatch options, name -> value (``{"exclude": "node7"}``; ``true`` for a
            bare flag).
        setup: shell lines run before each job (module loads, environment activation).
        log_dir: submitit's folder of job scripts and logs; None: ``<sweep>/.launch``.
        max_requeue: how many times a timed-out job requeues itself before it fails.
        signal_delay_s: seconds before the time limit at which a job gets SIGUSR2 (checkpoint
            and requeue).
        wait: wait for the jobs with a progress bar; False: submit and return.
        poll_s: seconds between two looks at the job states while waiting.
        python: the Python executable on the compute nodes; None: this one.
    """

    launcher: str = "inline"
    parallel: int = 2
    partition: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem_gb: float | None = None
    time_min: float = 60.0
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch: Mapping[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    log_dir: str | None = None
    max_requeue: int = 3
    signal_delay_s: int = 90
    wait: bool = True
    poll_s: float = 2.0
    python: str | None = None

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got "
                             f"{self.launcher!r}{_did_you_mean(self.launcher, LAUNCHERS)}")
        for name, low in (("parallel", 1), ("cpus_per_task", 1), ("gpus_per_task", 0),
                          ("max_requeue", 0), ("signal_delay_s", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"launch.{name} must be an int >= {low}, got {value!r}")
        for name in ("time_min", "poll_s") + (("mem_gb",) if self.mem_gb is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"launch.{name} must be a number > 0, got {value!r}")
        for name in ("partition", "account", "qos", "constraint", "log_dir", "python"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"launch.{name} must be a non-empty string or null, "
                                 f"got {value!r}")
        if not isinstance(self.sbatch, Mapping):
            raise ValueError(f"launch.sbatch must be a mapping of sbatch options, "
                             f"got {self.sbatch!r}")
        for k, v in self.sbatch.items():
            if not isinstance(k, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", k):
                raise ValueError(f"launch.sbatch: {k!r} is not an sbatch option name "
                                 f"(lowercase, e.g. 'exclude' for --exclude)")
            if not isinstance(v, (str, int, float, bool)):
                raise ValueError(f"launch.sbatch.{k} must be a string, number or true, "
                                 f"got {v!r}")
        setup = (self.setup,) if isinstance(self.setup, str) else tuple(self.setup)
        if not all(isinstance(line, str) for line in setup):
            raise ValueError(f"launch.setup must be a list of shell lines, got {self.setup!r}")
        object.__setattr__(self, "setup", setup)
        object.__setattr__(self, "sbatch", dict(self.sbatch))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LaunchConfig:
        """A LaunchConfig from a mapping, naming unknown keys (with a did-you-mean).

        Raises:
            ValueError: an unknown key or a bad value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            k = unknown[0]
            raise ValueError(f"unknown launch option {k!r}{_did_you_mean(k, names)}; valid: "
                             f"{', '.join(names)}")
        return cls(**dict(d))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LaunchConfig:
        """Reads a launcher YAML file (see ``launch/*.yaml``): a mapping of the fields above.

        Raises:
            ValueError: the file is missing, not a mapping, or holds a bad key or value.
        """
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as err:
            raise ValueError(f"cannot read launcher file {str(p)!r}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ValueError(f"launcher file {str(p)!r} is not valid YAML: {err}") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"launcher file {str(p)!r} must hold a mapping of launch options")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{p}: {err}") from None

    @classmethod
    def parse(cls, launcher: str, **overrides: Any) -> LaunchConfig:
        """``inline``, ``local``, ``slurm`` or a YAML file's path, then field overrides."""
        if launcher in LAUNCHERS:
            base = cls(launcher=launcher)
        elif launcher.endswith((".yaml", ".yml")) or os.sep in launcher:
            base = cls.from_file(launcher)
        else:
            raise ValueError(f"--launcher takes {', '.join(LAUNCHERS)} or a YAML file, got "
                             f"{launcher!r}{_did_you_mean(launcher, LAUNCHERS)}")
        return dataclasses.replace(base, **overrides) if overrides else base


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- one point

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
    record = {
        "schema": results.SCHEMA,
        "status": "failed" if error else "ok",
        "key": point.key,
        "name": point.name,
        "overrides": {k: list(v) if isinstance(v, tuple) else v
                      for k, v in (getattr(point, "overrides", None) or {}).items()},
        "config": config,
        "identity": dict(ident),
        "metrics": metrics,
        "error": error,
        "job": dict(job or {"launcher": "inline"}),
        "env": results.environment(metrics.get("device", getattr(eval_cfg, "device", None)),
                                   metrics.get("dtype", getattr(eval_cfg, "dtype", None))),
        "started": started,
        "finished": results.now(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
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


# --------------------------------------------------------------------------- claims and states

def _write_claim(pdir: Path, claim: Mapping[str, Any]) -> None:
    results.write_json_atomic(pdir / CLAIM, {**claim, "host": socket.gethostname(),
                                             "submitted": results.now()})


def read_claim(pdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``claim.json`` of a point folder, or None."""
    try:
        claim = json.loads((Path(pdir) / CLAIM).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return claim if isinstance(claim, dict) else None


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """squeue's state of each Slurm job or array task in ``job_ids`` that it still knows.

    Array tasks are keyed ``ARRAYID_TASK``; a job squeue has forgotten is absent.
    """
    arrays = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not arrays or shutil.which("squeue") is None:
        return {}
    states: dict[str, str] = {}
    for chunk in range(0, len(arrays), 100):
        ids = ",".join(arrays[chunk:chunk + 100])
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ids],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0 and len(arrays) > 1:  # one forgotten id fails the whole call
            for a in arrays[chunk:chunk + 100]:
                states.update(slurm_states([a]))
            continue
        for line in out.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid:
                states[jid] = state.split()[0] if state else "UNKNOWN"
    return states


def claim_state(claim: Mapping[str, Any] | None, squeue: Mapping[str, str]) -> str | None:
    """``queued``, ``running`` or ``ended`` for a claim; None without a claim.

    A Slurm claim is read from ``squeue``'s states; a local claim is alive while its process
    (on this host) runs; a claim from another host's local launcher counts as ended; a point
    queued by a local launcher that has died counts as unclaimed (it never started).
    """
    if not claim:
        return None
    if claim.get("launcher") == "slurm":
        state = squeue.get(str(claim.get("job_id")))
        if state in SLURM_QUEUED:
            return "queued"
        if state in SLURM_RUNNING:
            return "running"
        return "ended"
    if claim.get("host") != socket.gethostname() or not results.pid_alive(claim.get("pid")):
        # a point whose launcher died before starting it never ran: it is simply not claimed
        return None if claim.get("state") == "queued" else "ended"
    return "queued" if claim.get("state") == "queued" else "running"


def _newer(claim: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether ``claim`` was made after the result ``old`` finished (times as times)."""
    if old is None:
        return True
    submitted, finished = (results.parse_time(claim.get("submitted")),
                           results.parse_time(old.get("finished")))
    return submitted is not None and (finished is None or submitted > finished)


def point_dir(folder: Path, point: PointLike) -> Path:
    """The folder of ``point``: an existing one ending in its hash, else a new one."""
    existing = sorted(folder.glob(f"*-{point.key}"))
    return existing[0] if existing else folder / point.dirname


@dataclass
class Plan:
    """What a launch does with each point (same order as the points).

    Attributes:
        dirs: each point's folder.
        action: ``reuse`` (a finished result), ``live`` (claimed by a live job) or ``run``.
        records: the reused records (None for the others).
        notes: messages for the user (results reused from another code revision, ...).
    """

    dirs: list[Path]
    action: list[str]
    records: list[dict[str, Any] | None]
    notes: list[str]


def plan(points: Sequence[PointLike], folder: str | os.PathLike[str], fn_spec: str | PointFn,
         rerun: str | None = None, owner: int | None = None
         ) -> tuple[Plan, list[dict[str, Any]]]:
    """Decides which points run, which are reused and which a live job already holds.

    Args:
        points: the sweep's points.
        folder: the sweep folder.
        fn_spec: the point function, ``module:function``.
        rerun: None (reuse finished results, ok or failed), ``"failed"`` (run failed ones
            again) or ``"all"`` (run every point not held by a live job).
        owner: a process whose claims count as this one's (the launch that started a
            detached driver).

    Returns:
        The plan and each point's identity.

    Raises:
        ValueError: a bad ``rerun``.
    """
    if rerun is not None and rerun not in RERUN:
        raise ValueError(f"rerun must be one of {', '.join(RERUN)} or None, got {rerun!r}")
    folder = Path(folder)
    own = {os.getpid(), owner}
    digests: dict[Path, str | None] = {}
    idents = [identity(p, fn_spec, digests) for p in points]
    dirs = [point_dir(folder, p) for p in points]
    claims = [read_claim(d) for d in dirs]
    squeue = slurm_states([str(c.get("job_id")) for c in claims
                           if c and c.get("launcher") == "slurm"])
    rev = results.code_revision()
    out = Plan(dirs, [], [], [])
    other_rev = 0
    for pdir, ident, claim in zip(dirs, idents, claims, strict=True):
        old = results.read_result(pdir)
        if claim and claim.get("launcher") != "slurm" and claim.get("pid") in own:
            claim = None  # held by this very process (an earlier launch in it) or its owner
        if claim_state(claim, squeue) in ("queued", "running") and _newer(claim, old):
            out.action.append("live")
            out.records.append(None)
            continue
        same = old is not None and results.same_identity(old, ident)
        keep = same and (rerun is None or (rerun == "failed" and old.get("status") == "ok"))
        if keep:
            out.action.append("reuse")
            out.records.append(old)
            env = old.get("env") or {}
            old_rev = env.get("git_rev") and env["git_rev"] + ("+dirty" if env.get("git_dirty")
                                                                else "")
            other_rev += old_rev != rev
        else:
            out.action.append("run")
            out.records.append(None)
    if other_rev:
        out.notes.append(f"reusing {other_rev} result(s) made at another code revision than "
                         f"the current {rev or 'unknown'} (see env.git_rev in each "
                         f"result.json; --rerun all to run them again)")
    if out.action.count("live"):
        out.notes.append(f"{out.action.count('live')} point(s) are queued or running in a "
                         f"live job: not submitted again")
    return out, idents


# --------------------------------------------------------------------------- launching

def run(points: Sequence[PointLike], folder: str | os.PathLike[str], fn_spec: str | PointFn,
        cfg: LaunchConfig | None = None, rerun: str | None = None,
        progress: bool = True, owner: int | None = None) -> list[dict[str, Any]]:
    """Runs a sweep with a launcher: the points that need it, each writing its own folder.

    Args:
        points: picklable points with ``config``, ``key``, ``name`` and ``dirname``
            (:class:`tome_lab.sweep.Point`).
        folder: the sweep folder; created if missing.
        fn_spec: the point function, ``module:function``, taking ``point.config`` and
            returning flat metrics; ``inline`` also takes the callable itself.
        cfg: the launcher; None: ``inline``.
        rerun: see :func:`plan`.
        progress: show a progress bar on stderr.
        owner: see :func:`plan` (set by the detached local driver).

    Returns:
        One record per point, in order, each with ``"ran"`` (ran in this launch),
        ``"dir"`` (the point's folder) and ``"state"`` (``done``, ``failed``, ``queued`` or
        ``running``: the last two only when ``cfg.wait`` is False). A job that ended without a
        result gives a failed record whose error names the job and its log.

    Raises:
        ValueError: a bad point function, launcher or ``rerun``.
        RuntimeError: Slurm was asked for but ``sbatch`` is missing, or submission failed.
    """
    cfg = cfg or LaunchConfig()
    if not isinstance(fn_spec, str) and cfg.launcher != "inline":
        raise ValueError(f"the {cfg.launcher} launcher imports the point function in a fresh "
                         f"process: give it as 'module:function', not {fn_spec!r}")
    resolve_fn(fn_spec)  # a typo fails here, before anything is submitted
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Planning and claiming under one lock: a second launch of this sweep started meanwhile
    # plans after these claims exist, sees the points held by this live process, and neither
    # runs them again nor touches their folders.
    with results.exclusive(folder / LOCK):
        the_plan, idents = plan(points, folder, fn_spec, rerun, owner)
        todo = [i for i, a in enumerate(the_plan.action) if a == "run"]
        for i in todo:
            _write_claim(the_plan.dirs[i], {"launcher": "pending", "job_id": None,
                                            "pid": os.getpid(), "state": "queued",
                                            "log": None})
    for note in the_plan.notes:
        print(f"note: {note}", file=sys.stderr)
    for i in todo:  # a result to be replaced stays beside, never counted as the new one
        old = the_plan.dirs[i] / results.RESULT
        if old.exists():
            os.replace(old, the_plan.dirs[i] / "result.replaced.json")
    _write_manifest(folder, points, the_plan.dirs, fn_spec)
    if cfg.launcher == "inline":
        _run_inline(points, the_plan, idents, todo, fn_spec, progress)
    elif cfg.launcher == "local":
        _run_local(points, the_plan, idents, todo, str(fn_spec), cfg, folder, progress)
    else:
        _run_slurm(points, the_plan, idents, todo, str(fn_spec), cfg, folder, progress)
    if cfg.launcher != "inline" and cfg.wait:  # also for points held by an earlier launch
        wait(points, the_plan.dirs, cfg.poll_s, progress)
    return collect(points, the_plan.dirs, ran=set(todo))


def _run_inline(points: Sequence[PointLike], the_plan: Plan, idents: list[dict[str, Any]],
                todo: list[int], fn_spec: str | PointFn, progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(todo, desc="sweep", unit="point", disable=not progress, file=sys.stderr)
    for i in bar:
        bar.set_postfix_str(points[i].name[:40])
        with preserved_state():
            execute(points[i], the_plan.dirs[i], fn_spec, idents[i])
        # the claim held the point while this process ran it; its result now says it all
        (the_plan.dirs[i] / CLAIM).unlink(missing_ok=True)
    bar.close()


def _log_dir(cfg: LaunchConfig, folder: Path) -> Path:
    return Path(cfg.log_dir) if cfg.log_dir else folder / LAUNCH_DIR


def _run_local(points: Sequence[PointLike], the_plan: Plan, idents: list[dict[str, Any]],
               todo: list[int], fn_spec: str, cfg: LaunchConfig, folder: Path,
               progress: bool) -> None:
    if not cfg.wait:
        _detach_local(points, the_plan, idents, todo, fn_spec, cfg, folder)
        return
    import submitit

    executor = submitit.LocalExecutor(folder=_log_dir(cfg, folder) / "%j",
                                      max_num_timeout=cfg.max_requeue,
                                      python=cfg.python)
    executor.update_parameters(timeout_min=cfg.time_min, signal_delay_s=cfg.signal_delay_s,
                               gpus_per_node=cfg.gpus_per_task, setup=list(cfg.setup))
    for i in todo:  # queued: held by this process until a slot frees
        _write_claim(the_plan.dirs[i], {"launcher": "local", "job_id": None, "pid": os.getpid(),
                                        "state": "queued", "log": None})
    pending, running = list(todo), {}
    bar = _Progress(points, the_plan.dirs, progress)
    try:
        while pending or running:
            for i, job in list(running.items()):
                if job.done():
                    del running[i]
            while pending and len(running) < cfg.parallel:
                i = pending.pop(0)
                job = executor.submit(PointJob(points[i], str(the_plan.dirs[i]), fn_spec,
                                               idents[i], "local"))
                _write_claim(the_plan.dirs[i], {
                    "launcher": "local", "job_id": job.job_id, "pid": int(job.job_id),
                    "state": "running", "log": str(job.paths.stderr)})
                running[i] = job
            bar.update()
            if pending or running:
                time.sleep(min(cfg.poll_s, 0.5))
    finally:
        bar.close()


def _detach_local(points: Sequence[PointLike], the_plan: Plan, idents: list[dict[str, Any]],
                  todo: list[int], fn_spec: str, cfg: LaunchConfig, folder: Path) -> None:
    """``local`` without waiting: a detached process runs the waiting loop."""
    import pickle

    log_dir = _log_dir(cfg, folder)
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    spec = log_dir / f"detached-{stamp}-{os.getpid()}.pkl"
    sub = [points[i] for i in todo]
    with open(spec, "wb") as f:
        pickle.dump({"points": sub, "folder": str(folder), "fn": fn_spec, "owner": os.getpid(),
                     "cfg": dataclasses.replace(cfg, wait=True)}, f)
    log = open(log_dir / f"detached-{stamp}.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen([sys.executable, "-m", "tome_lab.launch", "_drive", str(spec)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    for i in todo:
        _write_claim(the_plan.dirs[i], {"launcher": "local", "job_id": None, "pid": proc.pid,
                                        "state": "queued", "log": str(log.name)})
    print(f"submitted {len(todo)} point(s) to a detached local launcher (pid {proc.pid}, "
          f"log {log.name}); see them with: python -m tome_lab.launch status {folder}",
          file=sys.stderr)


def slurm_parameters(cfg: LaunchConfig, n_points: int, name: str) -> dict[str, Any]:
    """The submitit SlurmExecutor parameters of a LaunchConfig (one array of n points)."""
    params: dict[str, Any] = {
        "job_name": name[:60] or "tome_lab",
        "time": max(1, math.ceil(cfg.time_min)),
        "cpus_per_task": cfg.cpus_per_task,
        "ntasks_per_node": 1,
        "signal_delay_s": cfg.signal_delay_s,
        "array_parallelism": min(cfg.parallel, max(1, n_points)),
    }
    if cfg.gpus_per_task:
        params["gpus_per_task"] = cfg.gpus_per_task
    for k in ("partition", "account", "qos", "constraint"):
        if getattr(cfg, k):
            params[k] = getattr(cfg, k)
    if cfg.mem_gb is not None:
        params["mem"] = f"{int(math.ceil(cfg.mem_gb * 1024))}MB"
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    extra = {k.replace("_", "-"): v for k, v in cfg.sbatch.items()}
    if extra:
        params["additional_parameters"] = extra
    return params


def _run_slurm(points: Sequence[PointLike], the_plan: Plan, idents: list[dict[str, Any]],
               todo: list[int], fn_spec: str, cfg: LaunchConfig, folder: Path,
               progress: bool) -> None:
    if shutil.which("sbatch") is None:
        raise RuntimeError("--launcher slurm needs Slurm's sbatch on PATH (this machine has "
                           "none); for a one-node test cluster run launch/slurm-local.sh as "
                           "root")
    if todo:
        import submitit

        executor = submitit.SlurmExecutor(folder=_log_dir(cfg, folder) / "%j",
                                          max_num_timeout=cfg.max_requeue, python=cfg.python)
        executor.update_parameters(**slurm_parameters(cfg, len(todo), folder.name))
        jobs = [PointJob(points[i], str(the_plan.dirs[i]), fn_spec, idents[i], "slurm")
                for i in todo]
        try:
            submitted = executor.submit_array(jobs) if len(jobs) > 1 else [
                executor.submit(jobs[0])]
        except Exception as err:
            raise RuntimeError(f"sbatch failed: {err}") from err
        for i, job in zip(todo, submitted, strict=True):
            _write_claim(the_plan.dirs[i], {"launcher": "slurm", "job_id": job.job_id,
                                            "log": str(job.paths.stderr)})
        array = submitted[0].job_id.split("_")[0]
        print(f"submitted {len(todo)} point(s) as Slurm job array {array}", file=sys.stderr)
        if not cfg.wait:
            print(f"status: python -m tome_lab.launch status {folder}   "
                  f"(cancel: scancel {array})", file=sys.stderr)


# --------------------------------------------------------------------------- waiting, status

def states(dirs: Sequence[Path]) -> list[str]:
    """Each point folder's state: ``done``, ``failed``, ``running``, ``queued`` or ``new``.

    ``failed`` covers a failed result and a claim whose job ended without a result.
    """
    claims = [read_claim(d) for d in dirs]
    squeue = slurm_states([str(c.get("job_id")) for c in claims
                           if c and c.get("launcher") == "slurm"])
    out = []
    for d, claim in zip(dirs, claims, strict=True):
        rec = results.read_result(d)
        live = claim_state(claim, squeue)
        if rec is not None:
            out.append("done" if rec.get("status") == "ok" else "failed")
        elif live in ("queued", "running"):
            out.append(live)
        elif live == "ended":
            out.append("failed")
        else:
            out.append("new")
    return out


class _Progress:
    """A tqdm bar over finished points with the done / failed / running / queued counts."""

    def __init__(self, points: Sequence[PointLike], dirs: Sequence[Path], enabled: bool):
        from tqdm.auto import tqdm

        self.dirs = list(dirs)
        self.bar = tqdm(total=len(points), desc="sweep", unit="point", disable=not enabled,
                        file=sys.stderr)
        self.last: list[str] = []

    def update(self) -> list[str]:
        now = states(self.dirs)
        if now != self.last:  # redraw on a change only: a log file gets one line per change
            counts = {s: now.count(s) for s in ("done", "failed", "running", "queued")}
            self.bar.n = counts["done"] + counts["failed"]
            self.bar.set_postfix(counts, refresh=True)
        self.last = now
        return now

    def close(self) -> None:
        self.bar.close()


def wait(points: Sequence[PointLike], dirs: Sequence[Path], poll_s: float = 2.0,
         progress: bool = True) -> list[str]:
    """Waits until no point is queued or running; returns the final states."""
    bar = _Progress(points, dirs, progress)
    try:
        while True:
            now = bar.update()
            if not any(s in ("queued", "running") for s in now):
                return now
            time.sleep(poll_s)
    finally:
        bar.close()


def collect(points: Sequence[PointLike], dirs: Sequence[Path],
            ran: set[int] | None = None) -> list[dict[str, Any]]:
    """The record of each point, in order (see :func:`run` for the added keys)."""
    out = []
    for i, (point, d, state) in enumerate(zip(points, dirs, states(dirs), strict=True)):
        rec = results.read_result(d)
        if rec is None:
            claim = read_claim(d) or {}
            rec = {"status": "failed" if state == "failed" else state, "key": point.key,
                   "name": point.name, "metrics": {}, "job": claim}
            if state == "failed":
                rec["error"] = {"type": "JobDied", "message": (
                    f"{claim.get('launcher')} job {claim.get('job_id')} ended without a result; "
                    f"log: {claim.get('log')}")}
        ran_now = ran is not None and i in ran
        out.append({**rec, "ran": ran_now, "dir": str(d), "state": state})
    return out


def _write_manifest(folder: Path, points: Sequence[PointLike], dirs: Sequence[Path],
                    fn_spec: str | PointFn) -> None:
    results.write_json_atomic(folder / LAUNCH_DIR / MANIFEST, {
        "fn": fn_name(fn_spec), "written": results.now(),
        "points": [{"name": p.name, "key": p.key, "dir": d.name}
                   for p, d in zip(points, dirs, strict=True)]})


def status(folder: str | os.PathLike[str], do_wait: bool = False,
           poll_s: float = 2.0) -> tuple[list[dict[str, Any]], int]:
    """The state and record of every point of the last launch into ``folder``.

    Returns:
        The records (as :func:`collect`) and an exit status: 0 every point done, 1 some
        failed (none queued or running), 3 some still queued or running.

    Raises:
        FileNotFoundError: ``folder`` holds no launch manifest.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / LAUNCH_DIR / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise FileNotFoundError(f"{folder} holds no launch (no {LAUNCH_DIR}/{MANIFEST})") from None
    points = [_ManifestPoint(p["name"], p["key"], p["dir"]) for p in manifest["points"]]
    dirs = [folder / p.dirname for p in points]
    if do_wait:
        wait(points, dirs, poll_s)
    records = collect(points, dirs)
    now = [r["state"] for r in records]
    if any(s in ("queued", "running", "new") for s in now):
        return records, 3
    return records, 1 if "failed" in now else 0


@dataclass(frozen=True)
class _ManifestPoint:
    name: str
    key: str
    dirname: str
    config: Any = None


def format_status(records: Sequence[Mapping[str, Any]]) -> str:
    """One line per point: state, name, top-1 (when there is one), and a failure's reason."""
    lines = []
    for r in records:
        metrics = r.get("metrics") or {}
        top1 = metrics.get("top1")
        extra = f"  top-1 {top1:.2f}" if isinstance(top1, (int, float)) else ""
        err = r.get("error")
        if r["state"] == "failed" and isinstance(err, Mapping):
            extra += f"  {err.get('type')}: {str(err.get('message')).splitlines()[0][:160]}"
        lines.append(f"{r['state']:>8}  {r.get('name')}{extra}")
    counts = {s: sum(r["state"] == s for r in records)
              for s in ("done", "failed", "running", "queued")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tome_lab.launch status FOLDER [--wait]``: states and table of a launch.

    Exit status: 0 every point done, 1 some failed, 3 some still queued or running, 2 a bad
    command line or a folder without a launch.
    """
    parser = argparse.ArgumentParser(prog="python -m tome_lab.launch",
                                     description="Status of a launched sweep.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="the state of every point of a launched sweep folder")
    st.add_argument("folder")
    st.add_argument("--wait", action="store_true", help="wait until no point is queued or "
                                                         "running, with a progress bar")
    drive = sub.add_parser("_drive", help=argparse.SUPPRESS)
    drive.add_argument("spec")
    args = parser.parse_args(argv)
    if args.cmd == "_drive":
        import pickle

        with open(args.spec, "rb") as f:
            spec = pickle.load(f)
        run(spec["points"], spec["folder"], spec["fn"], spec["cfg"], progress=False,
            owner=spec.get("owner"))
        return 0
    try:
        records, code = status(args.folder, do_wait=args.wait)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_status(records))
    done = [r for r in records if r.get("status") in ("ok", "failed") and "config" in r]
    if done:
        import pandas as pd

        frame = pd.DataFrame([results.record_row(r, Path(r["dir"])) for r in done])
        results.write_csv(frame, Path(args.folder) / "results.csv")
    return code


if __name__ == "__main__":
    sys.exit(main())
