"""Density-Based Pruning's per-cluster arithmetic (spec §4.2–4.6): small arrays of length k only.

- :func:`inter_distances` — d_inter over the l nearest *other* centroids;
- :func:`complexity` — C = d_inter·d_intra with empty clusters set to the mean;
- :func:`softmax` — P = softmax(C/τ) in float64;
- :func:`lower_bounds` — the reference's lb (with its M−1 quirk, floored at 0);
- :func:`water_fill` — the QP min ½‖x−t‖² s.t. Σx = N, lb ≤ x ≤ M solved exactly as x = clip(t − ν);
- :func:`round_budgets` — largest-remainder rounding: integers, Σ = N, bounds kept;
- :func:`take` — which x_j items of a cluster survive (hard / easy / random).
"""

from __future__ import annotations

import numpy as np

from clipsift.clustering import distance_order
from clipsift.errors import ParamError

STAGE_ID = 3  # random streams are seeded from (seed, STAGE_ID, cluster id)


def inter_distances(centroids: np.ndarray, l: int) -> np.ndarray:  # noqa: E741 - the paper's name
    """d_inter_j = mean over the l nearest other centroids m of (1 − c_j·c_m), float64.

    Centroids are renormalised; self is excluded by index (a duplicate centroid still counts);
    l is capped at k − 1; k = 1 gives [0].
    """
    c = np.asarray(centroids, dtype=np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
    k = len(c)
    le = min(int(l), k - 1)
    if le <= 0:
        return np.zeros(k)
    sim = c @ c.T
    np.fill_diagonal(sim, -np.inf)
    top = -np.sort(-sim, axis=1)[:, :le]
    return (1.0 - top).mean(axis=1)


def complexity(d_intra: np.ndarray, d_inter: np.ndarray, density: str = "dintra*dinter", sizes: np.ndarray | None = None) -> np.ndarray:
    """C_j = d_inter·d_intra (``uniform``: 1; ``clustersize``: M_j); NaN (empty clusters) → mean of the rest.

    Rounding-level negatives (≥ −1e-6, e.g. a singleton whose cosine to its centroid is 1 + 1 ulp)
    become 0; any real negative is an error (the reference tolerates fewer than 10).
    """
    if density == "uniform":
        return np.ones(len(d_intra))
    if density == "clustersize":
        return np.asarray(sizes, dtype=np.float64).copy()
    c = np.asarray(d_inter, np.float64) * np.asarray(d_intra, np.float64)
    nan = np.isnan(c)
    if nan.all():
        raise ParamError("dbp: every cluster is empty; the input selection is empty")
    if nan.any():
        c[nan] = c[~nan].mean()
    c[(c < 0) & (c >= -1e-6)] = 0.0  # float32 rounding: a lone member can sit at cosine 1 + 1 ulp
    if (c < 0).any():
        raise ParamError(f"dbp: {int((c < 0).sum())} cluster(s) have negative complexity; check the embeddings (unit vectors expected)")
    return c


def softmax(c: np.ndarray, tau: float) -> np.ndarray:
    z = np.asarray(c, dtype=np.float64) / float(tau)
    z = np.exp(z - z.max())
    return z / z.sum()


def lower_bounds(sizes: np.ndarray, n_keep: int, k: int, ratio: float) -> np.ndarray:
    """lb_j = max(min(s, M_j − 1), 0) with s = int((N/k)·r) for r > 0, else 1 (reference quirk kept)."""
    s = int((n_keep / k) * ratio) if ratio > 0 else 1
    return np.maximum(np.minimum(s, np.asarray(sizes, np.int64) - 1), 0)


def water_fill(t: np.ndarray, lb: np.ndarray, ub: np.ndarray, total: float) -> tuple[np.ndarray, float]:
    """Euclidean projection of t onto {Σx = total, lb ≤ x ≤ ub}: (x, ν) with x = clip(t − ν, lb, ub).

    Bisection on the scalar ν in float64; infeasible totals raise ParamError.
    """
    t, lb, ub = (np.asarray(a, dtype=np.float64) for a in (t, lb, ub))
    if lb.sum() > total or ub.sum() < total:
        raise ParamError(f"dbp: cannot keep {total:g} rows: the clusters allow between {lb.sum():g} and {ub.sum():g}")
    lo, hi = float(np.min(t - ub)), float(np.max(t - lb))

    def g(nu):
        return np.clip(t - nu, lb, ub).sum()

    for _ in range(200):
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
        mid = 0.5 * (lo + hi)
        if g(mid) >= total:
            lo = mid
        else:
            hi = mid
    return np.clip(t - hi, lb, ub), hi


def round_budgets(x: np.ndarray, lb: np.ndarray, ub: np.ndarray, total: int) -> np.ndarray:
    """Integers with Σ = total and lb ≤ f ≤ ub, |f − x| < 1: floor, then largest remainders get +1
    (ties by cluster index); an overshoot takes 1 back from the smallest remainders (index descending)."""
    x = np.asarray(x, np.float64)
    lb, ub = np.asarray(lb, np.int64), np.asarray(ub, np.int64)
    f = np.clip(np.floor(x + 1e-9).astype(np.int64), lb, ub)
    rem = x - f
    idx = np.arange(len(x))
    r = int(total) - int(f.sum())
    while r > 0:
        order = np.lexsort((idx, -rem))
        order = order[f[order] < ub[order]][:r]
        if not len(order):
            raise ParamError("dbp: budgets cannot reach the requested total")
        f[order] += 1
        r -= len(order)
    while r < 0:
        order = np.lexsort((-idx, rem))
        order = order[f[order] > lb[order]][:-r]
        if not len(order):
            raise ParamError("dbp: budgets cannot reach the requested total")
        f[order] -= 1
        r += len(order)
    return f


def budgets(sizes: np.ndarray, c: np.ndarray, n_keep: int, *, tau: float, ratio: float) -> dict:
    """P = softmax(C/τ), targets t = N·P, water-filled and rounded: dict of x (int), x_real, P, lb, nu."""
    sizes = np.asarray(sizes, np.int64)
    p = softmax(c, tau)
    lb = lower_bounds(sizes, n_keep, len(sizes), ratio)
    x, nu = water_fill(n_keep * p, lb, sizes, n_keep)
    return {"x": round_budgets(x, lb, sizes, n_keep), "x_real": x, "p": p, "lb": lb, "nu": nu}


def take(dist: np.ndarray, gidx: np.ndarray, count: int, mode: str = "hard", seed: int = 0, cluster: int = 0) -> np.ndarray:
    """Positions of the ``count`` survivors of one cluster: the farthest from the centroid (``hard``,
    ties by ascending global index), the nearest (``easy``; count 0 keeps none) or a seeded sample."""
    n = len(gidx)
    count = int(count)
    if count <= 0:
        return np.empty(0, np.int64)
    if mode == "random":
        return np.sort(np.random.default_rng([int(seed), STAGE_ID, int(cluster)]).choice(n, size=count, replace=False))
    order = distance_order(np.asarray(dist), gidx)
    if mode == "hard":
        return order[:count]
    if mode == "easy":
        return order[n - count :]
    raise ParamError(f"keep={mode!r}: choose hard, easy or random")
