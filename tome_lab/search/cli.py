"""``python -m tome_lab.search``: the command line, and :func:`search`, its Python twin."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.launch import resolve_fn
from tome_lab.search.config import SearchConfig
from tome_lab.search.frontier import finish, format_report
from tome_lab.search.study import create_study, preflight, storage_spec
from tome_lab.search.trials import trials_dir
from tome_lab.search.workers import run_workers


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
