"""The frontier: Pareto-optimal trials, their test re-scores, pareto.yaml and the report.

The Pareto-optimal schedules and the baselines are re-scored on ``search.test_split``
(``<out>/<study>-test/``); ``<out>/<study>-pareto.yaml`` is an ablation file of the Pareto
schedules (``python -m tome_lab.ablate --config``) whose ``tome.r`` is a plain per-layer list
for ``apply_tome(model, r=...)``. Dominance is :func:`tome_lab.stats.pareto_set`'s.

The same form carries (p, m) pairs (:func:`write_pairs_yaml`, written by the learned-rate
search :mod:`tome_lab.search.diffrate`): ``tome.matching: composite`` with
``tome.options.pairs`` the first entry's pairs, one ``[p, m]`` per block (prune p, then merge
m), and the sweep word ``pairs=...`` listing every entry. ``python -m tome_lab.evaluate
--config FILE`` runs the first entry (``--entry i`` the i-th), ``python -m tome_lab.ablate
--config FILE`` all of them, and :func:`load_front` gives each entry's ``apply_tome`` keywords
(``apply_tome(model, **entry)``), whichever form the file has.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tome_lab import results, stats
from tome_lab.config import ExperimentConfig, config_hash, to_dict
from tome_lab.flops import ViTSpec
from tome_lab.launch import resolve_fn
from tome_lab.search.config import PointFn, SearchConfig
from tome_lab.search.space import model_spec, trial_config, trial_gflops
from tome_lab.search.study import _quiet_optuna, open_storage, storage_spec
from tome_lab.search.trials import feasible, trial_knobs, trial_schedule, write_trial_record


def pareto_trials(study: Any) -> list[Any]:
    """The feasible complete trials no other feasible complete trial dominates, by GFLOPs."""
    from optuna.trial import TrialState

    dirs = ["maximize" if d.name == "MAXIMIZE" else "minimize" for d in study.directions]
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if feasible(t)]
    keep = stats.pareto_set([t.values for t in done], dirs)
    front = [t for t, k in zip(done, keep, strict=True) if k]
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


@dataclass(frozen=True)
class _Scored:
    """A test re-score as the launcher's identity sees a point."""

    config: ExperimentConfig
    key: str


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
    record = results.make_record(
        status="ok", key=key, name=label, overrides={"tome.r": list(r)}, config=config,
        identity=ident, metrics=metrics, error=None,
        env=results.environment(cfg.eval.device, cfg.eval.dtype), started=started,
        finished=results.now(), seconds=round(time.perf_counter() - t0, 3))
    results.write_point(pdir, record)
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


def write_pairs_yaml(path: str | Path, exp: ExperimentConfig,
                     entries: Sequence[Mapping[str, Any]], title: str) -> Path:
    """An ablation file of (p, m)-pair entries, cheapest first, in the Pareto file's form.

    Args:
        path: where to write it.
        exp: the base configuration (model, data, eval); its ToMe section becomes the
            composite reduction with the first entry's pairs.
        entries: each with ``pairs`` (one [p, m] per block) and ``gflops``; any ``top1_*``
            value is listed in the header.
        title: the header's description of where the entries come from.
    """
    path = Path(path)
    if not entries:
        raise ValueError("no entries to write")
    entries = sorted(entries, key=lambda e: e["gflops"])
    pairs = [[[int(p), int(m)] for p, m in e["pairs"]] for e in entries]
    tome = replace(exp.tome, matching="composite", schedule="constant",
                   options={**exp.tome.options, "pairs": pairs[0]})
    d = to_dict(replace(exp, tome=tome))  # validated: ToMeConfig implies schedule 'pairs'

    def text(v: Sequence[Sequence[int]]) -> str:
        return "[" + ",".join(f"[{p},{m}]" for p, m in v) + "]"

    d["sweep"] = ["pairs=" + ",".join(text(v) for v in pairs)]
    accs = sorted({k for e in entries for k in e if k.startswith("top1_")})
    lines = [f"# python -m tome_lab.ablate --config {path}",
             f"# {title}; cheapest first; tome.options.pairs is the first, for "
             f"apply_tome(model, matching='composite', pairs=...).",
             "# gflops  " + "  ".join(accs) + ("  " if accs else "") + "pairs [p, m] per block"]
    for e, v in zip(entries, pairs, strict=True):
        vals = "  ".join(f"{e.get(a)}" for a in accs)
        lines.append(f"# {e['gflops']:.4f}  {vals}{'  ' if accs else ''}{text(v)}")
    results.write_text_atomic(path, "\n".join(lines) + "\n" + yaml.safe_dump(d, sort_keys=False))
    return path


def load_front(path: str | Path) -> list[dict[str, Any]]:
    """The ``apply_tome`` keywords of every entry of a Pareto file (schedules or pairs), in
    the file's order: ``apply_tome(model, **entry)`` applies it.

    Raises:
        ValueError: the file is not an ablation file of valid ToMe settings.
    """
    from tome_lab.config import ToMeConfig
    from tome_lab.sweep import expand

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: not an ablation file (a YAML mapping)")
    words = list(data.pop("sweep", None) or [])
    defaults = ToMeConfig()
    out = []
    for point in expand(words, data):
        tome = point.config.tome
        entry: dict[str, Any] = {"r": list(tome.r) if isinstance(tome.r, tuple) else tome.r,
                                 "matching": tome.matching, "schedule": tome.schedule}
        for name in ("prop_attn", "distance", "feature", "head_agg", "combine", "partition",
                     "attn_impl"):
            if getattr(tome, name) != getattr(defaults, name):
                entry[name] = getattr(tome, name)
        entry.update(tome.options)
        out.append(entry)
    return out
