"""One merge, two ways: the engine's row ``index_select`` / ``index_add_`` against ``gather`` /
``scatter_reduce`` from the strided A / B views (how the paper's code and this engine before
it moved tokens), timed interleaved on the same matching.

Run from the repository root (the command recorded in benchmarks/README.md):

    .venv/bin/python benchmarks/merge_kernels.py --threads 2

DeiT-S sizes: 197 tokens (class token first) of 384 channels, r = 16, a matching drawn at
random; both ways must give the same tokens (checked before timing). Prints the median
microseconds of one summing merge (``merge(x, "sum")``, what the size-weighted average does to
``x * size``) for each batch size, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from tome_lab.merge import bipartite_merge_fns
from tome_lab.results import environment, write_json_atomic
from tome_lab.runtime import interleaved_times


def _matching(batch: int, n: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random bipartite matching with a class token heading A: (unm, src, dst) as [B, K]."""
    na, nb = (n + 1) // 2, n // 2
    order = torch.stack([torch.randperm(na - 1) + 1 for _ in range(batch)])  # class token out
    src = order[:, :r]
    unm = torch.cat([torch.zeros(batch, 1, dtype=torch.long), order[:, r:]], 1).sort(1).values
    dst = torch.randint(0, nb, (batch, r))
    return unm, src, dst


def gather_merge(x: torch.Tensor, unm: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
                 ) -> torch.Tensor:
    """The expanded-index way: gather from the strided A view, scatter-add into B, concatenate."""
    a, b = x[:, ::2], x[:, 1::2]
    n, _, c = x.shape
    kept = a.gather(1, unm[..., None].expand(n, -1, c))
    moved = a.gather(1, src[..., None].expand(n, -1, c))
    b = b.scatter_reduce(1, dst[..., None].expand(n, -1, c), moved, reduce="sum")
    return torch.cat([kept, b], dim=1)


def time_batch(batch: int, tokens: int, channels: int, r: int, rounds: int, calls: int
               ) -> tuple[float, float]:
    """Median microseconds of one merge: (index_select / index_add_, gather / scatter_reduce)."""
    x = torch.randn(batch, tokens, channels)  # (B, N, C), e.g. x * size
    unm, src, dst = _matching(batch, tokens, r)
    merge, _ = bipartite_merge_fns(unm, src, dst, tokens, num_prefix=1)
    torch.testing.assert_close(merge(x, "sum"), gather_merge(x, unm, src, dst))

    def rows() -> None:
        for _ in range(calls):
            merge(x, "sum")

    def gather() -> None:
        for _ in range(calls):
            gather_merge(x, unm, src, dst)

    with torch.inference_mode():
        times = interleaved_times({"rows": rows, "gather": gather}, rounds, warmup=0)
    us = {k: statistics.median(v) / calls * 1e6 for k, v in times.items()}
    return us["rows"], us["gather"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=50, help="merges per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| batch | index_select / index_add_ (us) | gather / scatter_reduce (us) | ratio |")
    print("|---|---|---|---|")
    out = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rows, gath = time_batch(batch, args.tokens, args.channels, args.r, args.rounds,
                                args.calls)
        out.append(dict(batch=batch, rows_us=rows, gather_us=gath, ratio=gath / rows))
        print(f"| {batch} | {rows:.0f} | {gath:.0f} | {gath / rows:.2f}x |", flush=True)
    if args.json:
        write_json_atomic(args.json, dict(argv=sys.argv, env=environment(), tokens=args.tokens,
                                          channels=args.channels, r=args.r, rows=out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
