"""The workers: processes that work on one study together, through the launchers' executors.

``inline`` runs one worker in this process; ``local`` and ``slurm`` submit one job per worker
with the executors of :mod:`tome_lab.launch` (the same settings as a sweep's points).
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from tome_lab.config import ExperimentConfig, from_dict
from tome_lab.launch import local_executor, resolve_fn, slurm_executor
from tome_lab.search.config import PointFn, SearchConfig, _plain
from tome_lab.search.space import model_spec
from tome_lab.search.study import (
    _exp_dict,
    _quiet_optuna,
    _sampler,
    budget_used,
    fail_stale,
    open_storage,
    storage_spec,
)
from tome_lab.search.trials import run_trial, write_trial_record


def run_worker(exp: ExperimentConfig, scfg: SearchConfig, worker: int = 0,
               fn: PointFn | None = None) -> int:
    """Works on the study until ``scfg.trials`` trials are used in total; returns how many ran.

    Several workers (processes, hosts) can run this at once on one storage.
    """
    import optuna

    _quiet_optuna()
    fn = resolve_fn(scfg.fn) if fn is None else fn
    spec = model_spec(exp)
    name = scfg.study_name(exp)
    study = optuna.load_study(study_name=name, storage=open_storage(storage_spec(scfg, name)),
                              sampler=_sampler(scfg, worker))
    for t in study.get_trials(deepcopy=False):  # a worker killed between tell and write
        write_trial_record(exp, scfg, study, spec, t)
    ran = 0
    while True:
        fail_stale(study, scfg)
        t = run_trial(study, exp, scfg, spec, fn)
        if t is None:
            return ran
        ran += 1
        _progress(study, scfg, t, worker)


def _progress(study: Any, scfg: SearchConfig, t: Any, worker: int) -> None:
    vals = " ".join(f"{o}={v:.4g}" for o, v in zip(scfg.objectives, t.values or [], strict=False))
    print(f"[worker {worker}] trial {t.number} {t.state.name} {vals} "
          f"({budget_used(study)}/{scfg.trials})", file=sys.stderr, flush=True)


def _worker_job_fn(exp_d: dict[str, Any], scfg_d: dict[str, Any], worker: int) -> int:
    return run_worker(from_dict(ExperimentConfig, exp_d), from_dict(SearchConfig, scfg_d),
                      worker)


def _worker_job() -> Any:
    """A submitit job running one worker; a timed-out or pre-empted job requeues itself
    (submitit's ``Checkpointable``) and carries on with the study."""
    import submitit

    class WorkerJob(submitit.helpers.Checkpointable):
        def __call__(self, exp_d: dict[str, Any], scfg_d: dict[str, Any], worker: int) -> int:
            return _worker_job_fn(exp_d, scfg_d, worker)

    return WorkerJob()


def run_workers(exp: ExperimentConfig, scfg: SearchConfig, launcher: Any = None) -> int:
    """Runs ``scfg.workers`` workers on the study and waits for them.

    ``inline`` (or no launcher) runs one worker in this process; ``local`` starts one
    process per worker with submitit's local executor; ``slurm`` submits one job array of
    ``scfg.workers`` jobs (settings from the :class:`tome_lab.launch.LaunchConfig`).

    Returns:
        The trials the workers ran.

    Raises:
        ValueError: several workers with the inline launcher.
        RuntimeError: a worker job failed (its log is named).
    """
    kind = "inline" if launcher is None else launcher.launcher
    if kind == "inline":
        if scfg.workers > 1:
            raise ValueError("several workers need launcher local or slurm")
        return run_worker(exp, scfg)
    name = scfg.study_name(exp)
    logs = Path(launcher.log_dir) if launcher.log_dir else Path(scfg.out) / ".launch" / name
    args = [_exp_dict(exp), _plain({f.name: getattr(scfg, f.name) for f in fields(scfg)})]
    if kind == "local":
        executor = local_executor(launcher, logs)
        jobs = [executor.submit(_worker_job(), *args, w) for w in range(scfg.workers)]
    else:
        executor = slurm_executor(launcher, logs, scfg.workers, name)
        with executor.batch():
            jobs = [executor.submit(_worker_job(), *args, w) for w in range(scfg.workers)]
        print(f"submitted {scfg.workers} worker(s) as Slurm job array "
              f"{jobs[0].job_id.split('_')[0]}", file=sys.stderr)
    if not launcher.wait:
        print(f"workers running; watch with: optuna-dashboard {storage_spec(scfg, name)}; "
              f"re-run the same command to collect the frontier", file=sys.stderr)
        return 0
    ran = 0
    for job in jobs:
        try:
            ran += int(job.result())
        except Exception as err:
            raise RuntimeError(f"search worker job {job.job_id} failed (log: "
                               f"{job.paths.stderr}): {err}") from None
    return ran
