"""Exact, deterministic ranking for negCLIPLoss / NormSim selections.

Top n = int(N * fraction) (or ``count``) rows by score descending, ties broken by uid ascending (the reference's
argpartition/topk ties are arbitrary); n = 0 selects nothing (the reference's ``[-0:]`` selects all).
NaN scores rank last. Cost: one O(N) partition plus a sort of the tied rows only.
"""

from __future__ import annotations

import numpy as np

from clipsift.budget import keep_count
from clipsift.errors import ParamError
from clipsift.kth import desc_keys, kth_desc_key
from clipsift.uids import UID_DTYPE


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


class KeptScores:
    """Summary of the scores a selection keeps (min, max, mean), built chunk by chunk."""

    def __init__(self):
        self.n, self.total, self.lo, self.hi = 0, 0.0, np.inf, -np.inf

    def add(self, scores: np.ndarray) -> None:
        if len(scores):
            self.n += len(scores)
            self.total += float(np.sum(scores, dtype=np.float64))
            self.lo, self.hi = min(self.lo, float(np.min(scores))), max(self.hi, float(np.max(scores)))

    def summary(self) -> dict:
        return {} if not self.n else {"min": self.lo, "max": self.hi, "mean": self.total / self.n}


def _uids(records: np.ndarray) -> np.ndarray:
    out = np.empty(len(records), dtype=UID_DTYPE)
    out["f0"], out["f1"] = records["f0"], records["f1"]
    return out


def _rank_keys(scores: np.ndarray) -> np.ndarray:
    """Ascending keys = descending scores, NaN ranked as -inf (as :func:`top_n` ranks them)."""
    s = np.asarray(scores, dtype=np.float64)
    return desc_keys(np.where(np.isnan(s), -np.inf, s))


def select_streamed(parts, total: int, emit, make_sorter, *, fraction: float | None = None, count: int | None = None,
                    threshold: float | None = None, owner: str = "select", details: dict | None = None) -> KeptScores:
    """:func:`select` over records (``uid`` fields ``f0``/``f1`` and ``score``) that ``parts()``
    yields chunk by chunk, never all at once: the same rows, handed to ``emit(uids, scores)``.

    The top ``n`` are found by an exact distributed selection of the n-th largest score
    (:func:`clipsift.kth.kth_desc_key`, passes over the parts); rows tied with it are taken in uid
    order through ``make_sorter()`` (a uid sorter on disk), as :func:`top_n` takes them.
    """
    if sum(v is not None for v in (fraction, count, threshold)) != 1:
        raise ParamError(f"{owner}: give exactly one of fraction, count or threshold")
    kept = KeptScores()

    def take(uids, scores):
        emit(uids, scores)
        kept.add(scores)

    if threshold is not None:
        for recs in parts():
            keep = recs["score"] >= threshold
            take(_uids(recs[keep]), recs["score"][keep])
        return kept
    n = keep_count(total, fraction, count, owner=owner, details=details, of="scored rows")
    if n <= 0 or total == 0:
        return kept
    if n >= total:
        for recs in parts():
            take(_uids(recs), recs["score"])
        return kept
    kth = kth_desc_key(lambda: (_rank_keys(r["score"]) for r in parts()), n - 1, expected=total)
    above, tie_score = 0, None
    with make_sorter() as ties:
        for recs in parts():
            keys = _rank_keys(recs["score"])
            up, tied = keys < kth, keys == kth
            take(_uids(recs[up]), recs["score"][up])
            above += int(np.count_nonzero(up))
            if tied.any():
                ties.add(_uids(recs[tied]))
                tie_score = recs["score"][tied][:1]
        need = n - above
        for chunk in ties.sorted_chunks():
            if need <= 0:
                break
            chunk = chunk[:need]
            take(chunk, np.repeat(tie_score, len(chunk)))
            need -= len(chunk)
    return kept
