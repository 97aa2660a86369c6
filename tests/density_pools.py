"""Planted-cluster pools and in-memory oracles shared by the density and clustering tests.

The oracles hold the whole pool in memory (one matrix product for the assignment, the full
similarity matrix per cluster, global sorts); the streaming filters must return exactly the same uids.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import make_uids

from clipsift.clustering import normalize, sample_size, train_centroids, uid_keys
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.density import allocation as density
from clipsift.filters.density.dbp import clip_threshold
from clipsift.filters.density.semdedup import eps_for_target, processing_order, threshold
from clipsift.filters.density.ssp import keep_count, ssp_floor, uniform_budgets
from clipsift.pool import Pool
from clipsift.uids import UID_DTYPE, records_to_hex, sort_records

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


def write_external(path, o, rows, fmt, scale=1.0):
    """External uid-aligned embeddings of the oracle's ``rows`` as an .npz (uids, emb) or .parquet (uid, emb)."""
    hexes = records_to_hex(o.uids[rows])
    emb = (o.raw[rows].astype(np.float32) * scale)
    if fmt == "npz":
        np.savez(path, uids=hexes, emb=emb)
    else:
        pq.write_table(pa.table({"uid": pa.array(hexes.tolist()), "emb": pa.array(list(emb), pa.list_(pa.float32(), emb.shape[1]))}), path)


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


# ---- a spy executor: which maps ran, over what, in which processes --------------------------------
def _pid_and_result(fn, item):
    return os.getpid(), fn(item)


class SpyExecutor(LocalExecutor):
    """A LocalExecutor that records every ``map`` call: desc, unit, items, resources and the ids of
    the processes its tasks ran in."""

    def __init__(self, workers=2):
        super().__init__(workers, show_progress=False)
        self.calls: list[dict] = []

    def map(self, fn, items, *, desc="", unit="shard", total=None, threads=False, resources=None):
        items = list(items)
        call = {"desc": desc, "unit": unit, "items": items, "resources": resources, "pids": []}
        self.calls.append(call)
        if threads:  # thread steps share driver objects and run in the driver anyway
            yield from super().map(fn, items, desc=desc, unit=unit, total=total, threads=True, resources=resources)
            return
        for pid, result in super().map(partial(_pid_and_result, fn), items, desc=desc, unit=unit, total=total,
                                       resources=resources):
            call["pids"].append(pid)
            yield result

    def group_calls(self, word: str) -> list[dict]:
        """The per-group maps (unit "task") whose desc contains ``word``."""
        return [c for c in self.calls if c["unit"] == "task" and word in c["desc"]]
