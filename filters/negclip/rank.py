"""Exact, deterministic ranking for negCLIPLoss / NormSim selections.

Top n = int(N * fraction) rows by score descending, ties broken by uid ascending (the reference's
argpartition/topk ties are arbitrary); n = 0 selects nothing (the reference's ``[-0:]`` selects all).
NaN scores rank last. Cost: one O(N) partition plus a sort of the tied rows only.
"""

from __future__ import annotations

import numpy as np

from clipsift.errors import ParamError


def count_for(total: int, fraction: float) -> int:
    """int(N * fraction) with Python float semantics, as the reference computes it."""
    return int(total * fraction)


def top_n(scores: np.ndarray, uids: np.ndarray, n: int) -> np.ndarray:
    """Indices (ascending) of the n highest scores; equal scores are taken in uid order."""
    total = len(scores)
    if n <= 0 or total == 0:
        return np.empty(0, dtype=np.int64)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    kth = np.partition(s, total - n)[total - n]
    above = np.flatnonzero(s > kth)
    ties = np.flatnonzero(s == kth)
    need = n - len(above)
    if len(ties) > need:
        tie_uids = uids[ties]
        ties = ties[np.lexsort((tie_uids["f1"], tie_uids["f0"]))[:need]]
    return np.sort(np.concatenate([above, ties]))


def select(scores: np.ndarray, uids: np.ndarray, *, fraction: float | None = None, threshold: float | None = None, total: int | None = None) -> np.ndarray:
    """Indices kept by a fraction of ``total`` (default: len(scores)) or by ``score >= threshold``."""
    if (fraction is None) == (threshold is None):
        raise ParamError("give exactly one of fraction or threshold")
    if threshold is not None:
        return np.flatnonzero(np.asarray(scores) >= threshold)
    return top_n(scores, uids, count_for(len(scores) if total is None else total, fraction))
