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
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from tome_lab import results
from tome_lab.config import (
    SPLITS,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    ToMeConfig,
    config_hash,
    from_dict,
    to_dict,
)
from tome_lab.flops import ViTSpec, analytic_gflops
from tome_lab.launch import resolve_fn
from tome_lab.merge import clamp_r

# objective name -> Optuna direction
OBJECTIVES: dict[str, str] = {"top1": "maximize", "gflops": "minimize", "img_per_s": "maximize"}
SAMPLERS = ("tpe", "nsga2", "random")
# ToMeConfig fields a search may vary as categorical knobs (r is the schedule itself)
KNOBS = ("matching", "prop_attn", "feature", "head_agg", "distance", "combine", "partition")
_HEARTBEAT = "tome_lab:heartbeat"  # trial system attribute: {"host", "pid", "time"}

PointFn = Callable[[ExperimentConfig], Mapping[str, Any]]


@dataclass(frozen=True)
class SearchConfig:
    """How to search per-layer schedules.

    Attributes:
        name: study name; None derives one from the model, data, objectives and budget.
        trials: sampled trials to finish in the study, in total over all workers and runs;
            the baselines run on top of these.
        objectives: ``top1`` (max), ``gflops`` (min, analytic count), ``img_per_s`` (max).
        sampler: ``tpe`` (Optuna's multi-objective TPE), ``nsga2`` or ``random``.
        seed: sampler seed (each worker offsets it by its index).
        gflops_budget: trials above this many GFLOPs are infeasible (an Optuna constraint).
        knobs: ToMe fields searched as categorical choices, e.g.
            ``{"matching": ["bipartite", "pruning"], "prop_attn": [true, false]}``.
        split: the split trials are scored on (never the reported one).
        test_split: the split the Pareto schedules and the baselines are re-scored on.
        baselines: enqueue the constant-r and decreasing schedules first.
        storage: None for a journal file ``<out>/<name>.journal``; an RDB URL
            (``sqlite:///x.db``, ``postgresql://...``); any other string is a journal file path.
        out: folder of the journal, the trial records, the test records and pareto.yaml.
        workers: processes working on the study at once.
        heartbeat_s: seconds between a running trial's heartbeats.
        grace_s: a RUNNING trial whose heartbeat is older than this is stale (its worker
            died); on the worker's own host a dead process id is stale at once.
        max_retry: times a stale trial is re-queued.
        fn: the point function, ``module:function``, taking an ``ExperimentConfig`` and
            returning flat metrics (``top1``, and ``img_per_s`` when it is an objective);
            the same default as ``ablate``.
    """

    name: str | None = None
    trials: int = 100
    objectives: tuple[str, ...] = ("top1", "gflops")
    sampler: str = "tpe"
    seed: int = 0
    gflops_budget: float | None = None
    knobs: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    split: str = "val"
    test_split: str = "test"
    baselines: bool = True
    storage: str | None = None
    out: str = "runs/search"
    workers: int = 1
    heartbeat_s: float = 10.0
    grace_s: float = 60.0
    max_retry: int = 3
    fn: str = "tome_lab.evaluate:evaluate"

    def __post_init__(self) -> None:
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"search.trials must be an int >= 1, got {self.trials!r}")
        objectives = tuple(self.objectives)
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad or not objectives or len(set(objectives)) != len(objectives):
            raise ValueError(f"search.objectives must be distinct names among "
                             f"{', '.join(OBJECTIVES)}; got {list(objectives)!r}")
        object.__setattr__(self, "objectives", objectives)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown search.sampler {self.sampler!r}; valid: "
                             f"{', '.join(SAMPLERS)}")
        if self.gflops_budget is not None and not (
                isinstance(self.gflops_budget, (int, float)) and self.gflops_budget > 0):
            raise ValueError(f"search.gflops_budget must be None or > 0, got "
                             f"{self.gflops_budget!r}")
        knobs: dict[str, tuple[Any, ...]] = {}
        for name, choices in dict(self.knobs).items():
            if name not in KNOBS:
                raise ValueError(f"search.knobs: {name!r} cannot be searched; valid: "
                                 f"{', '.join(KNOBS)}")
            choices = tuple(choices) if isinstance(choices, (list, tuple)) else (choices,)
            if not choices:
                raise ValueError(f"search.knobs.{name} needs at least one choice")
            for c in choices:  # ToMeConfig names the bad value and the valid ones
                ToMeConfig(r=0, **{name: c})
            knobs[name] = choices
        object.__setattr__(self, "knobs", knobs)
        for name in ("split", "test_split"):
            if getattr(self, name) not in SPLITS:
                raise ValueError(f"unknown search.{name} {getattr(self, name)!r}; valid: "
                                 f"{', '.join(SPLITS)}")
        if self.split == self.test_split:
            raise ValueError(f"search.split and search.test_split are both {self.split!r}: "
                             f"trials must not be scored on the split that is reported")
        for name in ("workers", "max_retry"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (1 if name == "workers" else 0):
                raise ValueError(f"search.{name} must be an int >= "
                                 f"{1 if name == 'workers' else 0}, got {v!r}")
        if not self.heartbeat_s > 0 or not self.grace_s > self.heartbeat_s:
            raise ValueError(f"search needs heartbeat_s > 0 and grace_s > heartbeat_s, got "
                             f"{self.heartbeat_s} and {self.grace_s}")

    @property
    def directions(self) -> list[str]:
        """Optuna directions of the objectives, in order."""
        return [OBJECTIVES[o] for o in self.objectives]

    def study_name(self, exp: ExperimentConfig) -> str:
        """The study name: ``name`` or one derived from what the study compares."""
        if self.name:
            return self.name
        budget = f"-le{self.gflops_budget:g}" if self.gflops_budget is not None else ""
        knobs = "".join(f"-{k}" for k in self.knobs)
        return f"{exp.model.name}-{exp.data.name}-{'-'.join(self.objectives)}{budget}{knobs}"

    def identity(self) -> dict[str, Any]:
        """The fields that define a study (a resumed study must agree on them)."""
        keep = ("objectives", "gflops_budget", "knobs", "split")
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name in keep}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# --------------------------------------------------------------------------- search space

def model_spec(exp: ExperimentConfig) -> ViTSpec:
    """The token / FLOP numbers of ``exp.model`` (a random-weight build: shapes only)."""
    return _model_spec(replace(exp.model, pretrained=False, checkpoint=None))


@functools.lru_cache(maxsize=4)
def _model_spec(model: Any) -> ViTSpec:
    from tome_lab.models import create_model
    from tome_lab.patch import vit_spec

    return vit_spec(create_model(model))


def max_r(spec: ViTSpec, num_tokens: int) -> int:
    """The most a block entering with ``num_tokens`` tokens can merge (the engine's clamp)."""
    return clamp_r(num_tokens, num_tokens, spec.num_prefix)


def effective(spec: ViTSpec, r: Sequence[int]) -> list[int]:
    """``r`` with each entry clamped as the engine clamps it: the r each block really merges."""
    n, out = spec.num_tokens, []
    for ri in r:
        out.append(clamp_r(int(ri), n, spec.num_prefix))
        n -= out[-1]
    return out


def param_name(i: int) -> str:
    """The Optuna parameter of block ``i``'s r (zero-padded so they sort by block)."""
    return f"r{i:02d}"


def steps(spec: ViTSpec) -> int:
    """The top of every block's parameter: ``0 .. steps`` (the first block's largest r)."""
    return max_r(spec, spec.num_tokens)


def decode(spec: ViTSpec, values: Sequence[int]) -> list[int]:
    """Per-block parameters (each a fraction ``v / steps`` of what the block can merge) to the
    per-layer r: ``round(v * max_r(n) / steps)`` for the ``n`` tokens reaching the block.

    Every block has the same distribution (integers ``0 .. steps``) whatever the earlier
    blocks drew, so that NSGA-II's crossover can act on every block (Optuna crosses over only
    parameters whose distributions agree across trials); every r from 0 to the block's
    maximum is reachable, and no r is ever clamped.
    """
    top, n, r = steps(spec), spec.num_tokens, []
    for v in values:
        m = max_r(spec, n)
        r.append(int(math.floor(int(v) * m / top + 0.5)) if top else 0)
        n -= r[-1]
    return r


def encode(spec: ViTSpec, r: Sequence[int]) -> list[int]:
    """The per-block parameters whose :func:`decode` is ``r`` (an effective schedule).

    Raises:
        ValueError: ``r`` merges more in some block than the tokens reaching it allow.
    """
    top, values = steps(spec), []
    for i, ri in enumerate(r):
        head = decode(spec, values)
        for v in range(top + 1):
            if decode(spec, [*values, v])[i] == ri:
                values.append(v)
                break
        else:
            n = spec.num_tokens - sum(head)
            raise ValueError(f"block {i} cannot merge r={ri} of its {n} tokens "
                             f"(at most {max_r(spec, n)})")
    return values


def suggest_schedule(trial: Any, spec: ViTSpec) -> list[int]:
    """One r per block from ``trial``: every block's parameter is an integer in
    ``0 .. steps(spec)`` (the same distribution for every block), decoded by :func:`decode`
    into what the tokens left allow."""
    top = steps(spec)
    return decode(spec, [trial.suggest_int(param_name(i), 0, top) for i in range(spec.depth)])


def baselines(spec: ViTSpec) -> list[tuple[str, list[int]]]:
    """The paper's schedules as (label, effective per-layer r), distinct, cheapest last.

    Every constant r the first block can merge (0 up to half its unprotected tokens; a larger
    r is clamped to the same schedule), and the decreasing schedule (2r down to 0) for every r
    whose first block is not clamped. Schedules that the engine's clamping makes identical
    appear once, under the smallest r.
    """
    from tome_lab.registry import SCHEDULES

    out: list[tuple[str, list[int]]] = []
    seen: set[tuple[int, ...]] = set()
    top = max_r(spec, spec.num_tokens)
    for kind, rs in (("constant", range(top + 1)), ("decreasing", range(1, top // 2 + 1))):
        fn = SCHEDULES.get(kind)
        for r in rs:
            sched = effective(spec, fn(r, spec))
            if tuple(sched) not in seen:
                seen.add(tuple(sched))
                out.append((f"{kind} r={r}", sched))
    return out


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
            for label, sched in baselines(spec):
                params = ({param_name(i): v for i, v in enumerate(encode(spec, sched))}
                          | base_knobs)
                study.enqueue_trial(params, user_attrs={"baseline": label},
                                    skip_if_exists=True)
    elif old != ident:
        changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        diff = "; ".join(f"{k}: {old.get(k)!r} -> {ident.get(k)!r}" for k in changed)
        raise ValueError(
            f"study {name!r} in {storage_spec(scfg, name)} was made with other settings "
            f"({diff}); its trials would not be comparable. Resume it with the same settings "
            f"or give a new --search.name")
    return study


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


def _base_knobs(exp: ExperimentConfig, scfg: SearchConfig) -> dict[str, Any]:
    """The base configuration's knob values (the first choice where it is not among them)."""
    out = {}
    for name, choices in scfg.knobs.items():
        v = getattr(exp.tome, name)
        out[name] = v if v in choices else choices[0]
    return out


# --------------------------------------------------------------------------- one trial

def trial_config(exp: ExperimentConfig, r: Sequence[int], knobs: Mapping[str, Any],
                 split: str) -> ExperimentConfig:
    """``exp`` with an explicit per-layer ``r``, the knobs, and data from ``split``."""
    from tome_lab.config import _params
    from tome_lab.registry import MATCHING

    matching = MATCHING.canonical(knobs.get("matching", exp.tome.matching))
    takes = _params(MATCHING.get(matching), 2)  # schedule options mean nothing to a list
    tome = replace(exp.tome, r=tuple(int(v) for v in r), schedule="list", **dict(knobs),
                   options={k: v for k, v in exp.tome.options.items() if k in takes})
    return replace(exp, tome=tome, data=replace(exp.data, split=split))


def trial_gflops(spec: ViTSpec, cfg: ExperimentConfig) -> float:
    """The analytic GFLOPs of a trial's configuration, with what its own plug-ins cost
    (matcher, similarity feature, head aggregation, partition), not the default matcher's."""
    from tome_lab.patch import config_spec

    return analytic_gflops(config_spec(spec, cfg.tome), cfg.tome.r)


@dataclass(frozen=True)
class _Scored:
    """A test re-score as the launcher's identity sees a point."""

    config: ExperimentConfig
    key: str


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
    record = {
        "schema": results.SCHEMA, "status": "ok" if ok else "failed",
        "key": f"{study.study_name}/{trial.number}", "name": f"trial-{trial.number:05d}",
        "overrides": {"tome.r": r, **{f"tome.{k}": v for k, v in knobs.items()}},
        "config": config, "metrics": metrics,
        "error": None if ok else {"type": (err or "Error").split(":")[0], "message": err,
                                  "traceback": trial.user_attrs.get("traceback")},
        "env": trial.user_attrs.get("env") or results.environment(
            metrics.get("device", cfg.eval.device), metrics.get("dtype", cfg.eval.dtype)),
        "started": trial.datetime_start.astimezone().isoformat(timespec="seconds")
        if trial.datetime_start else None,
        "finished": trial.datetime_complete.astimezone().isoformat(timespec="seconds")
        if trial.datetime_complete else None,
        "seconds": trial.user_attrs.get("seconds"),
    }
    results.write_text_atomic(pdir / results.CONFIG, yaml.safe_dump(config, sort_keys=False))
    results.write_json_atomic(pdir / results.RESULT, record)
    return pdir


# --------------------------------------------------------------------------- workers

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
    import submitit

    from tome_lab import launch

    name = scfg.study_name(exp)
    logs = Path(launcher.log_dir) if launcher.log_dir else Path(scfg.out) / ".launch" / name
    args = [_exp_dict(exp), _plain({f.name: getattr(scfg, f.name) for f in fields(scfg)})]
    if kind == "local":
        executor = submitit.LocalExecutor(folder=logs / "%j", python=launcher.python,
                                          max_num_timeout=launcher.max_requeue)
        executor.update_parameters(timeout_min=launcher.time_min,
                                   signal_delay_s=launcher.signal_delay_s,
                                   gpus_per_node=launcher.gpus_per_task,
                                   setup=list(launcher.setup))
        jobs = [executor.submit(_worker_job(), *args, w) for w in range(scfg.workers)]
    else:
        executor = submitit.SlurmExecutor(folder=logs / "%j", python=launcher.python,
                                          max_num_timeout=launcher.max_requeue)
        executor.update_parameters(**launch.slurm_parameters(launcher, scfg.workers, name))
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


# --------------------------------------------------------------------------- the frontier

def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether objective vector ``a`` Pareto-dominates ``b`` under ``directions``."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return ge and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def pareto_trials(study: Any) -> list[Any]:
    """The feasible complete trials no other feasible complete trial dominates, by GFLOPs."""
    from optuna.trial import TrialState

    dirs = ["maximize" if d.name == "MAXIMIZE" else "minimize" for d in study.directions]
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if feasible(t)]
    front = [t for t in done if not any(dominates(o.values, t.values, dirs) for o in done)]
    return sorted(front, key=lambda t: (t.values[::-1], t.number))


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Area dominated by 2-D (top1 up, gflops down) points and bounded by ``ref``.

    Args:
        points: (top1, gflops) pairs.
        ref: (top1_min, gflops_max): the worst corner; points beyond it add nothing.
    """
    pts = sorted((g, a) for a, g in points if a > ref[0] and g < ref[1])  # by gflops
    area, best = 0.0, ref[0]
    for i, (g, a) in enumerate(pts):
        best = max(best, a)
        g_next = pts[i + 1][0] if i + 1 < len(pts) else ref[1]
        area += (best - ref[0]) * (g_next - g)
    return area


def _score_test(exp: ExperimentConfig, scfg: SearchConfig, spec: ViTSpec, label: str,
                r: Sequence[int], knobs: Mapping[str, Any], fn: PointFn, folder: Path,
                extra: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluates one schedule on the test split, once (a finished record is reused)."""
    from tome_lab.launch import identity

    cfg = trial_config(exp, r, knobs, scfg.test_split)
    key = config_hash(cfg)
    pdir = folder / f"{label}-{key}"
    ident = identity(_Scored(cfg, key), scfg.fn)
    old = results.read_result(pdir)
    if old is not None and old.get("status") == "ok" and results.same_identity(old, ident):
        return old["metrics"]
    config = to_dict(cfg)
    t0, started = time.perf_counter(), results.now()
    metrics = dict(fn(cfg))
    metrics.update({"gflops_fvcore": metrics.get("gflops"),
                    "gflops": trial_gflops(spec, cfg), "schedule": list(r), **extra})
    record = {"schema": results.SCHEMA, "status": "ok", "key": key, "name": label,
              "identity": ident,
              "overrides": {"tome.r": list(r)}, "config": config, "metrics": metrics,
              "error": None, "env": results.environment(cfg.eval.device, cfg.eval.dtype),
              "started": started, "finished": results.now(),
              "seconds": round(time.perf_counter() - t0, 3)}
    results.write_text_atomic(pdir / results.CONFIG, yaml.safe_dump(config, sort_keys=False))
    results.write_json_atomic(pdir / results.RESULT, record)
    return metrics


def finish(exp: ExperimentConfig, scfg: SearchConfig, fn: PointFn | None = None,
           test: bool = True) -> dict[str, Any]:
    """Writes missing trial records, re-scores the frontier and baselines, writes pareto.yaml.

    Returns:
        ``{"pareto": [...], "baselines": [...], "pareto_yaml": path, "trials": n}``: one row
        per Pareto schedule and per baseline (label, trial, schedule, gflops, val and test
        top-1).
    """
    import optuna
    from optuna.trial import TrialState

    fn = resolve_fn(scfg.fn) if fn is None else fn
    _quiet_optuna()
    spec = model_spec(exp)
    name = scfg.study_name(exp)
    study = optuna.load_study(study_name=name, storage=open_storage(storage_spec(scfg, name)))
    for t in study.get_trials(deepcopy=False):
        write_trial_record(exp, scfg, study, spec, t)
    folder = Path(scfg.out) / f"{name}-test"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    top = scfg.objectives.index("top1") if "top1" in scfg.objectives else None

    def row(t: Any, label: str) -> dict[str, Any]:
        r = trial_schedule(spec, t)
        knobs = trial_knobs(scfg, t)
        out = {"label": label, "trial": t.number, "schedule": r, **knobs,
               "gflops": trial_gflops(spec, trial_config(exp, r, knobs, scfg.split)),
               f"top1_{scfg.split}": t.values[top] if top is not None else None,
               "feasible": feasible(t)}
        if test:
            m = _score_test(exp, scfg, spec, label, r, knobs, fn, folder,
                            {"study": name, "trial": t.number, "role": label.split("-")[0]})
            out[f"top1_{scfg.test_split}"] = m.get("top1")
        return out

    pareto, seen = [], set()
    for t in pareto_trials(study):
        key = (tuple(trial_schedule(spec, t)), tuple(sorted(trial_knobs(scfg, t).items())))
        if key in seen:
            continue
        seen.add(key)
        pareto.append(row(t, f"pareto-{t.number:05d}"))
    base_rows = []
    for t in complete:
        label = t.user_attrs.get("baseline")
        if label:
            base_rows.append(row(t, label.replace(" ", "-").replace("=", "")))
    base_rows.sort(key=lambda x: -x["gflops"])
    path = write_pareto_yaml(exp, scfg, name, pareto)
    return {"pareto": pareto, "baselines": base_rows, "pareto_yaml": str(path),
            "trials": len(complete), "study": name}


def write_pareto_yaml(exp: ExperimentConfig, scfg: SearchConfig, name: str,
                      pareto: Sequence[Mapping[str, Any]]) -> Path:
    """``<out>/<study>-pareto.yaml``: an ablation file of the Pareto schedules on the test split.

    ``tome.r`` holds the first (cheapest) schedule as a plain list; the ``sweep`` word lists all
    of them (zipped with the knobs when knobs were searched).
    """
    path = Path(scfg.out) / f"{name}-pareto.yaml"
    if not pareto:
        raise ValueError(f"study {name!r} has no feasible complete trial: no Pareto set")
    first = pareto[0]
    cfg = trial_config(exp, first["schedule"], {k: first[k] for k in scfg.knobs},
                       scfg.test_split)
    d = to_dict(cfg)
    keys = ["r", *scfg.knobs]

    def text(v: Any) -> str:
        return "[" + ",".join(str(x) for x in v) + "]" if isinstance(v, list) else str(v)

    values = ",".join("+".join(text(p["schedule"] if k == "r" else p[k]) for k in keys)
                      for p in pareto)
    d["sweep"] = [f"{'+'.join(keys)}={values}"]
    lines = [f"# python -m tome_lab.ablate --config {path}",
             f"# Pareto-optimal schedules of study {name!r} ({scfg.split} split), cheapest "
             f"first; tome.r is the first, for apply_tome(model, r=...).",
             "# gflops  " + "  ".join(f"top1_{s}" for s in (scfg.split, scfg.test_split))
             + "  r"]
    for p in pareto:
        accs = "  ".join(f"{p.get(f'top1_{s}')}" for s in (scfg.split, scfg.test_split))
        lines.append(f"# {p['gflops']:.4f}  {accs}  {p['schedule']}")
    results.write_text_atomic(path, "\n".join(lines) + "\n"
                              + yaml.safe_dump(d, sort_keys=False))
    return path


def format_report(summary: Mapping[str, Any], scfg: SearchConfig) -> str:
    """The frontier next to the best baseline at equal or lower GFLOPs, as a text table.

    The baseline is the best one on the search split (``scfg.split``), never on the test split.
    """
    import pandas as pd

    test, val = f"top1_{scfg.test_split}", f"top1_{scfg.split}"
    rows = []
    for p in summary["pareto"]:
        cheaper = [b for b in summary["baselines"] if b["gflops"] <= p["gflops"] + 1e-12]
        # Picked on the search split, never on test: a choice made on test scores would make
        # the reported test number optimistic (the frontier script picks on val too).
        best = max(cheaper, key=lambda b: b[val] if b[val] is not None else -1.0, default=None)
        rows.append({"schedule": " ".join(map(str, p["schedule"])), "GFLOPs": p["gflops"],
                     val: p[val], test: p.get(test),
                     f"best baseline on {scfg.split} <= GFLOPs": best["label"] if best else "-",
                     "its GFLOPs": best["gflops"] if best else None,
                     f"its {test}": best.get(test) if best else None})
    frame = pd.DataFrame(rows)
    base = pd.DataFrame([{"baseline": b["label"], "GFLOPs": b["gflops"], val: b[val],
                          test: b.get(test)} for b in summary["baselines"]])
    fmt = {"float_format": lambda v: f"{v:.4f}"}
    return (f"study {summary['study']!r}: {summary['trials']} complete trials\n\n"
            f"Pareto schedules ({len(rows)}):\n{frame.to_string(index=False, **fmt)}\n\n"
            f"Baselines:\n{base.to_string(index=False, **fmt)}\n\n"
            f"pareto.yaml: {summary['pareto_yaml']}")


def search(exp: ExperimentConfig, scfg: SearchConfig, test: bool = True,
           launcher: Any = None) -> dict[str, Any]:
    """Creates or resumes the study, runs the workers, then :func:`finish`.

    Args:
        exp: the model, data, base ToMe setting and evaluation settings of every trial.
        scfg: the search.
        test: re-score the Pareto schedules and the baselines on ``scfg.test_split``.
        launcher: a :class:`tome_lab.launch.LaunchConfig` for the workers (None: inline).
    """
    preflight(exp, scfg)
    create_study(exp, scfg)
    run_workers(exp, scfg, launcher)
    return finish(exp, scfg, test=test)


# --------------------------------------------------------------------------- command line

@dataclass(frozen=True)
class SearchRunConfig:
    """``python -m tome_lab.search``'s configuration: ablate's sections plus ``search``.

    Attributes:
        model: which network.
        data: which images (``search.split`` and ``search.test_split`` replace the split).
        tome: the base ToMe setting (its r and schedule are what the search replaces).
        eval: where and how to run (img/s is measured only when it is an objective).
        seed: seeds torch and the loader (the sampler has ``search.seed``).
        search: the search itself.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tome: ToMeConfig = field(default_factory=lambda: ToMeConfig(r=4))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(speed=False))
    seed: int = 0
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        if "img_per_s" in self.search.objectives and not self.eval.speed:
            raise ValueError("search.objectives has img_per_s: turn on eval.speed "
                             "(--eval.speed true)")

    def experiment(self) -> ExperimentConfig:
        """The ExperimentConfig every trial starts from."""
        return ExperimentConfig(model=self.model, data=self.data, tome=self.tome,
                                eval=self.eval, seed=self.seed)


PROG = "python -m tome_lab.search"
DESCRIPTION = """\
Search per-layer r schedules with Optuna: one r per block, top-1 (up) and analytic
GFLOPs (down) by default, scored on --search.split (val), then the Pareto schedules and the
constant-r and decreasing baselines re-scored on --search.test_split (test). Re-running the
same command resumes the study. Workers: --launcher local|slurm --search.workers N (inline:
one, in this process).
Watch a study with: optuna-dashboard <out>/<study>.journal
Exit status: 0 ok, 2 bad input, 1 a crash."""


def build_parser() -> Any:
    """The jsonargparse parser: the experiment sections, ``search``, the launcher flags."""
    from tome_lab import cli

    def extra(parser: Any) -> None:
        cli.add_launch_arguments(parser)
        parser.add_argument("--no_test", "--no-test", action="store_true",
                            help="Do not re-score the Pareto schedules and baselines on "
                                 "search.test_split.")

    aliases = {**cli.MODEL_ALIASES, **cli.DATA_ALIASES, **cli.TOME_ALIASES,
               **cli.EVAL_ALIASES, "--trials": "--search.trials",
               "--workers": "--search.workers", "--budget": "--search.gflops_budget"}
    return cli.build_parser(SearchRunConfig, PROG, DESCRIPTION, aliases, extra), aliases


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 ok, 2 bad input, 1 a crash)."""
    from tome_lab import cli

    def body() -> int:
        parser, aliases = build_parser()
        run, ns = cli.parse(parser, SearchRunConfig, argv, aliases)
        with cli.setting_up():
            launcher = cli.launch_config(ns)
            scfg = run.search
            if launcher.launcher == "inline" and scfg.workers > 1:
                raise ValueError(f"--search.workers {scfg.workers} needs --launcher local or "
                                 f"slurm (inline runs one worker in this process)")
            resolve_fn(scfg.fn)
            exp = run.experiment()
            preflight(exp, scfg)
            create_study(exp, scfg)
        name = scfg.study_name(exp)
        print(f"study {name!r} in {storage_spec(scfg, name)}: {scfg.trials} trials, "
              f"{scfg.workers} worker(s), launcher {launcher.launcher}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            run_workers(exp, scfg, launcher)
        except KeyboardInterrupt:
            print("\ninterrupted: finished trials are kept; run the same command again to "
                  "resume", file=sys.stderr)
            return 130
        if not launcher.wait:
            return 0
        wall = time.perf_counter() - t0
        with cli.running():
            summary = finish(exp, scfg, test=not ns.no_test)
        print(format_report(summary, scfg))
        print(f"\nsearch wall time {wall:.0f} s; records: {trials_dir(scfg, name)}")
        return 0

    return cli.run(PROG, body)


if __name__ == "__main__":
    # run the importable module's main, so that the worker jobs pickle as tome_lab.search.*
    from tome_lab.search import main as _main

    sys.exit(_main())
