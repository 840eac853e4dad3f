"""The study and its storage: pre-flight checks, creation or resumption, samplers, workers'
heartbeats, stale trials and the shared trial budget.

An Optuna journal file by default (``<out>/<study>.journal``, safe for several processes on one
file system), or an RDB URL. Re-running the same command resumes the study: finished trials are
kept, and a trial left RUNNING by a dead worker (its process gone, or its heartbeat older than
``search.grace_s``) is marked failed and re-queued with the same parameters by Optuna's
``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tome_lab import results
from tome_lab.config import ExperimentConfig, to_dict
from tome_lab.flops import ViTSpec
from tome_lab.search.config import SearchConfig, _plain
from tome_lab.search.space import (
    baselines,
    effective,
    encode,
    model_spec,
    param_name,
    trial_config,
    trial_gflops,
)

_HEARTBEAT = "tome_lab:heartbeat"  # trial system attribute: {"host", "pid", "time"}


# --------------------------------------------------------------------------- storage

def storage_spec(scfg: SearchConfig, study: str) -> str:
    """Where the study lives: an RDB URL, or a journal file path."""
    if scfg.storage:
        return scfg.storage
    return str(Path(scfg.out) / f"{study}.journal")


def check_storage(spec: str) -> None:
    """Refuses an RDB URL that Optuna could not open (bad URL, driver not installed) before
    anything is created; journal paths are always usable.

    Raises:
        ValueError: the URL is malformed or names a driver that is not installed.
    """
    if "://" not in spec:
        return
    try:
        from sqlalchemy.engine import make_url

        dialect = make_url(spec).get_dialect()
        load = getattr(dialect, "import_dbapi", None) or dialect.dbapi  # SQLAlchemy 2 / 1.4
        load()  # imports the driver module itself (psycopg2, MySQLdb, ...)
    except ImportError as err:
        raise ValueError(f"search.storage {spec!r} needs a database driver that is not "
                         f"installed ({err}); install it, or leave search.storage empty for "
                         f"a journal file") from None
    except Exception as err:  # sqlalchemy's ArgumentError, NoSuchModuleError, ...
        raise ValueError(f"search.storage {spec!r} is not a database URL Optuna can open "
                         f"({type(err).__name__}: {err}); e.g. sqlite:///study.db, or a "
                         f"journal file path") from None


def cheapest_gflops(exp: ExperimentConfig, scfg: SearchConfig, spec: ViTSpec) -> float:
    """The fewest GFLOPs any trial of the search space can cost: every block merging as much
    as it can (fewest tokens everywhere after), under the cheapest combination of knobs."""
    import itertools

    names = list(scfg.knobs)
    r = effective(spec, [spec.num_tokens] * spec.depth)
    costs = [trial_gflops(spec, trial_config(exp, r, dict(zip(names, combo, strict=True)),
                                             scfg.split))
             for combo in itertools.product(*(scfg.knobs[n] for n in names))]
    return min(costs)


def preflight(exp: ExperimentConfig, scfg: SearchConfig, spec: ViTSpec | None = None) -> None:
    """Refuses bad search input before the study, its journal or its folder exist.

    Raises:
        ValueError: an unusable storage URL, or a GFLOPs budget below the cheapest trial of
            the search space (every trial would be infeasible).
    """
    check_storage(storage_spec(scfg, scfg.study_name(exp)))
    if scfg.gflops_budget is not None:
        spec = model_spec(exp) if spec is None else spec
        low = cheapest_gflops(exp, scfg, spec)
        if scfg.gflops_budget < low:
            raise ValueError(f"search.gflops_budget {scfg.gflops_budget:g} is below the "
                             f"cheapest schedule of the search space ({low:.4g} GFLOPs, every "
                             f"block merging all it can): no trial could be feasible")


def open_storage(spec: str) -> Any:
    """An Optuna storage: ``RDBStorage`` for a URL, a journal file otherwise."""
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def _sampler(scfg: SearchConfig, worker: int) -> Any:
    import optuna

    seed = scfg.seed + 1000 * worker  # distinct streams, so two workers do not propose twins
    if scfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if scfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def create_study(exp: ExperimentConfig, scfg: SearchConfig, spec: ViTSpec | None = None) -> Any:
    """Creates the study, or loads it when it exists (then its identity must match).

    A new study gets the baselines enqueued (``scfg.baselines``) and records its
    configuration as study attributes.

    Raises:
        ValueError: an existing study of that name was made with other settings
            (:func:`study_identity`), named in the message.
    """
    import optuna

    _quiet_optuna()
    spec = model_spec(exp) if spec is None else spec
    name = scfg.study_name(exp)
    storage = open_storage(storage_spec(scfg, name))
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                directions=scfg.directions, sampler=_sampler(scfg, 0))
    ident = study_identity(exp, scfg, spec)
    old = study.user_attrs.get("identity")
    if old is None:
        study.set_user_attr("identity", ident)
        study.set_user_attr("experiment", _plain(_exp_dict(exp)))
        if scfg.baselines:
            base_knobs = _base_knobs(exp, scfg)
            for label, sched in budget_baselines(exp, scfg, spec, base_knobs):
                params = ({param_name(i): v for i, v in enumerate(encode(spec, sched))}
                          | base_knobs)
                study.enqueue_trial(params, user_attrs={"baseline": label},
                                    skip_if_exists=True)
    elif old != (ident := _as_recorded(old, ident)):
        changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        diff = "; ".join(f"{k}: {old.get(k)!r} -> {ident.get(k)!r}" for k in changed)
        raise ValueError(
            f"study {name!r} in {storage_spec(scfg, name)} was made with other settings "
            f"({diff}); its trials would not be comparable. Resume it with the same settings "
            f"or give a new --search.name")
    return study


def _as_recorded(old: Mapping[str, Any], ident: dict[str, Any]) -> dict[str, Any]:
    """``ident`` without the configuration fields that a later tome_lab added and that hold
    their default value: a study recorded before a field existed ran with what the field's
    default now selects (new fields must default to the old behaviour), so it may resume.
    A new field set to anything else, or any other difference, still refuses the resume."""
    from tome_lab.config import EvalConfig, ToMeConfig

    defaults = {"tome": _plain(to_dict(ToMeConfig())), "eval": _plain(to_dict(EvalConfig()))}
    out = dict(ident)
    for section, default in defaults.items():
        was, now = old.get(section), ident.get(section)
        if isinstance(was, Mapping) and isinstance(now, Mapping):
            out[section] = {k: v for k, v in now.items()
                            if k in was or k not in default or v != default[k]}
    return out


# Loader settings that never change a trial's result.
_DATA_LOADING = ("split", "batch_size", "num_workers", "pin_memory")


def study_identity(exp: ExperimentConfig, scfg: SearchConfig, spec: ViTSpec) -> dict[str, Any]:
    """Everything that decides a trial's result; a resumed study must agree on all of it.

    The search's own fields (objectives, budget, knobs, the split trials are scored on, the
    point function), the model and the digest of its weights file, the data and its generator
    version, the base ToMe settings (all but ``r`` and ``schedule``, which each trial sets),
    the evaluation settings and the seed; ``depth`` and ``num_tokens`` pin the search space.
    Loader settings and ``search.trials`` may change between runs.
    """
    from tome_lab.data import data_version
    from tome_lab.models import weights_file

    ckpt = weights_file(exp.model)
    weights = None if ckpt is None else {"path": str(ckpt),
                                         "sha256": results.file_digest(ckpt)}
    data = {k: v for k, v in to_dict(exp.data).items() if k not in _DATA_LOADING}
    tome = {k: v for k, v in to_dict(exp.tome).items() if k not in ("r", "schedule")}
    return {"search": scfg.identity() | {"fn": scfg.fn}, "model": to_dict(exp.model),
            "weights": weights, "data": data, "data_version": data_version(exp.data.name),
            "tome": _plain(tome), "eval": _plain(to_dict(exp.eval)), "seed": exp.seed,
            "depth": spec.depth, "num_tokens": spec.num_tokens}


def _exp_dict(exp: ExperimentConfig) -> dict[str, Any]:
    return to_dict(exp)


def budget_baselines(exp: ExperimentConfig, scfg: SearchConfig, spec: ViTSpec,
                     knobs: Mapping[str, Any]) -> list[tuple[str, list[int]]]:
    """The baselines a study enqueues: every one of :func:`baselines` without a budget; under
    ``gflops_budget``, of each kind (constant, decreasing) only the dearest feasible schedule,
    the one nearest the budget from below (a cheaper one of the same kind merges more in
    every block, and an infeasible one is scored and then ranked last, so both would spend
    trials on schedules the budget makes uninteresting)."""
    pairs = baselines(spec)
    if scfg.gflops_budget is None:
        return pairs
    best: dict[str, tuple[float, str, list[int]]] = {}
    for label, sched in pairs:
        g = trial_gflops(spec, trial_config(exp, sched, knobs, scfg.split))
        kind = label.split()[0]
        if g <= scfg.gflops_budget and (kind not in best or g > best[kind][0]):
            best[kind] = (g, label, sched)
    return [(label, sched) for _, label, sched in best.values()]


def _base_knobs(exp: ExperimentConfig, scfg: SearchConfig) -> dict[str, Any]:
    """The base configuration's knob values (the first choice where it is not among them)."""
    out = {}
    for name, choices in scfg.knobs.items():
        v = getattr(exp.tome, name)
        out[name] = v if v in choices else choices[0]
    return out


# --------------------------------------------------------------------------- heartbeats and budget

def _heartbeat_value() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


class _Heartbeat:
    """A thread that stamps a trial's heartbeat attribute every ``interval`` seconds."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_system_attr(self.trial_id, _HEARTBEAT, _heartbeat_value())
            except Exception:  # a finished trial refuses updates: nothing left to stamp
                return

    def __enter__(self) -> _Heartbeat:
        self.storage.set_trial_system_attr(self.trial_id, _HEARTBEAT, _heartbeat_value())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def is_stale(trial: Any, grace_s: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone: a dead process on this host, or silence.

    Args:
        trial: an Optuna ``FrozenTrial`` in state RUNNING.
        grace_s: seconds without a heartbeat after which the worker counts as dead.
        now: the time to judge at (default: now).
    """
    now = time.time() if now is None else now
    beat = trial.system_attrs.get(_HEARTBEAT)
    if not isinstance(beat, Mapping):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > grace_s
    if beat.get("host") == socket.gethostname() and beat.get("pid") != os.getpid():
        if not results.pid_alive(beat["pid"]):
            return True
    return now - float(beat.get("time", now)) > grace_s


def fail_stale(study: Any, scfg: SearchConfig) -> list[int]:
    """Marks trials of dead workers FAIL and re-queues each (same parameters) as WAITING.

    Returns:
        The numbers of the trials this call failed.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    storage = study._storage
    retry = RetryHeartbeatStaleTrialCallback(max_retry=scfg.max_retry)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, scfg.grace_s):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(t.number)
        retry(study, storage.get_trial(t._trial_id))
    return failed


def is_retried(trial: Any) -> bool:
    """Whether ``trial`` failed because its worker died (it has no error; a copy re-runs it)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs


def budget_used(study: Any) -> int:
    """Trials that count against ``search.trials``: finished, failed by an error, running.

    Baselines do not count (the budget is what the sampler gets on top of them), and stale
    trials (failed because their worker died) do not either: their retry does.
    """
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("baseline") is not None:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING):
            n += 1
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            n += 1
    return n


@contextlib.contextmanager
def _ask_lock(study: Any) -> Iterator[None]:
    """Serialises (count, ask) between processes sharing a journal file, so that workers
    together start exactly ``search.trials`` trials (RDB storages are not locked)."""
    backend = getattr(study._storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    if path is None:
        yield
        return
    with results.exclusive(f"{path}.ask.lock"):  # O_EXCL, not flock
        yield
