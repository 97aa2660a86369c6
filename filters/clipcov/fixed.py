"""Fixed mode (spec §6): exact greedy on F = Σ_c F_c with per-class budgets.

Removes the reference's quirks (stale gains, cumulative X_c, class-wide L_c, missing self term,
no per-class budget). Gain Δ(x|A) = u⁰_x − (S_xx + Σ_{j∈A} W_xj)/n_c with W = S + Sᵀ; the
redundancy sums are kept exactly (two GEMVs per pick, N2–N4), ties go to the larger index.
"""

from __future__ import annotations

import numpy as np


def class_budgets(sizes, k: int) -> np.ndarray:
    """k_c = ⌊f·n_c⌋, then +1 for the largest remainders (ties → smaller c) until Σk_c = k."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    if n == 0:
        return np.zeros_like(sizes)
    f = k / n
    exact = sizes.astype(np.float64) * f
    kc = np.minimum(np.floor(exact).astype(np.int64), sizes)
    rem = exact - kc
    # largest remainder first, ties to the smaller class; only classes with room
    order = np.lexsort((np.arange(len(sizes)), -rem))
    while kc.sum() < k:
        room = order[kc[order] < sizes[order]]
        kc[room[: k - int(kc.sum())]] += 1
    over = int(kc.sum()) - k
    if over > 0:  # float floors can overshoot by a row in pathological cases: trim smallest remainders
        for c in order[::-1]:
            if over == 0:
                break
            if kc[c] > 0:
                kc[c] -= 1
                over -= 1
    return kc


def fixed_class(problem, k_c: int, redundancy_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k_c picks of one class: (local indices, gains at pick time), in pick order."""
    n = problem.n
    diag = problem.kernel.diag()
    red = np.zeros(n, dtype=np.float64)
    chosen = np.zeros(n, dtype=bool)
    picks, gains = [], []
    idx = np.arange(n)
    for _ in range(int(k_c)):
        pen = (diag + red) / n
        if redundancy_scale != 1.0:
            pen = redundancy_scale * pen
        gain = problem.u0 - pen
        gain[chosen] = -np.inf
        best = gain.max()
        x = int(idx[gain == best][-1])
        picks.append(x)
        gains.append(float(best))
        chosen[x] = True
        red += problem.kernel.pair_sums([x])
    return np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64)


def set_function(problem, A, redundancy_scale: float = 1.0) -> float:
    """F_c(A) for brute-force checks (dense kernels): coverage − redundancy + modular quality."""
    S = problem.kernel.dense()
    A = np.asarray(sorted(A), dtype=np.int64)
    n = problem.n
    W = S + S.T
    m = problem.u0 - problem.r
    cover = W[:, A].sum() / n
    redundancy = S[np.ix_(A, A)].sum() / n
    return float(cover - redundancy_scale * redundancy + m[A].sum())
