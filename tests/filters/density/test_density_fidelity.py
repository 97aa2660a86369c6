"""Fidelity of the k-means engine, SSP and DBP to shared/specs/dbp.md §1 and §7 (issue 16).

``Spec`` below is an in-memory transcription of the spec that shares no code with clipsift: it
reads the shards with pyarrow/numpy, normalises in float64 and rounds once to float32, takes the
m = min(n, 256·k) smallest (hi, lo) uids in ascending order, trains faiss' spherical k-means on
them, assigns by the exact float64 argmax (ties to the smallest id) and ranks by hardness.
The known-answer checks run the issue's example (``clipsift pool make --rows 20000 --seed 17``,
``ssp`` fraction 0.1, k = 100) and the cases that used to differ here (k = 79; a 10,000-row
candidate set with k = 40), where m = n.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from density_pools import Oracle, planted_pool, run

from clipsift.clustering import (
    EmbeddingSource,
    assign,
    fit_centroids,
    normalize,
    training_sample,
)
from clipsift.errors import ParamError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.density import allocation as density
from clipsift.filters.density.dbp import DBPFilter, clip_threshold, intra_distance, run_clip_stage
from clipsift.filters.density.ssp import SSPFilter, ssp_floor, uniform_budgets
from clipsift.pool import Pool
from clipsift.uids import UID_DTYPE, sort_records


# ---- the transcription ---------------------------------------------------------------------------
class Spec:
    """dbp.md §1, §3, §4, §7 in memory, written from the spec text."""

    def __init__(self, root, key="l14_img", rows=None):
        hi, lo, raw = [], [], []
        for p in sorted(root.glob("*.parquet")):
            u = pq.read_table(p, columns=["uid"]).column("uid").to_pylist()
            hi.append(np.array([int(x[:16], 16) for x in u], np.uint64))
            lo.append(np.array([int(x[16:32], 16) for x in u], np.uint64))
            with np.load(p.with_suffix(".npz")) as z:
                raw.append(z[key])
        self.hi, self.lo, raw = np.concatenate(hi), np.concatenate(lo), np.concatenate(raw)
        self.g = np.arange(len(self.hi))  # global index: (shard rank, row)
        if rows is not None:
            self.hi, self.lo, raw, self.g = self.hi[rows], self.lo[rows], raw[rows], self.g[rows]
        x = raw.astype(np.float64)
        self.x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # §7.2: rounded once

    def training_rows(self, k, train_rows=None):
        m = min(len(self.x), 256 * k) if train_rows is None else min(len(self.x), 256 * k, train_rows)
        return np.lexsort((self.lo, self.hi))[:m]  # §7.1: ascending (hi, lo), the same for m = n

    def centroids(self, k, niter=100, seed=1234, train_rows=None):
        km = faiss.Kmeans(self.x.shape[1], k, niter=niter, seed=seed, spherical=True)
        km.train(np.ascontiguousarray(self.x[self.training_rows(k, train_rows)]))
        c = km.centroids.astype(np.float64)
        return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)

    def assign(self, c):
        dots = self.x.astype(np.float64) @ c.astype(np.float64).T
        lab = np.argmax(dots, axis=1)  # first maximum: the smallest cluster id
        return lab, dots[np.arange(len(lab)), lab].astype(np.float32)

    def ssp(self, k, fraction, balance=0.5, **kw):
        lab, s = self.assign(self.centroids(k, **kw))
        n = len(lab)
        big_n = int(fraction * n)  # §7.3
        h = (np.float32(1) - s).astype(np.float64)
        sizes = np.bincount(lab, minlength=k)
        lb = np.minimum(int((big_n / k) * balance), sizes) if balance > 0 else np.zeros(k, np.int64)
        order = np.lexsort((self.g, -h))  # hardest first, ties by ascending g
        rank = np.empty(n, np.int64)
        for j in range(k):
            members = order[lab[order] == j]
            rank[members] = np.arange(len(members))
        chosen = rank < lb[lab]
        chosen[order[~chosen[order]][: big_n - int(lb.sum())]] = True
        return self.uids(chosen), sizes

    def uids(self, mask):
        out = np.empty(int(mask.sum()), UID_DTYPE)
        out["f0"], out["f1"] = self.hi[mask], self.lo[mask]
        return sort_records(out)


def ctx_for(root, candidates=None, workers=2):
    return RunContext(Pool(str(root)), LocalExecutor(workers=workers, show_progress=False), candidates)


# ---- known answers (issue 16) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool17(tmp_path_factory):
    from clipsift.synth import make_pool

    out = tmp_path_factory.mktemp("fidelity") / "pool"
    make_pool(out, 20_000, seed=17, workers=1)  # = clipsift pool make --rows 20000 --seed 17
    return out / "metadata"


@pytest.mark.slow
@pytest.mark.parametrize("k", [100, 79])
def test_ssp_known_answer_whole_input_is_the_sample(pool17, k):
    spec = Spec(pool17)
    assert len(spec.training_rows(k)) == len(spec.x) == 20_000  # m = n
    want, sizes = spec.ssp(k, 0.1)
    sel = SSPFilter(k=k, fraction=0.1).select(ctx_for(pool17))
    assert sel.details["cluster_sizes"] == sizes.tolist()
    assert len(sel) == len(want) == 2_000 and np.array_equal(sel.uids, want)


@pytest.mark.slow
def test_ssp_known_answer_on_candidates(pool17):
    rows = np.sort(np.random.default_rng(0).choice(20_000, 10_000, replace=False))
    spec = Spec(pool17, rows=rows)
    cand = spec.uids(np.ones(len(rows), bool))
    want, _ = spec.ssp(40, 0.1)  # 256·40 > 10,000: m = n
    same_rows = SSPFilter(k=40, fraction=0.1).select(ctx_for(pool17, cand))
    assert np.array_equal(same_rows.uids, want)


# ---- one code path for m = n and m < n (§7.1) ----------------------------------------------------
@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    return planted_pool(tmp_path_factory.mktemp("fid") / "pool", n=900, shard_sizes=(300, 350, 250), seed=3)


def test_m_equals_n_takes_the_same_path_as_m_below_n(small_pool, monkeypatch):
    handed = []
    real_train = faiss.Kmeans.train

    def spy(self, x, *a, **kw):
        handed.append((np.array(x, copy=True), x.dtype, x.flags["C_CONTIGUOUS"], self.cp.max_points_per_centroid, self.k))
        return real_train(self, x, *a, **kw)

    monkeypatch.setattr(faiss.Kmeans, "train", spy)
    n, k = 900, 4  # 256·k = 1024 ≥ n
    full, info_full = fit_centroids(ctx_for(small_pool), EmbeddingSource(), k, niter=5)
    less, info_less = fit_centroids(ctx_for(small_pool), EmbeddingSource(), k, niter=5, train_rows=n - 1)
    assert info_full["train_rows"] == n and info_less["train_rows"] == n - 1
    (a, a_dtype, a_contig, a_cap, a_k), (b, b_dtype, b_contig, b_cap, b_k) = handed
    assert a_dtype == b_dtype == np.float32 and a_contig and b_contig and a_cap == b_cap == 256 and a_k == b_k == k
    # same sample rule and order: the n − 1 smallest uids are the first n − 1 rows of the n smallest
    assert np.array_equal(a[: n - 1], b)
    # the values handed to faiss are the spec's: float64-normalised rows, rounded once, ascending uid
    spec = Spec(small_pool)
    assert np.array_equal(a, spec.x[spec.training_rows(k)])
    assert np.array_equal(b, spec.x[spec.training_rows(k, n - 1)])
    uids, _, _ = training_sample(ctx_for(small_pool, workers=1), EmbeddingSource(), n)
    assert np.array_equal(uids, sort_records(uids))  # ascending (hi, lo) when m = n too


# ---- §7.2 arithmetic -------------------------------------------------------------------------------
def test_normalisation_is_float64_rounded_once():
    raw = np.random.default_rng(1).standard_normal((500, 768)).astype(np.float16)
    x = raw.astype(np.float64)
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    got = normalize(raw)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(normalize(raw, chunk=7), want)  # batch-independent
    x32 = raw.astype(np.float32)
    old = x32 / np.sqrt(np.einsum("ij,ij->i", x32, x32, dtype=np.float32))[:, None]
    assert not np.array_equal(old, want)  # float32 arithmetic would hand faiss other values


def test_assignment_is_the_exact_argmax_ties_to_smallest_id():
    rng = np.random.default_rng(2)
    base = rng.standard_normal(768)
    # centroids whose dots with a row differ by far less than float32 resolution
    c = normalize(base[None, :] + 1e-6 * rng.standard_normal((40, 768)))
    c = np.concatenate([c, c[:5]])  # exact duplicates: ties go to the smaller id
    x = normalize(base[None, :] + 0.5 * rng.standard_normal((3000, 768)))
    lab, s = assign(x, c, chunk=333)
    dots = x.astype(np.float64) @ c.astype(np.float64).T
    assert np.array_equal(lab, np.argmax(dots, axis=1)) and lab.max() < 40
    assert np.array_equal(s, dots[np.arange(len(x)), lab].astype(np.float32))
    assert np.array_equal(lab, assign(x[::-1], c)[0][::-1])


# ---- §7.3 SSP's N and uniform rounding -------------------------------------------------------------
def test_ssp_n_and_uniform_largest_remainder():
    # targets N·M_j/ΣM = (1.5, 1.5, 2): floors (1, 1, 2), the one left goes to the largest remainder, lowest id
    assert uniform_budgets(np.array([3, 3, 4]), 5, 0.0).tolist() == [2, 1, 2]
    x, _ = density.water_fill(5 * np.array([3, 3, 4]) / 10, np.zeros(3), np.array([3, 3, 4]), 5)
    assert density.round_budgets(x, np.zeros(3), np.array([3, 3, 4]), 5).tolist() == [2, 1, 2]


def test_ssp_keeps_int_fraction_n(small_pool):
    sel = run(SSPFilter(k=4, niter=5, fraction=0.333), small_pool)
    assert len(sel) == int(0.333 * 900) == 299


# ---- §7.4 n < k --------------------------------------------------------------------------------------
def test_fewer_rows_than_k_lowers_k_with_a_warning(small_pool, caplog):
    cand = sort_records(Oracle(small_pool).uids[:30])
    with caplog.at_level(logging.WARNING, logger="clipsift"):
        sel = SSPFilter(k=50, niter=5, fraction=0.5).select(ctx_for(small_pool, cand))
    km = sel.details["kmeans"]
    assert km["k"] == 30 and km["k_requested"] == 50 and len(sel.details["cluster_sizes"]) == 30
    assert any("k=50" in r.getMessage() and "using k=30" in r.getMessage() for r in caplog.records)
    assert len(sel) == 15
    with pytest.raises(ParamError, match="train_rows=3 is below k=5"):
        fit_centroids(ctx_for(small_pool), EmbeddingSource(), 5, niter=5, train_rows=3)


def test_lower_bounds_count_empty_clusters():
    sizes = np.array([0, 10, 10, 0])
    assert ssp_floor(sizes, 8, 1.0).tolist() == [0, 2, 2, 0]  # s = int(8/4·1), not int(8/2·1)
    assert density.lower_bounds(sizes, 8, 4, 1.0).tolist() == [0, 2, 2, 0]


# ---- §7.5 the CLIP stage's fraction rule -----------------------------------------------------------
def test_clip_stage_is_datacomps_fraction_rule(small_pool):
    v = np.array([0.5, np.nan, 0.9, 0.7, 0.7, 0.1, np.nan, 0.3])
    # sorted desc, NaN last: 0.9 0.7 0.7 0.5 0.3 0.1 nan nan; int(8·0.25) = 2 → T = 0.7, ties kept
    assert clip_threshold(v, 0.25) == 0.7 and int((v >= 0.7).sum()) == 3
    assert clip_threshold(v, 0.5) == 0.3  # n + 1 = 5 rows
    assert np.isnan(clip_threshold(v, 0.8))  # int(6.4) = 6 lands on a NaN: nothing passes, as in DataComp
    with pytest.raises(ParamError, match="fraction"):
        clip_threshold(v, 1.0)  # DataComp: IndexError
    o = Oracle(small_pool)
    kept, d = run_clip_stage(ctx_for(small_pool), "clip_l14_similarity_score", 0.1, None)
    t = -np.sort(-o.score)[int(900 * 0.1)]
    assert d["threshold"] == t and len(kept) == int((o.score >= t).sum()) == 91


# ---- §7.6 d_intra in float64, complexities -----------------------------------------------------------
def test_d_intra_sums_in_float64():
    s = np.random.default_rng(3).uniform(-0.2, 0.9, 200_000).astype(np.float32)
    exact = math.fsum(1.0 - float(v) for v in s) / len(s)
    assert abs(intra_distance(s) - exact) < 1e-15
    f32 = float(np.cumsum(np.float32(1) - s, dtype=np.float32)[-1] / np.float32(len(s)))
    assert abs(f32 - exact) > 1e-6  # what running float32 accumulation would report
    assert np.isnan(intra_distance(np.empty(0, np.float32)))


def test_complexity_clamp_and_error():
    c = density.complexity(np.array([0.2, -5e-7, 0.3]), np.array([1.0, 1.0, 1.0]))
    assert c.tolist() == [0.2, 0.0, 0.3]
    with pytest.raises(ParamError, match="negative complexity"):
        density.complexity(np.array([0.2, -2e-6]), np.array([1.0, 1.0]))


# ---- §7.7 random keep modes --------------------------------------------------------------------------
def test_dbp_random_keep_independent_of_workers_and_candidates_layout(small_pool, tmp_path):
    f = dict(k=5, niter=5, fraction=0.3, keep="random", seed=4, dedup=False, clip_filter=False)
    a = run(DBPFilter(**f), small_pool, workers=1, tmp=tmp_path / "a")
    b = run(DBPFilter(**f), small_pool, workers=2, tmp=tmp_path / "b")
    assert np.array_equal(a.uids, b.uids) and len(a) == 270
    c = run(DBPFilter(**{**f, "seed": 5}), small_pool, workers=2, tmp=tmp_path / "c")
    assert not np.array_equal(a.uids, c.uids)
