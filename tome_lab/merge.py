"""Pure tensor operations of Token Merging: no modules, no state.

A matcher computes a matching once per block and returns two functions, ``merge(x, mode)``
([B, N, C] -> [B, N - r, C]) and ``unmerge(x)`` ([B, N - r, C] -> [B, N, C]); size-weighted
averaging (:func:`merge_wavg`) and source tracing (:func:`merge_source`) reuse the same
``merge``. This is the contract of Bolya et al., "Token Merging: Your ViT But Faster"
(ICLR 2023), written anew here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MergeFn = Callable[..., Tensor]

DISTANCES = ("cosine", "dot", "euclidean")


def do_nothing(x: Tensor, mode: str | None = None) -> Tensor:
    """The identity ``merge`` / ``unmerge`` used when a block merges nothing."""
    return x


def similarity(a: Tensor, b: Tensor, distance: str = "cosine") -> Tensor:
    """Pairwise similarity, higher is more alike.

    Args:
        a: [B, Na, C] features of set A.
        b: [B, Nb, C] features of set B.
        distance: ``cosine`` (zero-norm rows guarded), ``dot`` or ``euclidean`` (negated
            squared distance, so that larger still means closer).

    Returns:
        [B, Na, Nb] scores.
    """
    if distance == "cosine":
        a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return a @ b.transpose(-1, -2)
    if distance == "dot":
        return a @ b.transpose(-1, -2)
    if distance == "euclidean":
        # -(|a|^2 - 2ab + |b|^2): one matmul instead of a [B, Na, Nb, C] difference tensor
        ab = a @ b.transpose(-1, -2)
        return 2 * ab - a.pow(2).sum(-1, keepdim=True) - b.pow(2).sum(-1).unsqueeze(-2)
    raise ValueError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")


def _join(unm: Tensor, dst: Tensor, num_prefix: int, b_prefix: int) -> Tensor:
    """Concatenates [unmerged A, B] while keeping the protected prefix first, in order.

    The first ``num_prefix - b_prefix`` rows of ``unm`` and the first ``b_prefix`` rows of
    ``dst`` are protected tokens that an alternating split dealt into A and B in turn.
    """
    if b_prefix == 0:
        return torch.cat([unm, dst], dim=1)
    head = [unm[:, i // 2: i // 2 + 1] if i % 2 == 0 else dst[:, i // 2: i // 2 + 1]
            for i in range(num_prefix)]
    return torch.cat([*head, unm[:, num_prefix - b_prefix:], dst[:, b_prefix:]], dim=1)


def _unjoin(x: Tensor, n_unm: int, num_prefix: int, b_prefix: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_join`: splits [B, N - r, C] back into (unm, dst)."""
    if b_prefix == 0:
        return x[:, :n_unm], x[:, n_unm:]
    a_prefix = num_prefix - b_prefix
    unm_head = x[:, 0:num_prefix:2]  # prefix positions 0, 2, 4 ... came from A
    dst_head = x[:, 1:num_prefix:2]
    rest = x[:, num_prefix:]
    unm = torch.cat([unm_head, rest[:, : n_unm - a_prefix]], dim=1)
    dst = torch.cat([dst_head, rest[:, n_unm - a_prefix:]], dim=1)
    return unm, dst


def _rows(idx: Tensor, num_tokens: int) -> Tensor:
    """[B, K] positions within each of B sequences of ``num_tokens`` -> [B * K] row numbers of
    the sequences stacked as one [B * num_tokens, C] matrix (what ``index_select`` takes)."""
    if idx.shape[0] == 1:
        return idx.reshape(-1)
    offsets = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1) * num_tokens
    return (idx + offsets).reshape(-1)


def _take(x: Tensor, rows: Tensor) -> Tensor:
    """The rows ``rows`` of the stacked [B * N, C] view of x, as [B, K, C].

    ``index_select`` copies whole rows; ``gather`` with an index expanded over the channels
    reads element by element, slowest from a strided view such as ``x[:, ::2]``
    (``benchmarks/merge_kernels.py`` times the two).
    """
    n, _, c = x.shape
    return x.reshape(-1, c).index_select(0, rows).view(n, -1, c)


def bipartite_merge_fns(
    unm_idx: Tensor,
    src_idx: Tensor,
    dst_idx: Tensor,
    num_tokens: int,
    num_prefix: int = 0,
    b_prefix: int = 0,
    a_idx: Tensor | None = None,
    b_idx: Tensor | None = None,
) -> tuple[MergeFn, MergeFn]:
    """Builds ``merge`` / ``unmerge`` for a matching between two token sets A and B.

    Args:
        unm_idx: [B, Na - r] indices into A of tokens kept, in output order.
        src_idx: [B, r] indices into A of tokens merged away.
        dst_idx: [B, r] indices into B of the token each source merges into (never one of
            the ``b_prefix`` protected tokens).
        num_tokens: N, the tokens in the sequence being merged.
        num_prefix: protected tokens at the head of the sequence.
        b_prefix: how many of them an alternating split put in B (0 otherwise).
        a_idx: [B, Na] positions of set A in the sequence, or None for the even positions
            (the published split, prefix included). Explicit sets exclude the prefix,
            which then stays in front untouched.
        b_idx: [B, Nb] positions of set B, or None for the odd positions.

    Returns:
        ``merge(x, mode="mean")`` with ``mode`` ``sum``, ``mean``, ``amax``, ``amin`` or
        ``prod`` (how a destination combines with its sources, itself included) or ``keep``
        (destinations keep their value, sources are dropped), and ``unmerge(x)`` which copies
        each merged token back to every position it came from.
    """
    n_batch, n_unm = unm_idx.shape
    r = src_idx.shape[1]
    head = 0 if a_idx is None else num_prefix  # explicit sets leave the prefix out of both
    # Computed once for every merge of this matching (tokens, sizes, sources): the sequence
    # positions of the output tokens in output order, and of the sources.
    if a_idx is None:  # A = even positions, B = odd ones
        odd = torch.arange(1, num_tokens, 2, device=unm_idx.device).expand(n_batch, -1)
        keep_pos = _join(unm_idx * 2, odd, num_prefix, b_prefix)  # (B, N - r)
        src_pos = src_idx * 2
    else:
        prefix = torch.arange(head, device=a_idx.device).expand(n_batch, head)
        keep_pos = torch.cat([prefix, a_idx.gather(1, unm_idx), b_idx], dim=1)
        src_pos = a_idx.gather(1, src_idx)
    keep_rows = _rows(keep_pos, num_tokens)
    src_rows = _rows(src_pos, num_tokens)
    # the output holds B's unprotected tokens after the unmerged A tokens (see _join), so B's
    # token j (never a protected one) is output token head + n_unm + j of keep_pos's tokens
    dst_rows = _rows(dst_idx + (head + n_unm), keep_pos.shape[1])

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        n, _, c = x.shape
        flat = x.reshape(-1, c)  # (B * N, C)
        out = flat.index_select(0, keep_rows)  # (B * (N - r), C): prefix, unmerged A, B
        if mode == "sum":
            out.index_add_(0, dst_rows, flat.index_select(0, src_rows))
        elif mode != "keep":
            out.scatter_reduce_(0, dst_rows.unsqueeze(1).expand(-1, c),
                                flat.index_select(0, src_rows), reduce=mode)
        return out.view(n, -1, c)

    def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # merge_wavg touching only the merged rows beyond the one copy of the kept rows: an
        # unmerged token's weighted average is itself, and a destination d with sources e
        # becomes x_d + sum_e s_e (x_e - x_d) / S_d, S_d its size after the merge
        n, _, c = x.shape
        flat = x.reshape(-1, c)  # merge_wavg has promoted x to the dtype x * size has
        out = flat.index_select(0, keep_rows)  # (B * (N - r), C)
        if size is None:
            s_out, s_src = x.new_ones(out.shape[0], 1), x.new_ones(src_rows.shape[0], 1)
        else:
            s_flat = size.reshape(-1, 1)
            s_out, s_src = s_flat.index_select(0, keep_rows), s_flat.index_select(0, src_rows)
        s_out.index_add_(0, dst_rows, s_src)
        w = s_src / s_out.index_select(0, dst_rows)  # (B * r, 1): s_e / S_d
        if w.dtype != x.dtype:  # integer sizes divide to float32
            w = w.to(x.dtype)
        step = (flat.index_select(0, src_rows) - out.index_select(0, dst_rows)) * w
        out.index_add_(0, dst_rows, step)
        return out.view(n, -1, c), s_out.view(n, -1, 1)

    def unmerge(x: Tensor) -> Tensor:
        n, _, c = x.shape
        unm, b = _unjoin(x[:, head:], n_unm, num_prefix if not head else 0, b_prefix)
        na = n_unm + r
        src = b.gather(1, dst_idx[..., None].expand(n, r, c))
        a = x.new_zeros(n, na, c)
        a = a.scatter(1, unm_idx[..., None].expand(n, n_unm, c), unm)
        a = a.scatter(1, src_idx[..., None].expand(n, r, c), src)
        out = x.new_zeros(n, na + b.shape[1], c)
        if a_idx is None:
            out[:, ::2] = a
            out[:, 1::2] = b
        else:
            out = x.new_zeros(n, head + na + b.shape[1], c)
            out[:, :head] = x[:, :head]
            out = out.scatter(1, a_idx[..., None].expand(-1, -1, c), a)
            out = out.scatter(1, b_idx[..., None].expand(-1, -1, c), b)
        return out

    merge.wavg = wavg  # merge_wavg's fast path
    return merge, unmerge


def merge_wavg(merge: MergeFn, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Size-weighted average of merged tokens.

    A ``merge`` from :func:`bipartite_merge_fns` carries its own version as ``merge.wavg``,
    which copies the kept rows once and then updates only the destinations (one from
    :func:`truncate_fns` only slices), called with x already in the dtype ``x * size`` has;
    any other ``merge`` goes through three passes (``x * size``, a summing merge, the
    division).

    Args:
        merge: a ``merge`` function from a matcher.
        x: [B, N, C] tokens.
        size: [B, N, 1] how many input patches each token stands for (None: all ones).

    Returns:
        ([B, N - r, C] merged tokens, [B, N - r, 1] their sizes).
    """
    fast = getattr(merge, "wavg", None)  # bipartite: merged rows only; truncate: a slice
    if fast is not None:
        if size is not None and size.dtype != x.dtype:  # the dtype x * size would have
            x = x.to(torch.promote_types(x.dtype, size.dtype))
        return fast(x, size)
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
        x = merge(x, mode="sum")
    else:
        x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def merge_source(merge: MergeFn, x: Tensor, source: Tensor | None = None) -> Tensor:
    """Tracks which input patches each token holds.

    Args:
        merge: a ``merge`` function from a matcher.
        x: [B, N, C] tokens (used for shape, device and dtype when ``source`` is None).
        source: [B, N, N0] 0/1 membership of each token over the N0 input tokens.

    Returns:
        [B, N - r, N0] membership after the merge.
    """
    if source is None:
        n, t, _ = x.shape
        source = torch.eye(t, device=x.device, dtype=x.dtype)[None].expand(n, t, t)
    return merge(source, mode="amax")


# The most tokens one block may remove, as a function of its M unprotected tokens, by the kind
# of reduction (a plug-in declares its kind, ``Capabilities.bound``): a bipartite matching
# pairs at most half of them; any other reduction keeps at least one.
BOUNDS: dict[str, Callable[[int], int]] = {
    "half": lambda m: m // 2,
    "all_but_one": lambda m: max(m - 1, 0),
}


def max_r(bound: str, num_tokens: int, num_prefix: int) -> int:
    """The most tokens a block of ``num_tokens`` (``num_prefix`` protected) may remove under
    ``bound`` (a key of :data:`BOUNDS`)."""
    return BOUNDS[bound](max(num_tokens - num_prefix, 0))


def clamp_r(r: int, num_tokens: int, num_prefix: int, bound: str = "half") -> int:
    """The r a block can actually remove: at most :func:`max_r` (half of its unprotected
    tokens for a bipartite matching)."""
    return max(0, min(r, max_r(bound, num_tokens, num_prefix)))


def group_merge_fns(assign: Tensor, n_out: int, rep_idx: Tensor | None = None
                    ) -> tuple[MergeFn, MergeFn]:
    """``merge`` / ``unmerge`` for any grouping of tokens (k-means, greedy, random).

    Args:
        assign: [B, N] output position of each input token's group (0 .. n_out - 1).
        n_out: tokens after merging.
        rep_idx: [B, n_out] one member per group, the token ``mode="keep"`` keeps (None if
            the grouping has no natural representative).
    """
    rep_rows = None if rep_idx is None else _rows(rep_idx, assign.shape[1])
    group_rows = _rows(assign, n_out)  # input token -> row of its group in the stacked output

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        n, _, c = x.shape
        if mode == "keep":
            if rep_rows is None:
                raise ValueError("this matching has no destination token to keep")
            return _take(x, rep_rows)
        out, flat = x.new_zeros(n * n_out, c), x.reshape(-1, c)
        if mode == "sum":
            out.index_add_(0, group_rows, flat)
        else:
            out.scatter_reduce_(0, group_rows.unsqueeze(1).expand(-1, c), flat, reduce=mode,
                                include_self=False)
        return out.view(n, n_out, c)

    def unmerge(x: Tensor) -> Tensor:
        return _take(x, group_rows)

    return merge, unmerge


def prune_fns(keep_idx: Tensor, num_tokens: int) -> tuple[MergeFn, MergeFn]:
    """``merge`` that drops tokens (pruning) and ``unmerge`` that puts zeros back.

    Args:
        keep_idx: [B, N - r] positions kept, ascending (so a protected prefix stays first).
        num_tokens: N, the token count before pruning.
    """

    keep_rows = _rows(keep_idx, num_tokens)

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        return _take(x, keep_rows)

    def unmerge(x: Tensor) -> Tensor:
        n, _, c = x.shape
        out = x.new_zeros(n, num_tokens, c)
        return out.scatter(1, keep_idx[..., None].expand(-1, -1, c), x)

    return merge, unmerge


def truncate_fns(num_tokens: int, r: int) -> tuple[MergeFn, MergeFn]:
    """``merge`` that keeps the first N - r tokens as a view, and ``unmerge`` that puts zeros
    back in place of the last r.

    A dropped token has no destination, so every ``mode`` leaves the kept tokens as they are;
    ``merge.wavg`` slices the sizes too, without the three passes of :func:`merge_wavg`.

    Args:
        num_tokens: N, the token count before truncation.
        r: tokens dropped from the end (0 <= r < N).
    """
    n_out = num_tokens - r

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        return x[:, :n_out]

    def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if size is None:
            return x[:, :n_out], x.new_ones(x.shape[0], n_out, 1)
        return x[:, :n_out], size[:, :n_out]

    def unmerge(x: Tensor) -> Tensor:
        n, _, c = x.shape
        return torch.cat([x, x.new_zeros(n, r, c)], dim=1)

    merge.wavg = wavg
    return merge, unmerge
