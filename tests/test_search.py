"""The schedule search (tome_lab.search): space, baselines, constraint, storage, resume, frontier.

Most tests use :func:`fake_point`, a point function whose top-1 is a known function of the
schedule, so the search logic is tested in seconds; one runs the real evaluator on the
embedded model with a data limit, and checks that pareto.yaml feeds back into it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

import tome_lab
from tome_lab import results
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ToMeConfig, from_dict
from tome_lab.flops import analytic_gflops, tokens_per_layer
from tome_lab.search import (
    SearchConfig,
    baselines,
    budget_used,
    create_study,
    decode,
    dominates,
    effective,
    encode,
    hypervolume,
    is_stale,
    model_spec,
    open_storage,
    run_worker,
    run_workers,
    search,
    steps,
    storage_spec,
    suggest_schedule,
    trial_schedule,
)

# pytest puts tests/ on sys.path (and spawned workers inherit it; the subprocesses get it
# through PYTHONPATH), so the point functions below are importable as test_search:...
FAKE = "test_search:fake_point"
SLOW = "test_search:slow_point"
EXP = ExperimentConfig(data=DataConfig(limit=32, batch_size=32),
                       eval=EvalConfig(speed=False, threads=1))
ROOT = Path(__file__).resolve().parents[1]


def fake_top1(r: tuple[int, ...], prop_attn: bool = True) -> float:
    """A known accuracy: merging late costs less than merging early; plain attention -1."""
    return 100.0 - sum(v * (12 - i) for i, v in enumerate(r)) / 40.0 - (not prop_attn)


def fake_point(cfg: ExperimentConfig) -> dict:
    """A point function with :func:`fake_top1` as its top-1 (and the split it was given)."""
    return {"top1": fake_top1(cfg.tome.r, cfg.tome.prop_attn), "gflops": None,
            "split": cfg.data.split, "device": "cpu", "dtype": "fp32", "pid": os.getpid()}


def slow_point(cfg: ExperimentConfig) -> dict:
    """:func:`fake_point` taking a while, so that a worker is caught mid-trial."""
    time.sleep(1.0)
    return fake_point(cfg)


@pytest.fixture(scope="module")
def spec():
    return model_spec(EXP)


def _scfg(tmp_path: Path, **kw) -> SearchConfig:
    base = dict(name="t", trials=6, out=str(tmp_path), fn=FAKE, heartbeat_s=0.5, grace_s=30.0)
    base.update(kw)
    return SearchConfig(**base)


def _study(scfg: SearchConfig) -> optuna.Study:
    return optuna.load_study(study_name=scfg.study_name(EXP),
                             storage=open_storage(storage_spec(scfg, scfg.study_name(EXP))))


def _records(scfg: SearchConfig):
    return results.load(Path(scfg.out) / scfg.study_name(EXP))


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("kw, message", [
    (dict(objectives=("top1", "flops")), "objectives"),
    (dict(objectives=("top1", "top1")), "distinct"),
    (dict(sampler="cmaes"), "valid: tpe, nsga2, random"),
    (dict(knobs={"r": [1, 2]}), "cannot be searched"),
    (dict(knobs={"matching": ["bipartite", "bipartit"]}), "bipartit"),
    (dict(split="test"), "must not be scored"),
    (dict(gflops_budget=0), "gflops_budget"),
    (dict(trials=0), "trials"),
    (dict(heartbeat_s=10, grace_s=5), "grace_s"),
])
def test_bad_search_config_names_the_problem(kw, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**kw)


# --------------------------------------------------------------------------- search space


def test_baselines_are_the_papers_schedules(spec):
    got = dict(baselines(spec))
    # vit_digits: 64 patches + 2 prefix, 12 blocks. The first block can merge at most 32, so
    # constant r = 0..32 are every constant schedule (r=33 is clamped to r=32's) ...
    assert [k for k in got if k.startswith("constant")] == [f"constant r={r}" for r in range(33)]
    assert effective(spec, [33] * 12) == got["constant r=32"] == effective(spec, [99] * 12)
    # ... and decreasing 2r..0 stops where clamping makes it repeat an earlier schedule
    dec = [k for k in got if k.startswith("decreasing")]
    assert dec == [f"decreasing r={r}" for r in range(1, len(dec) + 1)] and len(dec) >= 6
    assert len({tuple(v) for v in got.values()}) == len(got)  # no schedule twice
    assert got["constant r=4"] == [4] * 12
    assert got["decreasing r=3"] == [6, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    # clamped as the engine clamps: the same tokens per layer as the plain constant schedule
    assert tokens_per_layer(spec, got["constant r=7"]) == tokens_per_layer(spec, [7] * 12)
    assert got["constant r=7"] != [7] * 12
    assert tokens_per_layer(spec, got["constant r=7"])[-1] == spec.num_prefix + 1
    # the cheapest baseline is far below where the old list (constant r <= 7) stopped
    assert analytic_gflops(spec, got["constant r=32"]) < 0.6 * analytic_gflops(
        spec, got["constant r=7"])


def test_sampled_schedules_stay_within_the_tokens_left(tmp_path, spec):
    scfg = _scfg(tmp_path, trials=30, sampler="random", baselines=False)
    create_study(EXP, scfg)
    run_worker(EXP, scfg)
    study = _study(scfg)
    scheds = [trial_schedule(spec, t) for t in study.trials]
    assert len(scheds) == 30
    # no entry is ever clamped (each r is at most half the unprotected tokens reaching it) ...
    assert all(effective(spec, s) == s for s in scheds)
    # ... and the space is used: some block merges its maximum, some merges nothing
    n, hit_max = spec.num_tokens, False
    for s in scheds:
        n = spec.num_tokens
        for v in s:
            hit_max |= v > 0 and v == (n - spec.num_prefix) // 2
            n -= v
    assert hit_max and any(0 in s for s in scheds)


# --------------------------------------------------------------------------- the search


def test_small_search_records_every_trial_and_its_baselines(tmp_path, spec):
    scfg = _scfg(tmp_path, trials=20, sampler="tpe")
    summary = search(EXP, scfg)
    study = _study(scfg)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    n = 20 + len(baselines(spec))  # the baselines run on top of the sampled budget
    assert len(done) == n == len(study.trials)
    df = _records(scfg)
    assert len(df) == n and set(df.status) == {"ok"} and set(df.split) == {"val"}
    assert sorted(df.trial) == list(range(n))
    assert df.baseline.isna().sum() == 20
    for _, row in df.iterrows():
        r = tuple(row["tome.r"])
        assert row["objective.top1"] == pytest.approx(fake_top1(r))
        assert row["gflops"] == pytest.approx(analytic_gflops(spec, r))
    # every baseline is a trial of the study, with its own schedule, scored on val and test
    labels = dict(baselines(spec))
    got = {row.baseline: list(row["tome.r"]) for _, row in df.iterrows()
           if isinstance(row.baseline, str)}
    assert got == labels
    assert len(summary["baselines"]) == len(labels)
    for b in summary["baselines"]:
        assert b["top1_test"] == pytest.approx(fake_top1(tuple(b["schedule"])))
    test = results.load(Path(scfg.out) / f"{scfg.study_name(EXP)}-test")
    assert set(test.split) == {"test"}


def test_pareto_set_equals_the_brute_force_non_dominated_set(tmp_path, spec):
    scfg = _scfg(tmp_path, trials=25, sampler="random", seed=3)
    summary = search(EXP, scfg)
    df = _records(scfg)
    pts = {int(t): (a, g) for t, a, g in zip(df.trial, df["objective.top1"],
                                             df["objective.gflops"], strict=True)}
    front = {t for t, (a, g) in pts.items()
             if not any(a2 >= a and g2 <= g and (a2 > a or g2 < g) for a2, g2 in pts.values())}
    schedules = {tuple(r) for t, r in zip(df.trial, df["tome.r"], strict=True) if t in front}
    assert {tuple(p["schedule"]) for p in summary["pareto"]} == schedules
    # Optuna's own non-dominated set agrees
    assert {t.number for t in _study(scfg).best_trials} == front
    # pareto.yaml: an ablation file over exactly these schedules, cheapest first
    d = yaml.safe_load(Path(summary["pareto_yaml"]).read_text())
    from tome_lab.sweep import expand

    cfg = {k: v for k, v in d.items() if k != "sweep"}
    points = expand(d["sweep"], cfg)
    assert [list(p.config.tome.r) for p in points] == [p["schedule"] for p in summary["pareto"]]
    assert {p.config.data.split for p in points} == {"test"}
    gf = [p["gflops"] for p in summary["pareto"]]
    assert gf == sorted(gf)


def test_decode_reaches_every_r_and_encode_inverts_it(spec):
    top = steps(spec)
    assert top == 32  # vit_digits: (66 - 2) // 2
    for _, sched in baselines(spec):
        assert decode(spec, encode(spec, sched)) == sched
    # after 20 merged in block 0, block 1 can merge 0..(46 - 2) // 2 = 22: all reachable
    assert {decode(spec, [encode(spec, [20])[0], v])[1] for v in range(top + 1)} == set(
        range(23))
    assert decode(spec, [top] * 12) == effective(spec, [99] * 12)  # the maximum everywhere
    with pytest.raises(ValueError, match="block 1 cannot merge r=30 of its 46 tokens"):
        encode(spec, [20, 30])


def test_nsga2_crosses_over_every_block(spec):
    """Optuna's NSGA-II crosses over only parameters with one distribution across trials;
    with mutation off, every parameter of a child comes from a parent of the last generation
    (a bound that depended on earlier blocks made it sample blocks 2..12 at random)."""
    pop = 10
    sampler = optuna.samplers.NSGAIISampler(population_size=pop, mutation_prob=0.0, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(2 * pop):
        trial = study.ask()
        r = suggest_schedule(trial, spec)
        study.tell(trial, [fake_top1(tuple(r)), analytic_gflops(spec, r)])
    first, second = study.trials[:pop], study.trials[pop:]
    for i in range(spec.depth):
        name = f"r{i:02d}"
        assert len({t.distributions[name] for t in study.trials}) == 1
        parents = {t.params[name] for t in first}
        assert all(t.params[name] in parents for t in second), name


def test_budget_is_a_constraint_and_only_feasible_trials_are_reported(tmp_path, spec):
    budget = 0.07
    scfg = _scfg(tmp_path, trials=24, sampler="random", gflops_budget=budget, seed=1)
    summary = search(EXP, scfg)
    study = _study(scfg)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    over = [t for t in done if t.values[1] > budget]
    under = [t for t in done if t.values[1] <= budget]
    assert over and under  # the test means something only with both kinds
    for t in done:  # Optuna's constraint, not a penalty: the objectives are untouched
        assert t.constraints["gflops"] == pytest.approx(t.values[1] - budget)
        sched = tuple(trial_schedule(spec, t))
        assert t.values[0] == pytest.approx(fake_top1(sched))
    df = _records(scfg)
    assert (df.feasible == (df["objective.gflops"] <= budget)).all()
    assert all(p["gflops"] <= budget for p in summary["pareto"])
    assert {t.number for t in study.best_trials} <= {t.number for t in under}


def test_the_gflops_objective_is_the_chosen_plug_ins_cost(tmp_path, spec):
    from tome_lab.engine import config_spec

    budget = 0.08
    scfg = _scfg(tmp_path, trials=12, sampler="random", baselines=True, gflops_budget=budget,
                 knobs={"feature": ["k", "x"], "matching": ["bipartite", "kth_bipartite"]})
    summary = search(EXP, scfg)
    df = _records(scfg)
    assert set(df["tome.feature"]) == {"k", "x"}
    dearer = 0
    for _, row in df.iterrows():
        r = tuple(row["tome.r"])
        tome = replace(EXP.tome, r=r, schedule="list", feature=row["tome.feature"],
                       matching=row["tome.matching"])
        want = analytic_gflops(config_spec(spec, tome), r)
        assert row["objective.gflops"] == pytest.approx(want)
        assert row["feasible"] == (want <= budget)
        dearer += want > analytic_gflops(spec, r) + 1e-9
    assert dearer > 0  # the x feature matches on 128 channels, not head_dim 32: it costs more
    for p in summary["pareto"] + summary["baselines"]:
        tome = replace(EXP.tome, r=tuple(p["schedule"]), schedule="list", feature=p["feature"],
                       matching=p["matching"])
        assert p["gflops"] == pytest.approx(analytic_gflops(config_spec(spec, tome),
                                                            p["schedule"]))


def test_test_rescores_are_reused_only_for_the_same_identity(tmp_path, monkeypatch):
    import json

    from tome_lab import models
    from tome_lab.search import finish

    copy = tmp_path / "w.safetensors"
    copy.write_bytes(models.ZOO_CHECKPOINT.read_bytes())
    monkeypatch.setattr(models, "ZOO_CHECKPOINT", copy)
    scfg = _scfg(tmp_path, trials=2, sampler="random", baselines=False)
    search(EXP, scfg)

    def digests():
        files = sorted((Path(scfg.out) / f"{scfg.study_name(EXP)}-test").glob("*/result.json"))
        assert files
        recs = [json.loads(f.read_text()) for f in files]
        return {r["identity"]["checkpoint"]["sha256"] for r in recs}, [f.stat().st_mtime_ns
                                                                       for f in files]

    first, mtimes = digests()
    assert first == {results.file_digest(copy)}
    finish(EXP, scfg)
    assert digests() == (first, mtimes)  # same identity: reused, not rewritten
    copy.write_bytes(copy.read_bytes()[:-1] + b"x")  # retrained weights, same config hash
    finish(EXP, scfg)
    assert digests()[0] == {results.file_digest(copy)} != first  # every re-score ran again


def test_a_rewritten_trial_record_carries_the_configuration_that_ran(tmp_path):
    import json

    from tome_lab.search import finish

    scfg = _scfg(tmp_path, trials=2, sampler="random", baselines=False)
    search(EXP, scfg, test=False)
    rec_path = next(Path(scfg.out).glob(f"{scfg.study_name(EXP)}/trial-00000/result.json"))
    ran = json.loads(rec_path.read_text())
    rec_path.unlink()  # a worker killed between telling Optuna and writing its record
    later = replace(EXP, data=replace(EXP.data, batch_size=7))  # the same study, resumed
    finish(later, scfg, test=False)
    again = json.loads(rec_path.read_text())
    assert again["config"] == ran["config"] and again["config"]["data"]["batch_size"] == 32
    assert again["env"]["date"] == ran["env"]["date"]  # the environment of the run itself


def test_knobs_are_searched_and_reach_the_point_function(tmp_path):
    scfg = _scfg(tmp_path, trials=20, sampler="random", knobs={"prop_attn": [True, False]})
    summary = search(EXP, scfg)
    df = _records(scfg)
    assert set(df["tome.prop_attn"]) == {True, False}
    for _, row in df.iterrows():
        assert row["objective.top1"] == pytest.approx(
            fake_top1(tuple(row["tome.r"]), row["tome.prop_attn"]))
    # plain attention costs 1 point at the same GFLOPs: it is on the front only where no trial
    # ran the same schedule with proportional attention
    prop = {tuple(r) for r, a in zip(df["tome.r"], df["tome.prop_attn"], strict=True) if a}
    assert all(p["prop_attn"] or tuple(p["schedule"]) not in prop for p in summary["pareto"])
    from tome_lab.sweep import expand

    d = yaml.safe_load(Path(summary["pareto_yaml"]).read_text())
    points = expand(d["sweep"], {k: v for k, v in d.items() if k != "sweep"})
    assert [(list(p.config.tome.r), p.config.tome.prop_attn) for p in points] == [
        (p["schedule"], p["prop_attn"]) for p in summary["pareto"]]


def test_resume_runs_only_the_missing_trials(tmp_path):
    scfg = _scfg(tmp_path, trials=5, baselines=False, sampler="random")
    search(EXP, scfg, test=False)
    before = {p: p.read_text() for p in Path(scfg.out).glob("t/*/result.json")}
    search(EXP, replace(scfg, trials=8), test=False)
    study = _study(scfg)
    assert len(study.trials) == 8
    assert all(p.read_text() == text for p, text in before.items())
    assert len(_records(scfg)) == 8


def test_a_resumed_study_must_keep_its_objectives(tmp_path):
    scfg = _scfg(tmp_path, trials=2, baselines=False)
    create_study(EXP, scfg)
    with pytest.raises(ValueError, match="new --search.name"):
        create_study(EXP, replace(scfg, gflops_budget=0.05))


@pytest.mark.parametrize("change, field", [
    (lambda e, s: (e, replace(s, fn=SLOW)), "search"),
    (lambda e, s: (replace(e, tome=replace(e.tome, prop_attn=False)), s), "tome"),
    (lambda e, s: (replace(e, tome=replace(e.tome, combine="mean")), s), "tome"),
    (lambda e, s: (replace(e, eval=replace(e.eval, dtype="bf16")), s), "eval"),
    (lambda e, s: (replace(e, data=replace(e.data, limit=16)), s), "data"),
    (lambda e, s: (replace(e, data=replace(e.data, name="digits")), s), "data"),
    (lambda e, s: (replace(e, seed=1), s), "seed"),
])
def test_a_resumed_study_refuses_anything_that_decides_a_trial(change, field, tmp_path, spec):
    scfg = _scfg(tmp_path, trials=2, baselines=False)
    create_study(EXP, scfg, spec)
    exp2, scfg2 = change(EXP, scfg)
    with pytest.raises(ValueError, match=f"other settings \\({field}: .*new --search.name"):
        create_study(exp2, replace(scfg2, name="t"), spec)


def test_a_resumed_study_refuses_retrained_weights_and_a_new_generator(tmp_path, spec,
                                                                        monkeypatch):
    from tome_lab.registry import DATASETS

    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"v1")
    exp = replace(EXP, model=replace(EXP.model, checkpoint=str(ckpt)))
    scfg = _scfg(tmp_path, trials=2, baselines=False)
    create_study(exp, scfg, spec)
    create_study(exp, replace(scfg, trials=9), spec)  # more trials, same study
    ckpt.write_bytes(b"v2")
    with pytest.raises(ValueError, match="weights: "):
        create_study(exp, scfg, spec)
    exp = replace(EXP, data=replace(EXP.data, name="clutter"))
    scfg = _scfg(tmp_path, name="c", trials=2, baselines=False)
    create_study(exp, scfg, spec)
    create_study(replace(exp, data=replace(exp.data, batch_size=7)), scfg, spec)  # loader only
    monkeypatch.setattr(DATASETS.get("clutter"), "version", "changed")
    with pytest.raises(ValueError, match="data_version: "):
        create_study(exp, scfg, spec)


def test_a_failing_trial_is_recorded_and_counts(tmp_path):
    scfg = _scfg(tmp_path, trials=3, baselines=False, fn="test_search:no_such_fn")
    create_study(EXP, scfg)
    with pytest.raises(ValueError, match="cannot load point function"):
        run_worker(EXP, scfg)
    scfg = _scfg(tmp_path, name="boom", trials=3, baselines=False,
                 fn="test_search:broken_point")
    create_study(EXP, scfg)
    assert run_worker(EXP, scfg) == 3
    df = _records(scfg)
    assert list(df.status) == ["failed"] * 3
    assert df.error.str.contains("RuntimeError: exploded").all()


def broken_point(cfg: ExperimentConfig) -> dict:
    raise RuntimeError("exploded")


# --------------------------------------------------------------------------- workers, kills


class _Trial:
    def __init__(self, beat, start=None):
        self.system_attrs = {"tome_lab:heartbeat": beat} if beat else {}
        import datetime

        self.datetime_start = datetime.datetime.fromtimestamp(start or time.time())


def test_stale_means_a_dead_process_here_or_a_silent_one_anywhere():
    import socket

    host, now = socket.gethostname(), time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert is_stale(_Trial({"host": host, "pid": dead.pid, "time": now}), 60)
    assert not is_stale(_Trial({"host": host, "pid": os.getppid(), "time": now}), 60)
    assert not is_stale(_Trial({"host": "elsewhere", "pid": dead.pid, "time": now - 30}), 60)
    assert is_stale(_Trial({"host": "elsewhere", "pid": 1, "time": now - 61}), 60)
    assert is_stale(_Trial(None, start=now - 61), 60)
    assert not is_stale(_Trial(None, start=now - 5), 60)


_WORKER = """
import sys
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig
from tome_lab.search import SearchConfig, create_study, run_worker
exp = ExperimentConfig(data=DataConfig(limit=32, batch_size=32),
                       eval=EvalConfig(speed=False, threads=1))
scfg = SearchConfig(name="t", trials=int(sys.argv[2]), out=sys.argv[1], sampler="random",
                    fn="test_search:slow_point", baselines=False, heartbeat_s=5.0,
                    grace_s=30.0)
create_study(exp, scfg)
run_worker(exp, scfg)
"""


@pytest.mark.full  # worker processes, 1 s trials
def test_sigkill_mid_search_then_rerun_loses_and_doubles_nothing(tmp_path):
    scfg = _scfg(tmp_path, trials=6, fn=SLOW, sampler="random", baselines=False)
    cmd = [sys.executable, "-c", _WORKER, str(tmp_path), "6"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    running = None
    while time.time() < deadline:  # kill it while a trial runs, after two have finished
        time.sleep(0.2)
        if not (tmp_path / "t.journal").exists():
            continue
        trials = _study(scfg).trials
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        # all its parameters drawn: the worker is in the point function, not writing the
        # journal (a kill inside a journal write leaves Optuna's lock file for 30 s)
        running = [t for t in trials if t.state == TrialState.RUNNING and len(t.params) == 12]
        if len(done) >= 2 and running:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and running
    killed = running[0]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL, timeout=120)
    study = _study(scfg)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6  # the killed trial did not use up the budget
    stale = study.trials[killed.number]
    assert stale.state == TrialState.FAIL and "error" not in stale.user_attrs
    retried = [t for t in done if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params  # not lost
    df = _records(scfg)
    assert len(df) == 6 and set(df.status) == {"ok"}  # one record per finished trial
    assert sorted(df.trial) == sorted(t.number for t in done)
    assert killed.number not in set(df.trial)


@pytest.mark.full  # local launcher: worker processes, 1 s trials
def test_two_local_workers_share_one_journal(tmp_path, monkeypatch):
    from tome_lab.launch import LaunchConfig

    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))  # the workers import test_search
    scfg = _scfg(tmp_path, trials=10, fn=SLOW, sampler="tpe", baselines=False, workers=2)
    create_study(EXP, scfg)
    ran = run_workers(EXP, scfg, LaunchConfig(launcher="local"))
    study = _study(scfg)
    assert ran == 10 == len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert budget_used(study) == 10 == len(study.trials)
    df = _records(scfg)
    assert len(df) == 10 and df["env.pid"].nunique() == 2  # both processes did trials


# --------------------------------------------------------------------------- the frontier


def test_dominates_and_hypervolume_by_hand():
    dirs = ["maximize", "minimize"]
    assert dominates((90, 1.0), (80, 2.0), dirs) and dominates((90, 1.0), (90, 2.0), dirs)
    assert not dominates((90, 1.0), (90, 1.0), dirs) and not dominates((95, 2.0), (90, 1.0),
                                                                       dirs)
    # two rectangles over reference (0, 1): [0.2, 1) x 90 and [0.1, 0.2) x 50
    assert hypervolume([(90, 0.2), (50, 0.1)], (0, 1)) == pytest.approx(0.8 * 90 + 0.1 * 50)
    assert hypervolume([(90, 0.2), (80, 0.5)], (0, 1)) == pytest.approx(0.8 * 90)
    assert hypervolume([(90, 1.2)], (0, 1)) == 0.0


# --------------------------------------------------------------------------- real evaluator


@pytest.mark.full  # the real evaluator and fvcore
def test_search_on_the_embedded_model_and_pareto_yaml_feeds_evaluate(tmp_path, spec):
    from tome_lab.evaluate import evaluate

    scfg = SearchConfig(name="real", trials=3, out=str(tmp_path), baselines=False,
                        sampler="random")  # three sampled schedules, really evaluated
    summary = search(EXP, scfg)
    df = _records(scfg)
    assert len(df) == 3 and set(df.status) == {"ok"}
    # the analytic count is the fvcore count of the patched model (bipartite, default knobs)
    assert (df.gflops - df.gflops_fvcore).abs().max() < 1e-9
    d = yaml.safe_load(Path(summary["pareto_yaml"]).read_text())
    cfg = from_dict(ExperimentConfig, {k: v for k, v in d.items() if k != "sweep"})
    first = summary["pareto"][0]
    assert list(cfg.tome.r) == first["schedule"] and cfg.data.split == "test"
    assert evaluate(cfg)["top1"] == pytest.approx(first["top1_test"])
    from tome_lab.models import create_model

    model = tome_lab.apply_tome(create_model(cfg.model), r=d["tome"]["r"])
    model(torch.zeros(1, 1, 32, 32))
    assert tome_lab.tome_state(model).tokens == tokens_per_layer(spec, d["tome"]["r"])
    assert isinstance(ToMeConfig(r=d["tome"]["r"]).r, tuple)


# --------------------------------------------------------------------------- command line


def _cli(tmp_path, *extra):
    return ["--data.limit", "32", "--search.name", "cli", "--search.out", str(tmp_path),
            "--search.fn", FAKE, *extra]


def test_command_line_runs_a_search_and_prints_the_frontier(tmp_path, capsys, spec):
    from tome_lab.search import main

    n = 16 + len(baselines(spec))
    assert main(_cli(tmp_path, "--search.trials", "16", "--search.sampler", "random")) == 0
    out = capsys.readouterr().out
    assert "Pareto schedules" in out and "constant-r4" in out and "decreasing-r3" in out
    assert len(results.load(tmp_path / "cli")) == n
    assert (tmp_path / "cli-pareto.yaml").is_file()
    # the same command again resumes: nothing new runs
    assert main(_cli(tmp_path, "--search.trials", "16", "--search.sampler", "random")) == 0
    assert len(_study(_scfg(tmp_path, name="cli")).trials) == n


@pytest.mark.parametrize("extra, message", [
    (("--search.sampler", "cmaes"), "valid: tpe, nsga2, random"),
    (("--search.workers", "2"), "needs --launcher local or slurm"),
    (("--search.objectives", "[top1,img_per_s]"), "eval.speed"),
    (("--search.fn", "nowhere:fn"), "cannot load point function"),
    (("--launcher", "cluster"), "launcher"),
])
def test_command_line_bad_input_exits_2(tmp_path, capsys, extra, message):
    from tome_lab.search import main

    assert main(_cli(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--search.split", "vall"), "unknown search.split 'vall'; valid: train, val, test"),
    (("--search.test_split", "tset"), "unknown search.test_split 'tset'"),
    (("--search.gflops_budget", "0.001"), "below the cheapest schedule of the search space"),
    (("--search.storage", "postgresql+nosuchdriver://u@h/db"), "not a database URL"),
    (("--search.storage", "mysql+mysqldb://u@h/db"), "driver that is not installed"),
])
def test_bad_search_input_exits_2_and_leaves_nothing_behind(tmp_path, capsys, extra, message):
    from tome_lab.search import main

    out = tmp_path / "out"
    assert main(_cli(out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(Path.cwd().glob("*.journal"))


def test_the_cheapest_trial_bounds_the_budget(tmp_path, spec):
    from tome_lab.search import cheapest_gflops, preflight

    scfg = _scfg(tmp_path)
    low = cheapest_gflops(EXP, scfg, spec)
    r = effective(spec, [spec.num_tokens] * spec.depth)
    assert low == pytest.approx(analytic_gflops(spec, r))
    rng = torch.Generator().manual_seed(0)  # no schedule of the space is cheaper
    for _ in range(300):
        s = effective(spec, torch.randint(0, spec.num_tokens, (spec.depth,), generator=rng))
        assert analytic_gflops(spec, s) >= low - 1e-12
    preflight(EXP, replace(scfg, gflops_budget=low * 1.0001), spec)  # reachable: no error
    with pytest.raises(ValueError, match="below the cheapest"):
        preflight(EXP, replace(scfg, gflops_budget=low * 0.999), spec)
    # a dearer knob raises the floor only when every choice is dearer
    x_only = replace(scfg, knobs={"feature": ["x"]})
    assert cheapest_gflops(EXP, x_only, spec) > low
    assert cheapest_gflops(EXP, replace(scfg, knobs={"feature": ["x", "k"]}), spec) == low


def test_print_config_has_the_search_section(capsys):
    from tome_lab.search import main

    assert main(["--print_config", "--search.trials", "7"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert d["search"]["trials"] == 7 and d["search"]["split"] == "val"
    assert set(d) >= {"model", "data", "tome", "eval", "search"}


def test_optuna_dashboard_reads_the_study_journal(tmp_path):
    import json
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    scfg = _scfg(tmp_path, trials=2, baselines=False, sampler="random")
    search(EXP, scfg, test=False)
    app = wsgi(storage_spec(scfg, "t"))  # a journal file path, as on the command line
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/api/studies"
    status: list = []

    def get(path: str) -> dict:
        environ["PATH_INFO"] = path
        body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
        assert status[-1].startswith("200")
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["t"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 2 and 1 <= len(detail["best_trials"]) <= 2


def test_an_rdb_url_is_used_as_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    scfg = _scfg(tmp_path, trials=3, baselines=False, sampler="random", storage=url)
    search(EXP, scfg, test=False)
    study = optuna.load_study(study_name="t", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert not (tmp_path / "t.journal").exists() and len(_records(scfg)) == 3


def test_report_picks_the_baseline_on_the_search_split_not_on_test():
    from tome_lab.search import format_report

    base = [  # "constant" is better on test, "decreasing" on val: val must decide
        {"label": "constant", "gflops": 0.10, "top1_val": 90.0, "top1_test": 95.0},
        {"label": "decreasing", "gflops": 0.10, "top1_val": 92.0, "top1_test": 91.0},
        {"label": "dearer", "gflops": 0.50, "top1_val": 99.0, "top1_test": 99.0},
    ]
    summary = {"study": "s", "trials": 3, "pareto_yaml": "p.yaml", "baselines": base,
               "pareto": [{"schedule": [1, 2], "gflops": 0.12, "top1_val": 93.0,
                           "top1_test": 92.0}]}
    text = format_report(summary, SearchConfig())
    row = text.split("Pareto schedules")[1].splitlines()[2]
    assert "decreasing" in row and "constant" not in row and "dearer" not in row


def test_under_a_budget_the_baselines_are_the_dearest_feasible_of_each_kind(tmp_path, spec):
    from tome_lab.registry import SCHEDULES

    budget = 0.07
    study = create_study(EXP, _scfg(tmp_path, trials=2, gflops_budget=budget))
    queued = {t.user_attrs["baseline"]: t for t in study.get_trials(states=(TrialState.WAITING,))}
    want = {}
    for kind in ("constant", "decreasing"):  # brute force over r with the plain count
        costs = {r: analytic_gflops(spec, SCHEDULES.get(kind)(r, spec)) for r in range(40)}
        want[kind] = min(r for r, g in costs.items() if g <= budget)  # the least merging
    assert sorted(queued) == [f"constant r={want['constant']}",
                              f"decreasing r={want['decreasing']}"]
    unbudgeted = create_study(EXP, _scfg(tmp_path / "all", trials=2))
    assert len(unbudgeted.get_trials(states=(TrialState.WAITING,))) > 10


def test_a_study_recorded_before_a_config_field_existed_resumes_at_its_default(tmp_path):
    """A field added to the configuration later, at its default, does not orphan a study;
    the same field set to another value, or a changed field, is still refused."""
    scfg = _scfg(tmp_path, trials=2, baselines=False)
    study = create_study(EXP, scfg)
    ident = dict(study.user_attrs["identity"])
    ident["tome"] = {k: v for k, v in ident["tome"].items() if k != "combine"}  # "older"
    study.set_user_attr("identity", ident)
    create_study(EXP, scfg)  # combine="wavg" is the default: same computation, resumes
    with pytest.raises(ValueError, match="new --search.name"):
        create_study(replace(EXP, tome=replace(EXP.tome, combine="mean")), scfg)
    with pytest.raises(ValueError, match="new --search.name"):
        create_study(replace(EXP, tome=replace(EXP.tome, prop_attn=False)), scfg)
