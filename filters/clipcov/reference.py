"""Reference mode (spec §4): the notebook's batched, stale greedy, transcribed literally.

One global score array, a stable argsort, pop from the end (ties → larger index), and after every
class refresh the selected rows get −∞ and everything is re-sorted. Dense per-class S; meant for
tests and small pools. The scalable mode must reproduce its pick order exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipsift.budget import keep_count
from clipsift.errors import ParamError


@dataclass
class PickResult:
    """Picks in order (global indices) with their keys, per-class pick and refresh counts."""

    order: np.ndarray
    keys: np.ndarray
    counts: np.ndarray
    refreshes: np.ndarray


def budget(n: int, fraction: float | None = None, count: int | None = None) -> int:
    """k = int(n·fraction) in IEEE double (int(100·0.29) = 28), or an explicit count capped at n."""
    return keep_count(n, fraction, count, owner="clipcov")


def refreshes_expected(k_c: int, B: int) -> int:
    """How many refreshes a class with k_c picks has had: ⌊(k_c+1)/B⌋ for B ≥ 2, k_c for B = 1."""
    return k_c if B == 1 else (k_c + 1) // B


def reference_select(problems, k: int, B: int) -> PickResult:
    """Run §4 over classes given as :class:`ClassProblem` (any global indices, all distinct)."""
    if B < 1:
        raise ParamError("clipcov: batch B must be ≥ 1")
    sizes = np.array([p.n for p in problems], dtype=np.int64)
    n = int(sizes.sum())
    if not 0 <= k <= n:
        raise ParamError(f"clipcov: cannot pick {k} of {n} rows")
    gidx = np.concatenate([p.gidx for p in problems]) if problems else np.empty(0, np.int64)
    cls = np.repeat(np.arange(len(problems)), sizes)
    loc = np.concatenate([np.arange(s) for s in sizes]) if problems else np.empty(0, np.int64)
    by_index = np.argsort(gidx, kind="stable")
    if len(gidx) and (np.diff(gidx[by_index]) == 0).any():
        raise ParamError("clipcov: duplicate global row indices across classes")
    gidx, cls, loc = gidx[by_index], cls[by_index], loc[by_index]
    u = np.concatenate([p.u0 for p in problems])[by_index].astype(np.float64) if problems else np.empty(0)
    rows_of = [np.flatnonzero(cls == c) for c in range(len(problems))]
    selected = np.zeros(n, dtype=bool)
    cnt = np.zeros(len(problems), dtype=np.int64)
    refreshes = np.zeros(len(problems), dtype=np.int64)
    rho = [0.0] * len(problems)
    pending: list[list[int]] = [[] for _ in problems]
    picks, keys = [], []
    order = np.argsort(u, kind="stable")
    ptr = n - 1
    while len(picks) < k:
        x = int(order[ptr])
        ptr -= 1
        c, li = int(cls[x]), int(loc[x])
        p = problems[c]
        picks.append(int(gidx[x]))
        keys.append(float(u[x]))
        selected[x] = True
        pending[c].append(li)
        cnt[c] += 1
        rho[c] += float(p.r[li])
        if (cnt[c] + 1) % B == 0:
            T = pending[c]
            nc = p.n
            rows = rows_of[c]
            u[rows] -= p.kernel.pair_sums(T) / nc
            u[rows] -= rho[c] / nc
            u[rows] -= (float(np.sum(p.lsim[T])) / 2.0) / nc
            pending[c] = []
            refreshes[c] += 1
            u[selected] = -np.inf
            order = np.argsort(u, kind="stable")
            ptr = n - 1
    return PickResult(np.asarray(picks, dtype=np.int64), np.asarray(keys, dtype=np.float64), cnt, refreshes)
