"""One trial: ask the study, evaluate the schedule, tell the result, write its record.

One record per finished trial in the results store (``<out>/<study>/trial-NNNNN/``, read by
:func:`tome_lab.results.load`), built by :func:`tome_lab.results.make_record` as the
launchers build theirs.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tome_lab import results
from tome_lab.config import ExperimentConfig, to_dict
from tome_lab.flops import ViTSpec
from tome_lab.search.config import PointFn, SearchConfig, _plain
from tome_lab.search.space import (
    decode,
    effective,
    param_name,
    suggest_schedule,
    trial_config,
    trial_gflops,
)
from tome_lab.search.study import (
    _HEARTBEAT,
    _ask_lock,
    _Heartbeat,
    _heartbeat_value,
    budget_used,
    is_retried,
)


def _objective_values(scfg: SearchConfig, metrics: Mapping[str, Any]) -> list[float]:
    values = []
    for o in scfg.objectives:
        v = metrics.get(o)
        if not isinstance(v, (int, float)) or math.isnan(v):
            raise ValueError(f"objective {o!r} is {v!r} in the trial's metrics (img_per_s "
                             f"needs eval.speed on)")
        values.append(float(v))
    return values


def run_trial(study: Any, exp: ExperimentConfig, scfg: SearchConfig, spec: ViTSpec,
              fn: PointFn) -> Any:
    """Asks the study for one trial unless the budget is spent; evaluates, tells, records it.

    Returns:
        The finished ``FrozenTrial``, or None when ``scfg.trials`` trials are used.
    """
    from optuna.trial import TrialState

    storage = study._storage
    with _ask_lock(study):
        if budget_used(study) >= scfg.trials:
            return None
        trial = study.ask()
        storage.set_trial_system_attr(trial._trial_id, _HEARTBEAT, _heartbeat_value())
    with _Heartbeat(storage, trial._trial_id, scfg.heartbeat_s):
        r = suggest_schedule(trial, spec)
        knobs = {k: trial.suggest_categorical(k, list(c)) for k, c in scfg.knobs.items()}
        r_eff = effective(spec, r)
        cfg = trial_config(exp, r_eff, knobs, scfg.split)
        gflops = trial_gflops(spec, cfg)
        if scfg.gflops_budget is not None:
            trial.set_constraint("gflops", gflops - scfg.gflops_budget)
        # the record carries what ran, here, not a configuration rebuilt later
        trial.set_user_attr("config", _plain(to_dict(cfg)))
        trial.set_user_attr("env", _plain(results.environment(cfg.eval.device,
                                                              cfg.eval.dtype)))
        t0 = time.perf_counter()
        try:
            out = dict(fn(cfg))
            out["gflops_fvcore"] = out.get("gflops")
            out["gflops"] = gflops
            values = _objective_values(scfg, out)
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            trial.set_user_attr("traceback", traceback.format_exc())
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr("metrics", _plain(_jsonable_metrics(out)))
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
            study.tell(trial, values)
    frozen = storage.get_trial(trial._trial_id)
    write_trial_record(exp, scfg, study, spec, frozen)
    return frozen


def _jsonable_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool, list, type(None)))}


# --------------------------------------------------------------------------- records

def trial_schedule(spec: ViTSpec, trial: Any) -> list[int]:
    """The per-layer r of a finished trial (its parameters, decoded)."""
    return decode(spec, [trial.params[param_name(i)] for i in range(spec.depth)])


def trial_knobs(scfg: SearchConfig, trial: Any) -> dict[str, Any]:
    """The knob values of a trial."""
    return {k: trial.params[k] for k in scfg.knobs if k in trial.params}


def feasible(trial: Any) -> bool:
    """Whether every constraint of ``trial`` is satisfied (<= 0); True without constraints."""
    return all(v <= 0 for v in trial.constraints.values())


def trials_dir(scfg: SearchConfig, study_name: str) -> Path:
    """The sweep folder of the study's trial records."""
    return Path(scfg.out) / study_name


def write_trial_record(exp: ExperimentConfig, scfg: SearchConfig, study: Any, spec: ViTSpec,
                       trial: Any) -> Path | None:
    """Writes the result record of a finished trial (once; None if not finished)."""
    from optuna.trial import TrialState

    if trial.state not in (TrialState.COMPLETE, TrialState.FAIL) or is_retried(trial):
        return None
    pdir = trials_dir(scfg, study.study_name) / f"trial-{trial.number:05d}"
    if (pdir / results.RESULT).is_file():
        return pdir
    r = trial_schedule(spec, trial)
    knobs = trial_knobs(scfg, trial)
    cfg = trial_config(exp, r, knobs, scfg.split)
    # What the worker ran (recorded on the trial); rebuilt only for a trial of an older study.
    config = trial.user_attrs.get("config") or to_dict(cfg)
    metrics = dict(trial.user_attrs.get("metrics") or {})
    ok = trial.state == TrialState.COMPLETE
    metrics.update({
        "study": study.study_name, "trial": trial.number, "state": trial.state.name,
        "split": scfg.split, "schedule": r, "baseline": trial.user_attrs.get("baseline"),
        "feasible": feasible(trial), **{f"constraint.{k}": v for k, v in
                                         trial.constraints.items()},
        **({f"objective.{o}": v for o, v in zip(scfg.objectives, trial.values, strict=True)}
           if ok else {}),
        **knobs,
    })
    err = trial.user_attrs.get("error")
    record = results.make_record(
        status="ok" if ok else "failed",
        key=f"{study.study_name}/{trial.number}", name=f"trial-{trial.number:05d}",
        overrides={"tome.r": r, **{f"tome.{k}": v for k, v in knobs.items()}},
        config=config, metrics=metrics,
        error=None if ok else {"type": (err or "Error").split(":")[0], "message": err,
                               "traceback": trial.user_attrs.get("traceback")},
        env=trial.user_attrs.get("env") or results.environment(
            metrics.get("device", cfg.eval.device), metrics.get("dtype", cfg.eval.dtype)),
        started=trial.datetime_start.astimezone().isoformat(timespec="seconds")
        if trial.datetime_start else None,
        finished=trial.datetime_complete.astimezone().isoformat(timespec="seconds")
        if trial.datetime_complete else None,
        seconds=trial.user_attrs.get("seconds"),
    )
    results.write_point(pdir, record)
    return pdir
