"""CPU img/s of every setting of the methods comparison's files (issue 24), for their img/s
column.

    python benchmarks/methods_speed.py --json benchmarks/tasks/methods_dots_speed.jsonl \\
        benchmarks/tasks/methods_dots_b15.jsonl benchmarks/tasks/methods_dots_b20.jsonl ...

Every distinct setting of the given ``benchmarks/paired_sweep.py`` files (one model; refused
rows skipped) is built as the paired sweep built it (zoo weights, ``seed=N`` seeding torch
first) and timed on one random batch of 32 at the model's input size, interleaved with the
unmerged model round by round (:func:`tome_lab.runtime.interleaved_times`, fp32, eager,
``--threads`` torch threads), so a slow spell of the shared machine hits all settings alike.
Written per setting: the median img/s over the rounds, the speed-up over the unmerged model
(ratio of medians) with the quartiles of the round-by-round ratio, and the environment. Run
it on a quiet machine (``uptime``), one timing job at a time. ``python -m tome_lab.report``
puts the img/s beside the accuracy in docs/methods.md's tables.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from paired_sweep import parse  # benchmarks/ is on sys.path when run as a script

import tome_lab
from tome_lab import results
from tome_lab.config import ModelConfig
from tome_lab.data import model_data_config
from tome_lab.models import create_model
from tome_lab.runtime import interleaved_times, ratio_quartiles, throughput

BASE = "unmerged"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="paired-sweep JSON-lines files of one model")
    ap.add_argument("--json", required=True, help="where to write one JSON line per setting")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [json.loads(ln) for f in args.files for ln in open(f) if ln.strip()]
    models = {r["model"] for r in rows}
    if len(models) != 1:
        raise SystemExit(f"give the files of one model at a time, got {sorted(models)}")
    name = models.pop()
    settings = list(dict.fromkeys(r["setting"] for r in rows if "refused" not in r))
    base = create_model(ModelConfig(name=name)).eval()
    x = torch.randn(args.batch, *model_data_config(base)["input_size"])
    fns = {BASE: base}
    for words in settings:
        kw = parse(words)
        torch.manual_seed(int(kw.pop("seed", 0)))
        fns[words] = tome_lab.apply_tome(copy.deepcopy(base), **kw)
    with torch.inference_mode():
        times = interleaved_times({k: (lambda m=m: m(x)) for k, m in fns.items()},
                                  repeats=args.repeats, warmup=2)
    speed = throughput(times, args.batch, BASE)
    env = results.environment("cpu", "fp32")
    out = []
    for words in [BASE, *settings]:
        q1, _, q3 = ratio_quartiles(times[words], times[BASE])
        out.append({"model": name, "setting": words, "batch": args.batch,
                    "threads": args.threads, "repeats": args.repeats,
                    "img_per_s": speed[words]["img_per_s"], "speedup": speed[words]["speedup"],
                    "speedup_q1": q1, "speedup_q3": q3, "env": env})
        print(f"{words}: {speed[words]['img_per_s']:.0f} img/s, "
              f"{speed[words]['speedup']:.2f}x [{q1:.2f}, {q3:.2f}]")
    results.write_text_atomic(args.json, "".join(json.dumps(r) + "\n" for r in out))


if __name__ == "__main__":
    main()
