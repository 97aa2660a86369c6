"""SSP prototype pruning (Sorscher et al. 2022): keep the items farthest from their k-means prototype.

Hardness h = 1 − cos(x, centroid). ``global`` keeps the N hardest items of the whole input;
``uniform`` gives every cluster the same kept fraction (largest-remainder rounding) and keeps each
cluster's hardest. Cluster balancing (``balance`` = r, the DBP code's ``--cls-bal-ratio``) first
guarantees every cluster min(int((N/k)·r), M_j) of its hardest items.

Streaming: rows are grouped by cluster on disk (only uid, global index and cosine; no
embeddings), and ``global`` merges per-cluster candidates into a running top-N, so memory is O(N)
for the result plus one cluster.
"""

from __future__ import annotations

import shutil
import uuid
from functools import partial

import numpy as np

from clipsift.budget import budget_params, require_one
from clipsift.clustering import (
    EMBEDDING_PARAMS,
    KMEANS_PARAMS,
    EmbeddingSource,
    assign_to_store,
    cosine_distance,
    distance_order,
    fit_centroids,
    map_groups,
    records,
)
from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection
from clipsift.filters.density import allocation as density
from clipsift.log import get_logger
from clipsift.params import Param
from clipsift.uids import UID_DTYPE

log = get_logger("filters.ssp")


def keep_count(n: int, fraction: float | None, count: int | None) -> int:
    """N = int(fraction·n) (the reference's int(prune_ratio·size)) or min(count, n)."""
    return int(fraction * n) if fraction is not None else min(int(count), n)


def keep_target(n: int, fraction: float | None, count: int | None, desc: str) -> tuple[int, dict]:
    """:func:`keep_count` plus what a ``count`` larger than the ``n`` rows reaching the stage costs:
    a warning and ``{"requested", "shortfall"}`` for the counters (empty when the count is met)."""
    n_keep = keep_count(n, fraction, count)
    if fraction is None and n_keep < int(count):
        short = int(count) - n_keep
        get_logger(f"filters.{desc.split()[0]}").warning("%s: count=%d asked for, but only %d row(s) reach this stage; keeping all of them (%d short, "
                    "recorded as counters.shortfall)", desc, int(count), n, short)
        return n_keep, {"requested": int(count), "shortfall": short}
    return n_keep, {}


def ssp_floor(sizes: np.ndarray, n_keep: int, ratio: float) -> np.ndarray:
    """Guaranteed hardest items per cluster: min(int((N/k)·r), M_j); zeros when r = 0."""
    sizes = np.asarray(sizes, np.int64)
    if ratio <= 0:
        return np.zeros_like(sizes)
    return np.minimum(int((n_keep / len(sizes)) * ratio), sizes)


def uniform_budgets(sizes: np.ndarray, n_keep: int, ratio: float) -> np.ndarray:
    """Equal kept fraction per cluster (targets N·M_j/ΣM), water-filled above the balance floor."""
    sizes = np.asarray(sizes, np.int64)
    lb = ssp_floor(sizes, n_keep, ratio)
    x, _ = density.water_fill(n_keep * sizes / max(sizes.sum(), 1), lb, sizes, n_keep)
    return density.round_budgets(x, lb, sizes, n_keep)


def _top(h: np.ndarray, g: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n largest h (ties by ascending g), in that order."""
    return distance_order(h, g)[:n]


def _cluster_picks(rest: int, store, g: int, quota) -> tuple[np.ndarray, tuple | None]:
    """One cluster's task: uid records of its ``quota`` hardest rows, and (h, gidx, uid_hi, uid_lo)
    of the next ``rest`` hardest, candidates for the global top-``rest`` (None when ``rest`` is 0)."""
    grp = {n: np.asarray(a) for n, a in store.read(g, ["gidx", "uid_hi", "uid_lo", "sim"]).items()}
    h = cosine_distance(grp["sim"])
    order = distance_order(h, grp["gidx"])
    q = int(quota)
    fixed = order[:q]
    picks = records(grp["uid_hi"][fixed], grp["uid_lo"][fixed])
    if rest <= 0:
        return picks, None
    cand = order[q : q + rest]
    return picks, (h[cand], grp["gidx"][cand], grp["uid_hi"][cand], grp["uid_lo"][cand])


def run_ssp(ctx: RunContext, *, source: EmbeddingSource, k: int = 500, niter: int = 100, kmeans_seed: int = 1234,
            train_rows: int | None = None, fraction: float | None = None, count: int | None = None, mode: str = "global",
            balance: float = 0.5, centroids: np.ndarray | None = None, desc: str = "ssp") -> tuple[np.ndarray, dict, dict]:
    """SSP over ``ctx``'s candidates: (kept uid records, counters, details)."""
    work = ctx.scratch_dir(f"{desc}-{uuid.uuid4().hex[:8]}")  # every task reads the store: the run folder on a cluster
    info: dict = {}
    if centroids is None:
        centroids, info = fit_centroids(ctx, source, k, niter=niter, seed=kmeans_seed, train_rows=train_rows, desc=f"{desc} k-means")
    try:
        store = assign_to_store(ctx, source, centroids, work / "store", desc=f"{desc}: assign")
        sizes = store.sizes
        n_in = store.num_rows
        n_keep, short = keep_target(n_in, fraction, count, desc)
        if mode == "uniform":
            quota = uniform_budgets(sizes, n_keep, balance)
            rest = 0
        elif mode == "global":
            quota = ssp_floor(sizes, n_keep, balance)
            rest = n_keep - int(quota.sum())
            if rest < 0:
                raise ParamError(f"ssp: balance={balance} guarantees {int(quota.sum())} rows, more than the {n_keep} kept; lower balance")
        else:
            raise ParamError(f"ssp: mode={mode!r}; choose global or uniform")
        parts = []
        pool_h = np.empty(0, np.float32)
        pool_g = np.empty(0, np.int64)
        pool_hi = np.empty(0, np.uint64)
        pool_lo = np.empty(0, np.uint64)
        groups = np.flatnonzero(sizes)
        step = partial(_cluster_picks, rest)
        for fixed, cand in map_groups(ctx, step, work / "store", groups, sizes, args=quota[groups], row_bytes=28,
                                      desc=f"{desc}: clusters"):
            parts.append(fixed)
            if cand is not None:
                pool_h = np.concatenate([pool_h, cand[0]])
                pool_g = np.concatenate([pool_g, cand[1]])
                pool_hi = np.concatenate([pool_hi, cand[2]])
                pool_lo = np.concatenate([pool_lo, cand[3]])
                if len(pool_h) > 2 * rest:
                    top = _top(pool_h, pool_g, rest)
                    pool_h, pool_g, pool_hi, pool_lo = pool_h[top], pool_g[top], pool_hi[top], pool_lo[top]
        if rest > 0:
            top = _top(pool_h, pool_g, rest)
            parts.append(records(pool_hi[top], pool_lo[top]))
        kept = np.concatenate(parts) if parts else np.empty(0, UID_DTYPE)
        del store
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counters = {"input": int(n_in), "kept": int(len(kept)), "dropped": int(n_in - len(kept)), **short}
    details = {"kmeans": info or {"k": int(len(centroids)), "centroids": "given"}, "mode": mode, "balance": balance,
               "cluster_sizes": sizes.tolist(), "guaranteed": quota.tolist()}
    return kept, counters, details


class SSPFilter(Filter):
    name = "ssp"
    description = "SSP prototypes: keep the items farthest from their spherical k-means centroid (globally or per cluster)."
    params = EMBEDDING_PARAMS + (
        Param("k", int, 500, "number of clusters", min=1, max=2**31 - 1),
    ) + KMEANS_PARAMS + (
        *budget_params("input rows"),
        Param("mode", str, "global", "global: hardest N overall; uniform: same kept fraction in every cluster", choices=("global", "uniform")),
        Param("balance", float, 0.5, "cluster balancing r: each cluster keeps at least min(int(N/k·r), size) (0 = plain Sorscher)", min=0.0, max=1e6),
    )
    requires = ("faiss",)

    def validate(self) -> None:
        require_one(self, "fraction", "count")

    def input_keys(self) -> tuple[str, ...]:
        return () if self.embeddings else (self.key,)

    def select(self, ctx: RunContext) -> Selection:
        source = EmbeddingSource.create(self.key, self.embeddings, self.missing, ctx.scratch_dir(""), getattr(ctx, "bad_embeddings", "error"))
        kept, counters, details = run_ssp(
            ctx, source=source, k=self.k, niter=self.niter, kmeans_seed=self.kmeans_seed, train_rows=self.train_rows,
            fraction=self.fraction, count=self.count, mode=self.mode, balance=self.balance)
        return Selection(kept, counters=counters, details=details)
