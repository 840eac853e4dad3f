"""How bipartite-style matchers split tokens into sets A (sources) and B (destinations).

A partition plug-in is ``fn(n, num_prefix, batch, device) -> (a_idx, b_idx) | None``: the
[B, Na] and [B, Nb] sequence positions of A and B among the unprotected tokens, ascending
(together every unprotected token once),
or None for the published alternate split over the whole sequence (prefix included).
Paper, Table 1e: alternating works best.
"""

from __future__ import annotations

from tome_lab.registry import PARTITIONS, import_submodules

import_submodules(__name__)

__all__ = ["PARTITIONS"]
