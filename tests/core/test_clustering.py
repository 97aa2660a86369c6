"""The shared k-means engine: smallest-uid training sample, seeded training, batch-independent
assignment, the grouped store it writes, and external uid-aligned embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from density_pools import Oracle, planted_pool, run, same, write_external

from clipsift.clustering import (
    EmbeddingSource,
    assign,
    assign_to_store,
    fit_centroids,
    normalize,
    sample_size,
    train_centroids,
    training_sample,
    uid_keys,
)
from clipsift.errors import ClipsiftError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.density.dbp import DBPFilter
from clipsift.filters.density.semdedup import SemDeDupFilter
from clipsift.pool import Pool
from clipsift.uids import records_to_hex


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return planted_pool(tmp_path_factory.mktemp("clu") / "pool", n=900, shard_sizes=(300, 350, 250), seed=3)


def ctx_for(root, workers=2, candidates=None):
    return RunContext(Pool(str(root)), LocalExecutor(workers=workers, show_progress=False), candidates)


def test_training_sample_is_smallest_uids(pool_dir):
    o = Oracle(pool_dir)
    uids, vec, seen = training_sample(ctx_for(pool_dir), EmbeddingSource(), 100)
    order = np.argsort(uid_keys(o.uids["f0"], o.uids["f1"]))[:100]
    assert seen == 900 and np.array_equal(uids, o.uids[order]) and np.array_equal(vec, o.raw[order])
    assert sample_size(10_000, 3) == 768 and sample_size(500, 3) == 500 and sample_size(10_000, 3, 100) == 100


def test_training_is_seeded_and_reproducible(pool_dir):
    a, info = fit_centroids(ctx_for(pool_dir, workers=1), EmbeddingSource(), 5, niter=8)
    b, _ = fit_centroids(ctx_for(pool_dir, workers=2), EmbeddingSource(), 5, niter=8)
    assert np.array_equal(a, b) and a.shape == (5, 768) and info["train_rows"] == 900
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    assert not np.array_equal(a, fit_centroids(ctx_for(pool_dir), EmbeddingSource(), 5, niter=8, seed=7)[0])
    assert train_centroids(np.ones((3, 4), np.float32), 10).shape == (3, 4)  # k lowered to the sample size


def test_assignment_does_not_depend_on_batching():
    rng = np.random.default_rng(0)
    x = normalize(rng.standard_normal((1000, 16)))
    c = normalize(rng.standard_normal((7, 16)))
    lab, sim = assign(x, c)
    lab2, sim2 = assign(x, c, chunk=33)
    parts = [assign(x[i : i + 100], c) for i in range(0, 1000, 100)]
    assert np.array_equal(lab, lab2) and np.array_equal(sim, sim2)
    assert np.array_equal(sim, np.concatenate([p[1] for p in parts]))
    assert np.array_equal(lab, np.argmax(x.astype(np.float64) @ c.astype(np.float64).T, axis=1))


def test_store_groups_rows_by_cluster(pool_dir, tmp_path):
    ctx = ctx_for(pool_dir)
    c, _ = fit_centroids(ctx, EmbeddingSource(), 4, niter=5)
    store = assign_to_store(ctx, EmbeddingSource(), c, tmp_path / "s", store_embeddings=True, columns=("clip_l14_similarity_score",))
    o = Oracle(pool_dir)
    _, lab, sim = o.assign(c)
    assert store.sizes.tolist() == np.bincount(lab, minlength=4).tolist()
    for g in range(4):
        grp = store.read(g)
        assert np.array_equal(grp["gidx"], o.gidx[lab == g]) and np.array_equal(grp["sim"], sim[lab == g])
        assert np.array_equal(grp["emb"], o.raw[lab == g]) and np.array_equal(grp["clip_l14_similarity_score"], o.score[lab == g])


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_external_embeddings_drive_clustering(pool_dir, tmp_path, fmt):
    o = Oracle(pool_dir)
    ext = tmp_path / "ext"
    ext.mkdir()
    perm = np.random.default_rng(0).permutation(900)  # any row order, split over two files
    write_external(ext / f"a.{fmt}", o, perm[:400], fmt, scale=2.0)  # scale: rows are renormalised
    write_external(ext / f"b.{fmt}", o, perm[400:], fmt, scale=2.0)
    via_key = run(SemDeDupFilter(k=4, niter=8, eps=0.05), pool_dir, tmp=tmp_path / "w1")
    via_ext = run(SemDeDupFilter(k=4, niter=8, eps=0.05, embeddings=str(ext)), pool_dir, tmp=tmp_path / "w2")
    assert via_ext.details["kmeans"]["embeddings"].startswith("external:")
    # ×2 is exact in float32 and renormalises to the same unit vectors: same clusters, same drops
    same(via_key.uids, via_ext.uids)


def test_external_missing_rows(pool_dir, tmp_path):
    o = Oracle(pool_dir)
    path = tmp_path / "part.npz"
    write_external(path, o, np.arange(600), "npz")
    with pytest.raises(ClipsiftError, match="missing=drop"):
        run(DBPFilter(k=4, niter=5, count=50, dedup=False, clip_filter=False, embeddings=str(path)), pool_dir, tmp=tmp_path / "w1")
    sel = run(DBPFilter(k=4, niter=5, count=50, dedup=False, clip_filter=False, embeddings=str(path), missing="drop"),
              pool_dir, tmp=tmp_path / "w2")
    assert len(sel) == 50 and sel.counters["density_input"] == 600
    from clipsift.uids import isin_sorted, sort_records

    assert isin_sorted(sel.uids, sort_records(o.uids[:600])).all()


def test_external_duplicate_uid_rejected(pool_dir, tmp_path):
    o = Oracle(pool_dir)
    np.savez(tmp_path / "dup.npz", uids=records_to_hex(o.uids[[0, 0, 1]]), emb=o.raw[:3])
    with pytest.raises(ClipsiftError, match="twice"):
        EmbeddingSource.create("l14_img", str(tmp_path / "dup.npz"), "error", tmp_path / "w")
