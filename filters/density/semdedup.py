"""SemDeDup (Abbas et al. 2023): drop semantic near-duplicates inside k-means clusters.

Rule (the reference ``semdedup.py``, spec §2): inside a cluster, order items (``hard``: farthest
from the centroid first; ``easy``: the exact reverse; ``random``: a seeded permutation); for item
o_j let M_j = max(0, max over earlier items i of cos(o_i, o_j)); o_j is dropped iff
M_j > float32(1 − eps). It is not transitive: an item is dropped when too similar to *any* earlier
item, dropped or not.

Scale: clusters come from the streaming engine (:mod:`clipsift.clustering`), rows grouped
by cluster on disk; M is computed per cluster by column blocks of ``block`` items, so memory is
O(block² + block·d) whatever the cluster size (clusters above ``cap`` rows are read from disk block
by block). Only M (4 B/row, on disk) is kept between clusters, so choosing ``eps`` for a target
kept fraction is a threshold on M — no second pass over embeddings.
"""

from __future__ import annotations

import math
import shutil
import uuid
from fractions import Fraction
from functools import partial

import numpy as np

from clipsift.clustering import (
    EMBEDDING_PARAMS,
    KMEANS_PARAMS,
    EmbeddingSource,
    StageClock,
    assign_to_store,
    auto_clusters,
    cosine_distance,
    distance_order,
    fit_centroids,
    map_groups,
    normalize,
    records,
    store_row_bytes,
)
from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection
from clipsift.log import get_logger
from clipsift.params import Param
from clipsift.uids import UID_DTYPE

log = get_logger("filters.semdedup")

STAGE_ID = 1  # random streams are seeded from (seed, STAGE_ID, cluster id)
DEFAULT_EPS = 0.07
KEEP_MODES = ("hard", "easy", "random")


# ---- per-cluster rules -------------------------------------------------------------------------
def processing_order(dist: np.ndarray, gidx: np.ndarray, keep: str, seed: int = 0, cluster: int = 0) -> np.ndarray:
    """Positions in processing order: base order (distance descending, ties by ascending global
    index) for ``hard``, its exact reverse for ``easy``, a permutation seeded by (seed, cluster) for ``random``."""
    base = distance_order(dist, gidx)
    if keep == "hard":
        return base
    if keep == "easy":
        return base[::-1]
    if keep == "random":
        return base[np.random.default_rng([int(seed), STAGE_ID, int(cluster)]).permutation(len(base))]
    raise ParamError(f"keep={keep!r}: choose one of {', '.join(KEEP_MODES)}")


def max_similarity(fetch, n: int, block: int = 8192, device: str = "cpu", width: int | None = None) -> np.ndarray:
    """M_j = max(0, max_{i<j} e_i·e_j) for rows in processing order, by column blocks.

    ``fetch(start, stop)`` returns unit float32 rows ``start:stop`` of the processing order. For
    each column block [j0, j1) of ``width`` columns (default ``block``), a running max is updated
    with row chunks of at most ``block`` rows covering [0, j1); entries with i ≥ j are masked.
    Only the upper triangle plus ``width``-wide diagonal strips is computed, and memory is
    O(block·width) for any ``n``.
    """
    import torch

    width = int(width or block)
    out = np.zeros(n, dtype=np.float32)
    for j0 in range(0, n, width):
        j1 = min(n, j0 + width)
        ej = torch.from_numpy(np.ascontiguousarray(fetch(j0, j1))).to(device)
        run = torch.zeros(j1 - j0, dtype=torch.float32, device=device)
        for i0 in range(0, j1, block):
            i1 = min(j1, i0 + block)
            ei = torch.from_numpy(np.ascontiguousarray(fetch(i0, i1))).to(device)
            s = ei @ ej.T
            if i1 > j0:  # the chunk reaches the diagonal: drop pairs with i >= j
                rows = torch.arange(i0, i1, device=device)[:, None]
                cols = torch.arange(j0, j1, device=device)[None, :]
                s.masked_fill_(rows >= cols, 0.0)
            run = torch.maximum(run, s.max(dim=0).values)
        out[j0:j1] = run.cpu().numpy()
    return out


def cluster_max_similarity(group: dict, keep: str, seed: int, cluster: int, *, block: int = 8192,
                           cap: int = 32768, device: str = "cpu") -> np.ndarray:
    """M for one cluster read from the store (``gidx``, ``sim``, ``emb``), in the store's row order."""
    gidx = np.asarray(group["gidx"])
    n = len(gidx)
    if n == 0:
        return np.zeros(0, np.float32)
    order = processing_order(cosine_distance(group["sim"]), gidx, keep, seed, cluster)
    emb = group["emb"]
    if n <= cap:
        unit = normalize(np.asarray(emb)[order])

        def fetch(a, b):
            return unit[a:b]
    else:  # too large to hold: read each block's rows from disk in ascending position

        def fetch(a, b):
            pos = order[a:b]
            srt = np.argsort(pos, kind="stable")
            rows = np.empty((len(pos), emb.shape[1]), dtype=emb.dtype)
            rows[srt] = emb[pos[srt]]
            return normalize(rows)

    # in memory: narrow column strips halve the work; from disk: square blocks read the file less often
    m = max_similarity(fetch, n, block=block, device=device, width=min(block, 1024) if n <= cap else block)
    out = np.empty(n, np.float32)
    out[order] = m
    return out


def threshold(eps: float) -> np.float32:
    """Items with M ≤ float32(1 − eps) are kept (the reference compares a float32 tensor)."""
    return np.float32(1.0 - float(eps))


def target_count(target: float, n: int) -> int:
    """K = ceil(target·n), with target read as the decimal the user wrote (0.3·10 is 3, not 4)."""
    return min(n, math.ceil(Fraction(repr(float(target))) * n))


def eps_for_target(m_values: np.ndarray, target: float) -> float:
    """Largest eps keeping at least ceil(target·n) items: 1 − M_(K) in float64 (exact in float32)."""
    n = len(m_values)
    k = target_count(target, n)
    if k <= 0 or n == 0:
        return 1.0
    kth = np.partition(np.asarray(m_values, dtype=np.float32), k - 1)[k - 1]
    return 1.0 - float(kth)


# ---- per-cluster tasks (run by the executor; each opens the store from its path) -----------------
def _cluster_step(keep: str, seed: int, block: int, cap: int, device: str, thr, store, g: int, _arg=None):
    """One cluster's M (``thr`` None), or the uid records of its rows with M ≤ ``thr``."""
    m = cluster_max_similarity(store.read(g, ["gidx", "sim", "emb"]), keep, seed, g, block=block, cap=cap, device=device)
    return m if thr is None else _kept_records(store, g, m <= thr)


def _cluster_kept(m_path: str, thr, store, g: int, offset) -> np.ndarray:
    """uid records of one cluster's rows with M ≤ ``thr``; M read from the gathered ``m.npy``."""
    m = np.load(m_path, mmap_mode="r")[int(offset) : int(offset) + int(store.sizes[g])]
    return _kept_records(store, g, np.asarray(m) <= thr)


def _kept_records(store, g: int, mask: np.ndarray) -> np.ndarray:
    grp = store.read(g, ["uid_hi", "uid_lo"])
    return records(np.asarray(grp["uid_hi"])[mask], np.asarray(grp["uid_lo"])[mask])


# ---- streaming run ------------------------------------------------------------------------------
def run_semdedup(ctx: RunContext, *, source: EmbeddingSource, k: int | None = None, niter: int = 100,
                 kmeans_seed: int = 1234, train_rows: int | None = None, eps: float | None = None,
                 target: float | None = None, keep: str = "hard", seed: int = 0, block: int = 8192,
                 cap: int = 32768, centroids: np.ndarray | None = None, desc: str = "semdedup") -> tuple[np.ndarray, dict, dict]:
    """SemDeDup over ``ctx``'s candidates: (kept uid records, counters, details)."""
    n_in = ctx.num_candidates
    work = ctx.scratch_dir(f"{desc}-{uuid.uuid4().hex[:8]}")  # every task reads the store: the run folder on a cluster
    info: dict = {}
    clock = StageClock()
    lap = clock.lap
    if centroids is None:
        centroids, info = fit_centroids(ctx, source, k or auto_clusters(n_in), niter=niter, seed=kmeans_seed,
                                        train_rows=train_rows, desc=f"{desc} k-means")
    lap("kmeans")
    try:
        store = assign_to_store(ctx, source, centroids, work / "store", store_embeddings=True, desc=f"{desc}: assign")
        lap("assign")
        device = ctx.torch_device()
        groups = np.flatnonzero(store.sizes)
        if target is None and eps is None:
            eps = DEFAULT_EPS
        thr = None if target is not None else threshold(eps)
        pairwise = partial(_cluster_step, keep, seed, block, cap, device, thr)
        row_bytes = store_row_bytes(store, ("emb", "gidx", "sim", "uid_hi", "uid_lo"))
        results = map_groups(ctx, pairwise, work / "store", groups, store.sizes, row_bytes=row_bytes,
                             desc=f"{desc}: clusters", device=device)
        if thr is not None:  # eps known up front: the tasks return each cluster's kept uids directly
            parts = list(results)
            lap("pairwise")
        else:  # target: eps is a quantile of every M, so M is gathered (4 B/row, on disk) and cut
            m_all = np.lib.format.open_memmap(work / "m.npy", mode="w+", dtype=np.float32, shape=(store.num_rows,))
            offsets = np.concatenate([[0], np.cumsum(store.sizes)])
            for g, m in zip(groups, results, strict=True):
                m_all[offsets[g] : offsets[g + 1]] = m
            m_all.flush()
            lap("pairwise")
            eps = eps_for_target(m_all, target)
            thr = threshold(eps)
            del m_all
            extract = partial(_cluster_kept, str(work / "m.npy"), thr)
            parts = list(map_groups(ctx, extract, work / "store", groups, store.sizes, args=offsets[groups], row_bytes=20,
                                    desc=f"{desc}: kept rows"))
        kept = np.concatenate(parts) if parts else np.empty(0, UID_DTYPE)
        n_rows = store.num_rows
        largest = int(store.sizes.max(initial=0))
        del store
        lap("extract")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counters = {"input": int(n_in), "clustered": int(n_rows), "kept": int(len(kept)), "dropped": int(n_rows - len(kept)),
                "eps": float(eps), "kept_fraction": (len(kept) / n_rows) if n_rows else 0.0}
    details = {"kmeans": info or {"k": int(len(centroids)), "centroids": "given"}, "largest_cluster": largest,
               "keep": keep, "target": target, "threshold_m": float(thr), "seconds": clock.wall,
               "cpu_seconds": clock.cpu}
    log.info("%s: kept %d of %d (eps=%.6g, %d clusters, largest %d)", desc, len(kept), n_rows, eps, len(centroids), largest)
    return kept, counters, details


# ---- plugin ------------------------------------------------------------------------------------



class SemDeDupFilter(Filter):
    name = "semdedup"
    description = "SemDeDup: drop semantic near-duplicates (cosine > 1 − eps to an earlier item) inside spherical k-means clusters."
    params = EMBEDDING_PARAMS + (
        Param("k", int, None, "number of clusters (default ceil(n/2500))", min=1, max=2**31 - 1),
    ) + KMEANS_PARAMS + (
        Param("eps", float, None, f"drop items with max cosine to an earlier item > 1 − eps (default {DEFAULT_EPS})", min=0.0, max=1.0),
        Param("target", float, None, "kept fraction instead of eps: eps is chosen so at least ceil(target·n) items stay", min=0.0, max=1.0),
        Param("keep", str, "hard", "which item of a duplicate group survives: hard (farthest from centroid), easy, random", choices=KEEP_MODES),
        Param("seed", int, 0, "seed of keep=random"),
        Param("block", int, 8192, "rows per block of the pairwise products", min=1),
        Param("cap", int, 32768, "largest cluster held in memory; larger ones are read block by block", min=1),
    )
    requires = ("faiss", "torch")

    def validate(self) -> None:
        if self.eps is not None and self.target is not None:
            raise ParamError("semdedup: give eps or target, not both")

    def input_keys(self) -> tuple[str, ...]:
        return () if self.embeddings else (self.key,)

    def select(self, ctx: RunContext) -> Selection:
        source = EmbeddingSource.create(self.key, self.embeddings, self.missing, ctx.scratch_dir(""), getattr(ctx, "bad_embeddings", "error"))
        kept, counters, details = run_semdedup(
            ctx, source=source, k=self.k, niter=self.niter, kmeans_seed=self.kmeans_seed, train_rows=self.train_rows,
            eps=self.eps, target=self.target, keep=self.keep, seed=self.seed, block=self.block, cap=self.cap)
        return Selection(kept, counters=counters, details=details)
