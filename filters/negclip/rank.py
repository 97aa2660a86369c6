"""Exact, deterministic ranking for negCLIPLoss / NormSim selections.

Top n = int(N * fraction) (or ``count``) rows by score descending, ties broken by uid ascending (the reference's
argpartition/topk ties are arbitrary); n = 0 selects nothing (the reference's ``[-0:]`` selects all).
NaN scores rank last. Cost: one O(N) partition plus a sort of the tied rows only.
"""

from __future__ import annotations

import numpy as np

from clipsift.budget import keep_count
from clipsift.errors import ParamError


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


def select(scores: np.ndarray, uids: np.ndarray, *, fraction: float | None = None, count: int | None = None,
           threshold: float | None = None, total: int | None = None, owner: str = "select", details: dict | None = None) -> np.ndarray:
    """Indices kept by ``score >= threshold``, or the top ``int(total * fraction)`` / ``count`` rows
    (``total`` defaults to len(scores)); an unmet count is recorded in ``details`` (clipsift.budget)."""
    if sum(v is not None for v in (fraction, count, threshold)) != 1:
        raise ParamError(f"{owner}: give exactly one of fraction, count or threshold")
    if threshold is not None:
        return np.flatnonzero(np.asarray(scores) >= threshold)
    n = keep_count(len(scores) if total is None else total, fraction, count, owner=owner, details=details, of="scored rows")
    return top_n(scores, uids, n)
