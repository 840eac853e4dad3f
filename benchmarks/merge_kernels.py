"""One merge, two ways: the engine's row ``index_select`` / ``index_add_`` against ``gather`` /
``scatter_reduce`` from the strided A / B views (how the paper's code and this engine before
it moved tokens), timed interleaved on the same matching; and one size-weighted average, two
ways: the engine's, which copies the kept rows once and then touches only the merged ones,
against three passes over the tokens (``x * size``, the summing merge, the division; how the
paper's code and this engine before it averaged).

Run from the repository root (the command recorded in benchmarks/README.md):

    .venv/bin/python benchmarks/merge_kernels.py --threads 2

DeiT-S sizes: 197 tokens (class token first) of 384 channels, r = 16, a matching drawn at
random, token sizes drawn from 1-4; both ways must give the same tokens (checked before
timing). Prints, for each batch size, the median microseconds of one summing merge
(``merge(x, "sum")``) each way and of one size-weighted average each way, and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from tome_lab.merge import bipartite_merge_fns, merge_wavg
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
               ) -> dict[str, float]:
    """Median microseconds of one call: ``rows`` / ``gather`` (summing merge) and
    ``wavg_rows`` / ``wavg_passes`` (size-weighted average)."""
    x = torch.randn(batch, tokens, channels)  # (B, N, C), e.g. x * size
    size = torch.randint(1, 5, (batch, tokens, 1)).float()
    unm, src, dst = _matching(batch, tokens, r)
    merge, _ = bipartite_merge_fns(unm, src, dst, tokens, num_prefix=1)

    def plain(t: torch.Tensor, mode: str = "mean") -> torch.Tensor:  # no merged-rows path
        return merge(t, mode)

    torch.testing.assert_close(merge(x, "sum"), gather_merge(x, unm, src, dst))
    torch.testing.assert_close(merge_wavg(merge, x, size), merge_wavg(plain, x, size))
    fns = {"rows": lambda: merge(x, "sum"), "gather": lambda: gather_merge(x, unm, src, dst),
           "wavg_rows": lambda: merge_wavg(merge, x, size),
           "wavg_passes": lambda: merge_wavg(plain, x, size)}

    with torch.inference_mode():
        times = interleaved_times(fns, rounds, warmup=1, calls=calls)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=50, help="calls of each per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| batch | summing merge: rows / gather (us) | ratio "
          "| size-weighted average: merged rows / three passes (us) | ratio |")
    print("|---|---|---|---|---|")
    out = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        us = time_batch(batch, args.tokens, args.channels, args.r, args.rounds, args.calls)
        out.append(dict(batch=batch, rows_us=us["rows"], gather_us=us["gather"],
                        ratio=us["gather"] / us["rows"], wavg_rows_us=us["wavg_rows"],
                        wavg_passes_us=us["wavg_passes"],
                        wavg_ratio=us["wavg_passes"] / us["wavg_rows"]))
        print(f"| {batch} | {us['rows']:.0f} / {us['gather']:.0f} | "
              f"{us['gather'] / us['rows']:.2f}x | {us['wavg_rows']:.0f} / "
              f"{us['wavg_passes']:.0f} | {us['wavg_passes'] / us['wavg_rows']:.2f}x |",
              flush=True)
    if args.json:
        write_json_atomic(args.json, dict(argv=sys.argv, env=environment(), tokens=args.tokens,
                                          channels=args.channels, r=args.r, rows=out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
