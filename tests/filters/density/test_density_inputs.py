"""What reaches SemDeDup / SSP / DBP and what they leave behind (issue 11 items 5, 7, 8):
counts that cannot be met, the external-embeddings cache in a reused workdir, scratch folders,
and non-finite or zero-norm external vectors."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from density_pools import Oracle, planted_pool, write_external

from clipsift.clustering import EmbeddingSource, ExternalEmbeddings
from clipsift.errors import ParamError, PoolError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.density.dbp import DBPFilter
from clipsift.filters.density.semdedup import SemDeDupFilter
from clipsift.filters.density.ssp import SSPFilter
from clipsift.pool import Pool
from clipsift.uids import isin_sorted, sort_records


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return planted_pool(tmp_path_factory.mktemp("inputs") / "pool", n=900, shard_sizes=(300, 350, 250), seed=5)


def ctx_for(root, workdir, bad="error", candidates=None):
    return RunContext(Pool(str(root)), LocalExecutor(workers=2, show_progress=False), candidates, workdir, bad_embeddings=bad)


# ---- item 5: counts that cannot be met ----------------------------------------------------------------
def test_dbp_count_above_the_clip_stage_output_warns_and_records(pool_dir, tmp_path, caplog):
    f = DBPFilter(k=4, niter=5, count=1000, dedup=False, clip_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="clipsift"):
        sel = f.select(ctx_for(pool_dir, tmp_path))
    c = sel.counters
    assert c["after_clip_score"] == 451 == c["density_input"] == len(sel)
    assert c["requested"] == 1000 and c["shortfall"] == 549
    assert sel.details["density"]["budgets"] == sel.details["density"]["cluster_sizes"]
    assert any("count=1000" in r.getMessage() and "549 short" in r.getMessage() for r in caplog.records)


def test_ssp_count_above_pool_warns_and_records(pool_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="clipsift"):
        sel = SSPFilter(k=4, niter=5, count=5000).select(ctx_for(pool_dir, tmp_path))
    assert len(sel) == 900 and sel.counters["requested"] == 5000 and sel.counters["shortfall"] == 4100
    assert any("count=5000" in r.getMessage() for r in caplog.records)
    met = SSPFilter(k=4, niter=5, count=900).select(ctx_for(pool_dir, tmp_path))
    assert len(met) == 900 and "shortfall" not in met.counters and "requested" not in met.counters


# ---- item 7: the external-embeddings cache is keyed ---------------------------------------------------
def _ext(tmp_path, o, name, seed):
    """External vectors unrelated to the pool's, so another file gives another clustering."""
    path = tmp_path / name
    rng = np.random.default_rng(seed)
    o2 = object.__new__(Oracle)
    o2.uids, o2.raw = o.uids, rng.standard_normal((len(o.uids), 24)).astype(np.float32)
    write_external(path, o2, np.arange(len(o.uids)), "npz")
    return path


def test_reused_workdir_never_serves_another_files_vectors(pool_dir, tmp_path):
    o = Oracle(pool_dir)
    a, b = _ext(tmp_path, o, "a.npz", 1), _ext(tmp_path, o, "b.npz", 2)
    shared = tmp_path / "work"

    def ssp(path, workdir):
        return SSPFilter(k=5, niter=5, fraction=0.3, embeddings=str(path)).select(ctx_for(pool_dir, workdir)).uids

    ra, rb = ssp(a, shared), ssp(b, shared)
    assert not np.array_equal(ra, rb)
    assert np.array_equal(rb, ssp(b, tmp_path / "fresh"))
    assert np.array_equal(ra, ssp(a, shared))
    slot = shared / "external-embeddings"
    assert len(os.listdir(slot)) == 1  # one copy per slot: a reused workdir does not grow
    # the same path rewritten with other vectors (size and mtime change) is prepared again
    b_content = b.read_bytes()
    a_content = a.read_bytes()
    a.write_bytes(b_content)
    os.utime(a, ns=(a.stat().st_mtime_ns + 10**9,) * 2)
    assert np.array_equal(ssp(a, shared), rb)
    a.write_bytes(a_content)


def test_interrupted_preparation_leaves_no_cache(pool_dir, tmp_path, monkeypatch):
    o = Oracle(pool_dir)
    path = _ext(tmp_path, o, "a.npz", 1)

    def boom(self, out):
        (out / "keys.npy").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ExternalEmbeddings, "_build", boom)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingSource.create("l14_img", str(path), "error", tmp_path / "w")
    assert os.listdir(tmp_path / "w" / "external-embeddings") == []


# ---- scratch folders are removed, on success and on error -----------------------------------------------
def test_scratch_folders_removed_after_runs_and_errors(pool_dir, tmp_path):
    work = tmp_path / "work"
    ctx = ctx_for(pool_dir, work)
    SemDeDupFilter(k=4, niter=5).select(ctx)
    SSPFilter(k=4, niter=5, fraction=0.2).select(ctx)
    DBPFilter(k=4, niter=5, fraction=0.2, dedup_k=3).select(ctx)
    with pytest.raises(ParamError, match="balance"):  # raised after the grouped store is written
        SSPFilter(k=4, niter=5, count=10, balance=50.0).select(ctx)
    assert os.listdir(work) == []


# ---- item 8: bad external vectors ---------------------------------------------------------------------
@pytest.fixture()
def bad_ext(pool_dir, tmp_path):
    o = Oracle(pool_dir)
    emb = o.raw.astype(np.float32)
    emb[17] = np.nan
    emb[400] = 0.0
    emb[401, 3] = np.inf
    o2 = object.__new__(Oracle)
    o2.uids, o2.raw = o.uids, emb
    path = tmp_path / "bad.npz"
    write_external(path, o2, np.arange(len(o.uids)), "npz")
    return path, o, [17, 400, 401]


def test_bad_external_rows_are_an_error_naming_file_key_row(pool_dir, tmp_path, bad_ext):
    path, _, _ = bad_ext
    with pytest.raises(PoolError, match=r"bad\.npz: key 'emb' row 17 has non-finite values \(3 such row"):
        SSPFilter(k=4, niter=5, fraction=0.3, embeddings=str(path)).select(ctx_for(pool_dir, tmp_path / "w"))


def test_bad_external_rows_dropped_and_counted(pool_dir, tmp_path, bad_ext):
    path, o, bad = bad_ext
    ctx = ctx_for(pool_dir, tmp_path / "w", bad="drop")
    sel = DBPFilter(k=4, niter=5, fraction=0.3, embeddings=str(path), dedup_k=3).select(ctx)
    assert ctx.dropped == {"bad_embeddings": 3}  # counted once, though two stages read the vectors
    assert sel.details["dedup"]["kmeans"]["bad_embeddings_dropped"] == 3
    assert not isin_sorted(sort_records(o.uids[bad]), sel.uids).any()
    # same as leaving the rows out of the file, with missing=drop
    good = np.setdiff1d(np.arange(len(o.uids)), bad)
    clean = tmp_path / "clean.npz"
    write_external(clean, o, good, "npz")
    ref = DBPFilter(k=4, niter=5, fraction=0.3, embeddings=str(clean), missing="drop", dedup_k=3)
    assert np.array_equal(sel.uids, ref.select(ctx_for(pool_dir, tmp_path / "w2")).uids)
    # a copy prepared under drop still refuses the file under error
    with pytest.raises(PoolError, match="row 17"):
        SSPFilter(k=4, niter=5, fraction=0.3, embeddings=str(path)).select(ctx_for(pool_dir, tmp_path / "w"))


def test_bad_rows_outside_the_candidates_are_not_counted(pool_dir, tmp_path, bad_ext):
    path, o, _ = bad_ext
    cand = sort_records(o.uids[np.r_[0:17, 18:300]])
    ctx = ctx_for(pool_dir, tmp_path / "w", bad="drop", candidates=cand)
    sel = SSPFilter(k=4, niter=5, fraction=0.5, embeddings=str(path)).select(ctx)
    assert ctx.dropped == {} and sel.counters["input"] == 299


# ---- other workdir caches: NormSim's p = inf target matrix ---------------------------------------------
def test_normsim_target_matrix_keyed_in_a_reused_workdir(pool_dir, tmp_path):
    from clipsift.registry import create_filter

    rng = np.random.default_rng(9)
    t1, t2 = tmp_path / "t1.npy", tmp_path / "t2.npy"
    np.save(t1, rng.standard_normal((20, 768)).astype(np.float32))
    np.save(t2, rng.standard_normal((20, 768)).astype(np.float32))
    shared = tmp_path / "work"

    def normsim(target, workdir):
        ctx = RunContext(Pool(str(pool_dir)), LocalExecutor(1, show_progress=False), None, workdir, device="cpu")
        return create_filter("normsim", {"fraction": 0.2, "norm": "inf", "target": str(target)}).select(ctx).uids

    a, b = normsim(t1, shared), normsim(t2, shared)  # same process, same workdir: the resident cache too
    assert not np.array_equal(a, b)
    assert np.array_equal(b, normsim(t2, tmp_path / "fresh"))
    assert np.array_equal(a, normsim(t1, shared))
    assert len([f for f in os.listdir(shared) if f.startswith("normsim_targets")]) == 2  # one per target set


def test_clipcov_resume_folder_keyed_by_bad_embeddings_policy(pool_dir, tmp_path):
    from clipsift.registry import create_filter

    f = create_filter("clipcov", {"fraction": 0.5, "partition": "kmeans"})
    strict, lenient = ctx_for(pool_dir, tmp_path), ctx_for(pool_dir, tmp_path, bad="drop")
    assert f._run_dir(strict) == f._run_dir(ctx_for(pool_dir, tmp_path)) != f._run_dir(lenient)


# ---- bad pool rows (screened by the pool reader) are counted once per filter ---------------------------
@pytest.fixture(scope="module")
def nan_pool(tmp_path_factory):
    root = planted_pool(tmp_path_factory.mktemp("nanpool") / "pool", n=600, shard_sizes=(300, 300), seed=1)
    with np.load(root / "00000.npz") as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["l14_img"][5] = np.nan
    arrays["l14_img"][6] = 0
    np.savez(root / "00000.npz", **arrays)
    return root


@pytest.mark.parametrize("make", [
    lambda: SSPFilter(k=4, niter=5, fraction=0.5),
    lambda: SemDeDupFilter(k=3, niter=5),
    lambda: DBPFilter(k=4, niter=5, fraction=0.5, dedup_k=3, clip_filter=False),
])
def test_bad_pool_rows_counted_once_across_passes_and_stages(nan_pool, tmp_path, make):
    ctx = ctx_for(nan_pool, tmp_path, bad="drop")
    sel = make().select(ctx)
    assert ctx.dropped == {"bad_embeddings": 2}  # sample pass and assignment pass read the same rows
    with pytest.raises(PoolError, match="row 5"):
        make().select(ctx_for(nan_pool, tmp_path))
    assert len(sel) > 0
