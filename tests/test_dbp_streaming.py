"""Streaming SemDeDup / SSP / DBP equal naive in-memory oracles on generated pools.

The oracles below hold the whole pool in memory: one matrix product for the assignment, the full
similarity matrix per cluster, global sorts. The streaming filters (grouped store on disk,
blockwise products, worker processes) must return exactly the same uids.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_uids

from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters import density
from clipsift.filters.clustering import normalize, sample_size, train_centroids, uid_keys
from clipsift.filters.dbp import DBPFilter, clip_threshold
from clipsift.filters.semdedup import SemDeDupFilter, eps_for_target, processing_order, threshold
from clipsift.filters.ssp import SSPFilter, keep_count, ssp_floor, uniform_budgets
from clipsift.pool import Pool
from clipsift.uids import UID_DTYPE, isin_sorted, sort_records

D = 16


def planted_pool(root, n=1500, shard_sizes=(500, 0, 600, 400), seed=0, dup_rate=0.2):
    """Blobs of different spread plus near-duplicate copies; float16 ``l14_img``, random scores."""
    rng = np.random.default_rng(seed)
    centers = normalize(rng.standard_normal((12, D)))
    spread = rng.uniform(0.1, 0.6, 12)
    lab = rng.integers(0, 12, n)
    x = centers[lab] + spread[lab, None] * rng.standard_normal((n, D)) / np.sqrt(D)
    copies = rng.random(n) < dup_rate
    src = rng.integers(0, n, n)
    x[copies] = x[src[copies]] + 0.01 * rng.standard_normal((int(copies.sum()), D)) / np.sqrt(D)
    # DataComp widths (768 / 512): the planted 16-d geometry padded with zeros, which changes no product
    emb = np.zeros((n, 768), np.float16)
    emb[:, :D] = normalize(x).astype(np.float16)
    b32 = np.zeros((n, 512), np.float16)
    b32[:, :8] = emb[:, :8]
    uids = make_uids(n, seed)
    scores = rng.uniform(0.1, 0.4, n)
    root.mkdir(parents=True)
    start = 0
    for s, size in enumerate(shard_sizes):
        sl = slice(start, start + size)
        pq.write_table(pa.table({"uid": pa.array(uids[sl], pa.string()), "clip_l14_similarity_score": scores[sl]}),
                       root / f"{s:05d}.parquet")
        np.savez(root / f"{s:05d}.npz", l14_img=emb[sl], b32_img=b32[sl])
        start += size
    return root


# ---- the oracle ----------------------------------------------------------------------------------
class Oracle:
    """Everything in memory, naive algorithms."""

    def __init__(self, root, candidates=None, key="l14_img"):
        pool = Pool(str(root))
        batches = [pool.read(s, columns=("clip_l14_similarity_score",), keys=(key,), candidates=candidates) for s in pool.shards]
        self.uids = np.concatenate([b.uids for b in batches])
        self.gidx = np.concatenate([b.global_index for b in batches])
        self.raw = np.concatenate([b.embeddings[key] for b in batches])
        self.score = np.concatenate([b.numpy("clip_l14_similarity_score") for b in batches])

    def subset(self, mask):
        o = object.__new__(Oracle)
        o.uids, o.gidx, o.raw, o.score = self.uids[mask], self.gidx[mask], self.raw[mask], self.score[mask]
        return o

    def centroids(self, k, niter, seed=1234):
        m = sample_size(len(self.uids), k)
        order = np.argsort(uid_keys(self.uids["f0"], self.uids["f1"]))[:m]
        return train_centroids(self.raw[order], k, niter=niter, seed=seed)

    def assign(self, cents):
        x = normalize(self.raw)
        lab = np.argmax(x @ cents.T, axis=1)
        sim = np.einsum("ij,ij->i", x.astype(np.float64), cents[lab].astype(np.float64)).astype(np.float32)
        return x, lab, sim

    def semdedup(self, k, niter, eps=None, target=None, keep="hard", seed=0):
        x, lab, sim = self.assign(self.centroids(k, niter))
        m = np.zeros(len(x), np.float32)
        for g in np.unique(lab):
            idx = np.flatnonzero(lab == g)
            order = processing_order(np.float32(1) - sim[idx], self.gidx[idx], keep, seed, int(g))
            e = x[idx][order]
            s = np.triu(e @ e.T, k=1)
            m[idx[order]] = np.maximum(0, s.max(axis=0))
        eps = eps_for_target(m, target) if target is not None else eps
        return self.uids[m <= threshold(eps)]

    def hardness_ranks(self, lab, sim):
        h = (np.float32(1) - sim).astype(np.float64)
        return np.lexsort((self.gidx, -h))  # global order: hardest first, ties by global index

    def ssp(self, k, niter, fraction, mode, balance):
        cents = self.centroids(k, niter)
        _, lab, sim = self.assign(cents)
        sizes = np.bincount(lab, minlength=len(cents))
        n_keep = keep_count(len(lab), fraction, None)
        order = self.hardness_ranks(lab, sim)
        rank_in_cluster = np.empty(len(lab), np.int64)
        for g in range(len(cents)):
            members = order[lab[order] == g]
            rank_in_cluster[members] = np.arange(len(members))
        quota = uniform_budgets(sizes, n_keep, balance) if mode == "uniform" else ssp_floor(sizes, n_keep, balance)
        chosen = rank_in_cluster < quota[lab]
        if mode == "global":
            rest = [i for i in order if not chosen[i]][: n_keep - int(quota.sum())]
            chosen[rest] = True
        return self.uids[chosen]

    def density(self, k, niter, fraction=None, count=None, tau=0.1, num_nn=20, balance=0.0, keep="hard", seed=0):
        cents = self.centroids(k, niter)
        _, lab, sim = self.assign(cents)
        sizes = np.bincount(lab, minlength=len(cents))
        dist = np.float32(1) - sim
        d_intra = np.array([dist[lab == g].astype(np.float64).mean() if sizes[g] else np.nan for g in range(len(cents))])
        c = density.complexity(d_intra, density.inter_distances(cents, num_nn))
        b = density.budgets(sizes, c, keep_count(len(lab), fraction, count), tau=tau, ratio=balance)
        out = []
        for g in range(len(cents)):
            idx = np.flatnonzero(lab == g)
            out.append(idx[density.take(dist[idx], self.gidx[idx], b["x"][g], keep, seed, g)])
        return self.uids[np.concatenate(out)]

    def clip(self, fraction):
        return self.score >= clip_threshold(self.score, fraction)


def run(filt, root, workers=2, candidates=None, tmp=None):
    ctx = RunContext(Pool(str(root)), LocalExecutor(workers=workers, show_progress=False), candidates, workdir=tmp)
    return filt.select(ctx)


def same(a, b):
    a, b = sort_records(np.asarray(a, UID_DTYPE)), sort_records(np.asarray(b, UID_DTYPE))
    assert len(a) == len(b) and np.array_equal(a, b)


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return planted_pool(tmp_path_factory.mktemp("dbp") / "pool")


# ---- SemDeDup ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keep,eps,target", [("hard", 0.05, None), ("easy", None, 0.7), ("random", 0.1, None)])
def test_semdedup_streaming_equals_oracle(pool_dir, tmp_path, keep, eps, target):
    # block 64 / cap 100: big clusters go blockwise from disk
    f = SemDeDupFilter(k=6, niter=10, eps=eps, target=target, keep=keep, seed=5, block=64, cap=100)
    sel = run(f, pool_dir, tmp=tmp_path)
    ref = Oracle(pool_dir).semdedup(6, 10, eps=eps, target=target, keep=keep, seed=5)
    same(sel.uids, ref)
    assert 0 < len(sel) < 1500 and sel.counters["input"] == 1500


def test_semdedup_independent_of_workers_and_on_candidates(pool_dir, tmp_path):
    every_other = sort_records(Oracle(pool_dir).uids[::2])
    a = run(SemDeDupFilter(k=5, niter=10, keep="random", seed=1), pool_dir, workers=1, candidates=every_other, tmp=tmp_path)
    b = run(SemDeDupFilter(k=5, niter=10, keep="random", seed=1, block=7), pool_dir, workers=2, candidates=every_other, tmp=tmp_path)
    same(a.uids, b.uids)
    same(a.uids, Oracle(pool_dir, candidates=every_other).semdedup(5, 10, eps=0.07, keep="random", seed=1))
    assert isin_sorted(a.uids, every_other).all()


def test_semdedup_target_reports_achieved(pool_dir, tmp_path):
    sel = run(SemDeDupFilter(k=4, niter=10, target=0.6), pool_dir, tmp=tmp_path)
    assert sel.counters["kept"] >= 900 and sel.counters["kept_fraction"] == sel.counters["kept"] / 1500


# ---- SSP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,balance", [("global", 0.0), ("global", 0.5), ("uniform", 0.0), ("uniform", 1.0)])
def test_ssp_streaming_equals_oracle(pool_dir, tmp_path, mode, balance):
    sel = run(SSPFilter(k=8, niter=10, fraction=0.4, mode=mode, balance=balance), pool_dir, tmp=tmp_path)
    same(sel.uids, Oracle(pool_dir).ssp(8, 10, 0.4, mode, balance))
    assert len(sel) == 600


# ---- DBP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", ["hard", "easy", "random"])
def test_dbp_density_stage_equals_oracle(pool_dir, tmp_path, keep):
    f = DBPFilter(k=10, niter=10, fraction=0.3, num_nn=3, keep=keep, seed=2, dedup=False, clip_filter=False)
    sel = run(f, pool_dir, tmp=tmp_path)
    same(sel.uids, Oracle(pool_dir).density(10, 10, 0.3, num_nn=3, keep=keep, seed=2))
    assert len(sel) == int(0.3 * 1500)
    d = sel.details["density"]
    assert sum(d["budgets"]) == 450 and all(b <= s for b, s in zip(d["budgets"], d["cluster_sizes"]))


def test_dbp_full_pipeline_equals_oracle(pool_dir, tmp_path):
    f = DBPFilter(k=8, niter=10, fraction=0.5, num_nn=4, dedup_k=5, dedup_eps=0.05, clip_fraction=0.6, block=50, cap=120)
    sel = run(f, pool_dir, tmp=tmp_path)
    o = Oracle(pool_dir)
    o1 = o.subset(isin_sorted(o.uids, sort_records(o.semdedup(5, 10, eps=0.05))))
    o2 = o1.subset(o1.clip(0.6))
    same(sel.uids, o2.density(8, 10, 0.5, num_nn=4))
    c = sel.counters
    assert c["input"] == 1500 and c["after_dedup"] == len(o1.uids) and c["after_clip_score"] == len(o2.uids)
    assert c["kept"] == int(0.5 * len(o2.uids)) == len(sel)
    assert sel.details["dedup"]["eps"] == 0.05 and len(sel.details["density"]["budgets"]) == 8
    assert np.array_equal(sel.uids, np.unique(sel.uids))  # sorted, unique u8,u8


def test_dbp_other_key_and_count(pool_dir, tmp_path):
    f = DBPFilter(key="b32_img", k=6, niter=10, count=100, dedup=False, clip_filter=False)
    sel = run(f, pool_dir, tmp=tmp_path)
    o = Oracle(pool_dir, key="b32_img")
    same(sel.uids, o.density(6, 10, count=100))
    assert len(sel) == 100


def test_dbp_stages_run_alone(pool_dir, tmp_path):
    o = Oracle(pool_dir)
    clip_only = run(DBPFilter(dedup=False, prune=False, clip_fraction=0.25), pool_dir, tmp=tmp_path)
    same(clip_only.uids, o.uids[o.clip(0.25)])
    assert clip_only.counters["after_clip_score"] == len(clip_only) == int(0.25 * 1500) + 1  # DataComp: n+1 rows
    dedup_only = run(DBPFilter(dedup_k=5, niter=10, clip_filter=False, prune=False), pool_dir, tmp=tmp_path)
    same(dedup_only.uids, o.semdedup(5, 10, eps=0.07))
    with pytest.raises(Exception, match="every stage is off"):
        DBPFilter(dedup=False, clip_filter=False, prune=False)


def test_datacomp_medium_recipe_runs(pool_dir, tmp_path):
    from importlib.resources import files

    from clipsift.recipe import load_recipe

    step = load_recipe(files("clipsift.filters") / "recipes" / "dbp_datacomp_medium.toml")
    assert step.k == 100 and step.tau == 0.1 and step.num_nn == 20 and step.balance == 0.0
    sel = run(step, pool_dir, tmp=tmp_path)
    assert len(sel) == int(0.3785 * sel.counters["after_clip_score"])
    assert len(sel.details["density"]["budgets"]) == 100
