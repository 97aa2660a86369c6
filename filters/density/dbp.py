"""Density-Based Pruning (Abbas, Rusak et al., ICLR 2024), spec §4.

Pipeline, each stage optional and each stage's parameters exposed:

1. SemDeDup (:mod:`clipsift.filters.density.semdedup`) — the paper's "crucial precursor";
2. CLIP-score filter on the survivors (DataComp rule: threshold, or the top ``clip_fraction``);
3. a fresh spherical k-means (k = 500; 100 in the DataComp-medium recipe) on the survivors;
4. per cluster d_intra (mean distance to the centroid) and d_inter (mean distance to the l
   nearest other centroids), complexity C = d_intra·d_inter;
5. budgets P = softmax(C/τ), targets N·P water-filled so no cluster gets more than it holds or less
   than its lower bound, rounded to integers summing to N exactly;
6. the hardest (farthest from the centroid) items of each cluster are kept.

Stages 3–6 need no embeddings after the assignment pass: rows are grouped by cluster on disk with
(uid, global index, cosine) only, and selection reads one cluster at a time.
"""

from __future__ import annotations

import shutil
import uuid
from functools import partial
from pathlib import Path

import numpy as np

from clipsift.budget import budget_params, require_one
from clipsift.candidates import CandidateRows, sorted_chunks_of
from clipsift.clustering import (
    EMBEDDING_PARAMS,
    KMEANS_PARAMS,
    EmbeddingSource,
    StageClock,
    assign_to_store,
    cosine_distance,
    fit_centroids,
    map_groups,
    records,
)
from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection, collect_rows
from clipsift.filters.density import allocation as density
from clipsift.filters.density.semdedup import (
    DEFAULT_EPS,
    KEEP_MODES,
    run_semdedup,
)
from clipsift.filters.density.ssp import keep_target
from clipsift.kth import fraction_cut
from clipsift.log import get_logger
from clipsift.params import Param
from clipsift.uids import UID_DTYPE, sort_records

log = get_logger("filters.dbp")


# ---- stage 2: CLIP score -----------------------------------------------------------------------
def clip_threshold(scores: np.ndarray, fraction: float) -> float:
    """DataComp's fraction rule on the stage input (spec §7.5): T = sorted_desc(V)[int(len·fraction)]
    with NaN sorted last; rows with score ≥ T pass (n + 1 rows plus ties; NaN never). An index
    past the non-NaN scores gives T = NaN, which keeps nothing, as in DataComp; an index past the
    end (fraction 1) is the error DataComp's IndexError is."""
    from clipsift.baselines.scores import fraction_threshold

    return float(fraction_threshold(np.asarray(scores, dtype=np.float64), fraction))


class _Scores:
    """A score column as float64 (picklable map step of the fraction cut)."""

    def __init__(self, column: str):
        self.column = column

    def __call__(self, batch) -> np.ndarray:
        return batch.numpy(self.column, np.float64)


class _AtLeast:
    """Row step: rows whose float64 score is ≥ T (NaN never)."""

    def __init__(self, column: str, threshold: float):
        self.column, self.threshold = column, threshold

    def __call__(self, batch):
        with np.errstate(invalid="ignore"):
            keep = batch.numpy(self.column, np.float64) >= self.threshold
        return batch.uids[keep], {"score": int(len(keep) - keep.sum())}, len(keep)


def run_clip_stage(ctx: RunContext, column: str, fraction: float | None, threshold: float | None) -> tuple[Selection, dict]:
    """(rows with score ≥ T, details) over ``ctx``'s candidates, in map steps: T is given or
    DataComp's fraction cut by the exact distributed selection (:func:`clipsift.kth.fraction_cut`,
    the rule :func:`clip_threshold` states), and the kept uids go to the sorter, not the driver."""
    if threshold is not None:
        thr = float(threshold)
    elif ctx.num_candidates == 0:
        thr = float("inf")
    else:
        t, _ = fraction_cut(ctx, _Scores(column), fraction, (column,), "dbp: clip score threshold")
        thr = float(t)
    if np.isnan(thr):
        log.warning("dbp: clip_fraction=%g reaches past the non-NaN %s scores: DataComp's rule keeps no row", fraction, column)
    kept = collect_rows(ctx, _AtLeast(column, thr), columns=(column,), desc="dbp: clip score")
    return kept, {"column": column, "threshold": thr, "fraction": fraction, "input": kept.counters["input"], "kept": len(kept)}


def _next_candidates(ctx: RunContext, kept) -> RunContext:
    """The next stage's context: the rows kept so far, as per-shard masks (clipsift.candidates)."""
    chunks = kept.sorted_chunks() if hasattr(kept, "sorted_chunks") else sorted_chunks_of(sort_records(kept))
    rows = CandidateRows.from_sorted_uids(ctx, chunks, ctx.scratch_url("candidates"), expected=len(kept))
    return ctx.with_candidates(rows)


# ---- stages 3-6: density-based budgets ---------------------------------------------------------
def intra_distance(sim: np.ndarray) -> float:
    """d_intra of one cluster: mean of 1 − s over its members, every term and the sum in float64
    (spec §4.2, §7.6); s is the stored float32 cosine, so each term 1 − float64(s) is exact."""
    s = np.asarray(sim, dtype=np.float64)
    return float(np.sum(1.0 - s) / len(s)) if len(s) else float("nan")


def _cluster_intra(store, g: int, _arg=None) -> float:
    """One cluster's task: its d_intra."""
    return intra_distance(store.read(g, ["sim"])["sim"])


def _cluster_take(keep: str, seed: int, store, g: int, budget) -> np.ndarray:
    """One cluster's task: uid records of its ``budget`` survivors (seeded by the cluster id)."""
    grp = {n: np.asarray(a) for n, a in store.read(g, ["gidx", "uid_hi", "uid_lo", "sim"]).items()}
    pos = density.take(cosine_distance(grp["sim"]), grp["gidx"], budget, keep, seed, g)
    return records(grp["uid_hi"][pos], grp["uid_lo"][pos])


def run_density(ctx: RunContext, *, source: EmbeddingSource, k: int = 500, niter: int = 100, kmeans_seed: int = 1234,
                train_rows: int | None = None, fraction: float | None = None, count: int | None = None, tau: float = 0.1,
                num_nn: int = 20, balance: float = 0.0, density_rule: str = "dintra*dinter", keep: str = "hard",
                seed: int = 0, centroids: np.ndarray | None = None, desc: str = "dbp") -> tuple[np.ndarray, dict, dict]:
    """Density-based pruning of ``ctx``'s candidates to N rows: (kept uid records, counters, details)."""
    work = ctx.scratch_dir(f"{desc}-{uuid.uuid4().hex[:8]}")  # every task reads the store: the run folder on a cluster
    info: dict = {}
    clock = StageClock()
    if centroids is None:
        centroids, info = fit_centroids(ctx, source, k, niter=niter, seed=kmeans_seed, train_rows=train_rows, desc=f"{desc} k-means")
    clock.lap("kmeans")
    try:
        store = assign_to_store(ctx, source, centroids, work / "store", desc=f"{desc}: assign")
        clock.lap("assign")
        sizes = store.sizes
        n_in = store.num_rows
        n_keep, short = keep_target(n_in, fraction, count, desc)
        d_intra = np.full(len(sizes), np.nan)
        groups = np.flatnonzero(sizes)
        d_intra[groups] = list(map_groups(ctx, _cluster_intra, work / "store", groups, sizes, row_bytes=4,
                                          desc=f"{desc}: d_intra"))
        d_inter = density.inter_distances(centroids, num_nn)
        c = density.complexity(d_intra, d_inter, density_rule, sizes)
        b = density.budgets(sizes, c, n_keep, tau=tau, ratio=balance)
        chosen = np.flatnonzero(b["x"])
        parts = list(map_groups(ctx, partial(_cluster_take, keep, seed), work / "store", chosen, sizes, args=b["x"][chosen],
                                row_bytes=28, desc=f"{desc}: select"))
        kept = np.concatenate(parts) if parts else np.empty(0, UID_DTYPE)
        del store
        clock.lap("budgets_select")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counters = {"input": int(n_in), "kept": int(len(kept)), "dropped": int(n_in - len(kept)), **short}
    details = {
        "kmeans": info or {"k": int(len(centroids)), "centroids": "given"},
        "seconds": clock.wall, "cpu_seconds": clock.cpu,
        "tau": tau, "num_nn": num_nn, "balance": balance, "density": density_rule, "keep": keep, "nu": float(b["nu"]),
        "cluster_sizes": sizes.tolist(), "budgets": b["x"].tolist(),
        "complexity": np.round(c, 8).tolist(), "probabilities": np.round(b["p"], 8).tolist(),
        "d_intra": [None if np.isnan(v) else round(float(v), 8) for v in d_intra], "d_inter": np.round(d_inter, 8).tolist(),
    }
    log.info("%s: kept %d of %d in %d clusters (nu=%.4g)", desc, len(kept), n_in, len(sizes), b["nu"])
    return kept, counters, details


# ---- plugin ------------------------------------------------------------------------------------
class DBPFilter(Filter):
    name = "dbp"
    description = ("Density-Based Pruning: SemDeDup, CLIP-score filter, then per-cluster budgets softmax(d_intra·d_inter/τ) "
                   "water-filled to N, keeping each cluster's hardest items.")
    params = EMBEDDING_PARAMS + (
        Param("k", int, 500, "clusters of the density stage (DataComp-medium recipe: 100)", min=1, max=2**31 - 1),
    ) + KMEANS_PARAMS + (
        *budget_params("density stage's input rows (N)"),
        Param("tau", float, 0.1, "softmax temperature τ", min=1e-12),
        Param("num_nn", int, 20, "l, nearest other centroids averaged in d_inter", min=1, max=2**31 - 1),
        Param("balance", float, 0.0, "r: lower bound int(N/k·r) per cluster (0: at least 1 in clusters of ≥ 2 items)", min=0.0, max=1e6),
        Param("density", str, "dintra*dinter", "cluster complexity: dintra*dinter, uniform or clustersize",
              choices=("dintra*dinter", "uniform", "clustersize")),
        Param("keep", str, "hard", "which items a cluster keeps: hard (farthest from centroid), easy, random", choices=KEEP_MODES),
        Param("seed", int, 0, "seed of keep=random and dedup_keep=random"),
        Param("dedup", bool, True, "stage 1: SemDeDup before everything else"),
        Param("dedup_key", str, None, "embedding key of the SemDeDup stage (default: key)"),
        Param("dedup_embeddings", str, None, "external embeddings of the SemDeDup stage (default: embeddings)"),
        Param("dedup_k", int, None, "SemDeDup clusters (default ceil(n/2500))", min=1),
        Param("dedup_eps", float, None, f"SemDeDup eps (default {DEFAULT_EPS})", min=0.0, max=1.0),
        Param("dedup_target", float, None, "SemDeDup kept fraction instead of eps", min=0.0, max=1.0),
        Param("dedup_keep", str, "hard", "SemDeDup survivor of a duplicate group", choices=KEEP_MODES),
        Param("block", int, 8192, "SemDeDup rows per block of the pairwise products", min=1),
        Param("cap", int, 32768, "SemDeDup largest cluster held in memory", min=1),
        Param("clip_filter", bool, True, "stage 2: CLIP-score filter on the SemDeDup survivors"),
        Param("clip_column", str, "clip_l14_similarity_score", "score column of the CLIP-score stage"),
        Param("clip_fraction", float, 0.3, "keep the top share of the stage input (DataComp fraction rule: int(n·f) + 1 rows plus ties; below 1)", min=0.0, max=1.0),
        Param("clip_threshold", float, None, "keep rows with score ≥ threshold (overrides clip_fraction)"),
        Param("prune", bool, True, "stages 3-6: density-based pruning (false: stop after the enabled earlier stages)"),
    )
    requires = ("faiss", "torch")

    def validate(self) -> None:
        if self.prune:
            require_one(self, "fraction", "count")
        if not (self.dedup or self.clip_filter or self.prune):
            raise ParamError("dbp: every stage is off; enable dedup, clip_filter or prune")
        if self.dedup_eps is not None and self.dedup_target is not None:
            raise ParamError("dbp: give dedup_eps or dedup_target, not both")

    def input_columns(self) -> tuple[str, ...]:
        return (self.clip_column,) if self.clip_filter else ()

    def input_keys(self) -> tuple[str, ...]:
        keys = set() if (self.embeddings or not self.prune) else {self.key}
        dedup_src = self._dedup_spec()
        if self.dedup and dedup_src[1] is None:
            keys.add(dedup_src[0])
        return tuple(sorted(keys))

    def _dedup_spec(self) -> tuple[str, str | None]:
        """(key, external path) of the SemDeDup stage: its own settings, else the density stage's."""
        if self.dedup_key is None and self.dedup_embeddings is None:
            return self.key, self.embeddings
        return self.dedup_key or self.key, self.dedup_embeddings

    def _sources(self, workdir: Path, bad_embeddings: str = "error") -> tuple[EmbeddingSource, EmbeddingSource]:
        main = EmbeddingSource.create(self.key, self.embeddings, self.missing, workdir / "dbp-ext", bad_embeddings)
        key, ext = self._dedup_spec()
        if (key, ext) == (self.key, self.embeddings):
            return main, main
        return EmbeddingSource.create(key, ext, self.missing, workdir / "dedup-ext", bad_embeddings), main

    def select(self, ctx: RunContext) -> Selection:
        stages: list = []  # the candidate masks handed from stage to stage, released at the end
        try:
            return self._select(ctx, stages)
        finally:
            for rows in stages:
                rows.release(ctx)

    def _select(self, ctx: RunContext, stages: list) -> Selection:
        dedup_src, main_src = self._sources(ctx.scratch_dir(""), getattr(ctx, "bad_embeddings", "error"))
        counters = {"input": int(ctx.num_candidates)}
        details: dict = {}
        if self.dedup:
            kept, c, d = run_semdedup(
                ctx, source=dedup_src, k=self.dedup_k, niter=self.niter, kmeans_seed=self.kmeans_seed,
                train_rows=self.train_rows, eps=self.dedup_eps, target=self.dedup_target, keep=self.dedup_keep,
                seed=self.seed, block=self.block, cap=self.cap, desc="dbp-semdedup")
            counters["after_dedup"] = int(len(kept))
            details["dedup"] = {**c, **d}
            ctx = _next_candidates(ctx, kept)
            stages.append(ctx.candidates)
        if self.clip_filter:
            clock = StageClock()
            kept, d = run_clip_stage(ctx, self.clip_column, self.clip_fraction, self.clip_threshold)
            clock.lap("clip")
            d["seconds"], d["cpu_seconds"] = clock.wall["clip"], clock.cpu["clip"]
            counters["after_clip_score"] = int(len(kept))
            details["clip_score"] = d
            if not self.prune:
                kept.counters, kept.details = {**counters, "kept": len(kept), "dropped": counters["input"] - len(kept)}, details
                return kept
            ctx = _next_candidates(ctx, kept)
            stages.append(ctx.candidates)
        if not self.prune:
            counters.update({"kept": int(len(kept)), "dropped": counters["input"] - int(len(kept))})
            return Selection(kept, counters=counters, details=details)
        kept, c, d = run_density(
            ctx, source=main_src, k=self.k, niter=self.niter, kmeans_seed=self.kmeans_seed, train_rows=self.train_rows,
            fraction=self.fraction, count=self.count, tau=self.tau, num_nn=self.num_nn, balance=self.balance,
            density_rule=self.density, keep=self.keep, seed=self.seed)
        counters.update({"density_input": c["input"], "kept": c["kept"], "dropped": counters["input"] - c["kept"]})
        counters.update({key: c[key] for key in ("requested", "shortfall") if key in c})
        details["density"] = d
        return Selection(kept, counters=counters, details=details)
