"""The launchers: :func:`run` plans a sweep, claims its points and hands them to a backend.

``inline`` runs the points here, one after the other, restoring the torch thread count, the
deterministic-algorithms flag and every RNG after each. ``local`` runs each point in a fresh
process through submitit's local executor, ``parallel`` at a time (without waiting: a detached
process runs that loop). ``slurm`` submits the sweep as one job array through submitit. The
executors (:func:`local_executor`, :func:`slurm_executor`) are also the search's workers'.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tome_lab import results
from tome_lab.launch.claims import (
    CLAIM,
    LAUNCH_DIR,
    LOCK,
    Plan,
    _Progress,
    _write_claim,
    _write_manifest,
    collect,
    plan,
    wait,
)
from tome_lab.launch.config import LaunchConfig
from tome_lab.launch.execution import (
    PointFn,
    PointJob,
    PointLike,
    execute,
    preserved_state,
    resolve_fn,
)


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


def local_executor(cfg: LaunchConfig, log_dir: Path) -> Any:
    """submitit's local executor with ``cfg``'s settings: one fresh process per job, its
    script and logs in ``log_dir/<job id>``; a timed-out job requeues ``max_requeue`` times."""
    import submitit

    executor = submitit.LocalExecutor(folder=Path(log_dir) / "%j",
                                      max_num_timeout=cfg.max_requeue, python=cfg.python)
    executor.update_parameters(timeout_min=cfg.time_min, signal_delay_s=cfg.signal_delay_s,
                               gpus_per_node=cfg.gpus_per_task, setup=list(cfg.setup))
    return executor


def slurm_executor(cfg: LaunchConfig, log_dir: Path, n_jobs: int, name: str) -> Any:
    """submitit's Slurm executor with ``cfg``'s settings (:func:`slurm_parameters`) for one
    array of ``n_jobs`` jobs named ``name``, its scripts and logs in ``log_dir/<job id>``."""
    import submitit

    executor = submitit.SlurmExecutor(folder=Path(log_dir) / "%j",
                                      max_num_timeout=cfg.max_requeue, python=cfg.python)
    executor.update_parameters(**slurm_parameters(cfg, n_jobs, name))
    return executor


def _run_local(points: Sequence[PointLike], the_plan: Plan, idents: list[dict[str, Any]],
               todo: list[int], fn_spec: str, cfg: LaunchConfig, folder: Path,
               progress: bool) -> None:
    if not cfg.wait:
        _detach_local(points, the_plan, idents, todo, fn_spec, cfg, folder)
        return
    executor = local_executor(cfg, _log_dir(cfg, folder))
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
        executor = slurm_executor(cfg, _log_dir(cfg, folder), len(todo), folder.name)
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

