"""The search's configuration: :class:`SearchConfig`, its objectives, samplers and knobs.

The lowest floor of :mod:`tome_lab.search`: plain data, validated on construction, that every
other module of the package reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tome_lab.config import SPLITS, ExperimentConfig, ToMeConfig

# objective name -> Optuna direction
OBJECTIVES: dict[str, str] = {"top1": "maximize", "gflops": "minimize", "img_per_s": "maximize"}
SAMPLERS = ("tpe", "nsga2", "random")
# ToMeConfig fields a search may vary as categorical knobs (r is the schedule itself)
KNOBS = ("matching", "prop_attn", "feature", "head_agg", "distance", "combine", "partition")

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

