"""Streaming SemDeDup / SSP / DBP equal naive in-memory oracles on generated pools.

The oracles below hold the whole pool in memory: one matrix product for the assignment, the full
similarity matrix per cluster, global sorts. The streaming filters (grouped store on disk,
blockwise products, worker processes) must return exactly the same uids.
"""

from __future__ import annotations

import numpy as np
import pytest
from density_pools import D, Oracle, planted_pool, run, same  # noqa: F401

from clipsift.filters.density.dbp import DBPFilter
from clipsift.filters.density.semdedup import (
    SemDeDupFilter,
)
from clipsift.filters.density.ssp import SSPFilter
from clipsift.uids import isin_sorted, sort_records


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
