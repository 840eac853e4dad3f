"""Schedule search: Optuna looks for per-layer r schedules on the accuracy / GFLOPs frontier.

The ToMe paper merges the same r in every block (or follows a decreasing schedule). Here every
block gets its own r, and a multi-objective Optuna study (Akiba et al., KDD 2019) searches
them: top-1 up and GFLOPs down by default (img/s optional), optionally with categorical knobs
from the plug-in registries (``matching``, ``prop_attn``, ...) and a FLOP budget.

- **Search space.** Block ``i`` merges ``r_i`` in ``0 .. (N_i - prefix) // 2``, where ``N_i``
  is the number of tokens reaching it given the earlier blocks' r (the engine's clamp, so no
  two parameter values mean the same computation).
- **Objectives.** ``top1`` (percent, maximised) comes from :func:`tome_lab.evaluate.evaluate`
  on ``search.split``; ``gflops`` (minimised) from the analytic count
  :func:`tome_lab.flops.analytic_gflops`, so a trial costs one evaluation; ``img_per_s``
  (maximised) from the evaluator's interleaved timing.
- **Budget.** ``search.gflops_budget`` is an Optuna constraint (``trial.set_constraint``,
  feasible when ``gflops - budget <= 0``), which the samplers handle by constrained
  domination; it is not folded into an objective.
- **Baselines.** Every distinct constant-r schedule and the paper's decreasing schedules are
  enqueued when the study is created, so the study always holds them; they run before the
  sampled trials and do not count against ``search.trials``.
- **Storage.** An Optuna journal file by default (``<out>/<study>.journal``, safe for several
  processes on one file system), or an RDB URL. Re-running the same command resumes the study:
  finished trials are kept, and a trial left RUNNING by a dead worker (its process gone, or its
  heartbeat older than ``search.grace_s``) is marked failed and re-queued with the same
  parameters by Optuna's ``RetryHeartbeatStaleTrialCallback``.
- **Outputs.** One record per finished trial in the results store (``<out>/<study>/``, read by
  :func:`tome_lab.results.load`); the Pareto-optimal schedules and the baselines re-scored on
  ``search.test_split`` (``<out>/<study>-test/``); ``<out>/<study>-pareto.yaml``, an ablation
  file of the Pareto schedules (``python -m tome_lab.ablate --config``) whose ``tome.r`` is a
  plain per-layer list for ``apply_tome(model, r=...)``.

The package, one module per job, each importing only those above it:

- :mod:`~tome_lab.search.config`: :class:`SearchConfig`, the objectives, samplers and knobs.
- :mod:`~tome_lab.search.space`: the per-block parameters, their decoding, the baselines, and a
  schedule's configuration and analytic cost.
- :mod:`~tome_lab.search.study`: storage, pre-flight checks, creating or resuming the study,
  samplers, heartbeats, stale trials and the trial budget.
- :mod:`~tome_lab.search.trials`: one trial (ask, evaluate, tell) and its result record.
- :mod:`~tome_lab.search.workers`: the workers, inline or through the launchers' executors.
- :mod:`~tome_lab.search.frontier`: the Pareto trials, test re-scores, pareto.yaml, the report.
- :mod:`~tome_lab.search.cli`: :func:`search` and ``python -m tome_lab.search``.

Every public name of those modules is importable from ``tome_lab.search`` itself.
"""

from __future__ import annotations

from tome_lab.search.cli import DESCRIPTION, PROG, SearchRunConfig, build_parser, main, search
from tome_lab.search.config import KNOBS, OBJECTIVES, SAMPLERS, PointFn, SearchConfig
from tome_lab.search.frontier import (
    finish,
    format_report,
    hypervolume,
    pareto_trials,
    write_pareto_yaml,
)
from tome_lab.search.space import (
    baselines,
    decode,
    effective,
    encode,
    max_r,
    model_spec,
    param_name,
    steps,
    suggest_schedule,
    trial_config,
    trial_gflops,
)
from tome_lab.search.study import (
    budget_used,
    cheapest_gflops,
    check_storage,
    create_study,
    fail_stale,
    is_retried,
    is_stale,
    open_storage,
    preflight,
    storage_spec,
    study_identity,
)
from tome_lab.search.trials import (
    feasible,
    run_trial,
    trial_knobs,
    trial_schedule,
    trials_dir,
    write_trial_record,
)

# _worker_job_fn: Slurm worker jobs pickled before the split name it here (a requeued one)
from tome_lab.search.workers import _worker_job_fn, run_worker, run_workers  # noqa: F401
from tome_lab.stats import dominates  # the frontier's dominance rule, as before the split

__all__ = [
    "DESCRIPTION", "KNOBS", "OBJECTIVES", "PROG", "SAMPLERS", "PointFn", "SearchConfig",
    "SearchRunConfig", "baselines", "budget_used", "build_parser", "check_storage",
    "cheapest_gflops", "create_study", "decode", "dominates", "effective", "encode",
    "fail_stale", "feasible", "finish", "format_report", "hypervolume", "is_retried",
    "is_stale", "main", "max_r", "model_spec", "open_storage", "param_name", "pareto_trials",
    "preflight", "run_trial", "run_worker", "run_workers", "search", "steps", "storage_spec",
    "study_identity", "suggest_schedule", "trial_config", "trial_gflops", "trial_knobs",
    "trial_schedule", "trials_dir", "write_pareto_yaml", "write_trial_record",
]
