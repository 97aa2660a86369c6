"""Ground truth of the synthetic pool: SemDeDup removes planted duplicates and keeps unique items;
DBP at 30% keeps more of the rare concepts than a uniform random subset of the same size."""

from __future__ import annotations

import pandas as pd
import pytest

from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.density.dbp import DBPFilter
from clipsift.filters.density.semdedup import SemDeDupFilter
from clipsift.filters.random_subset import RandomFilter
from clipsift.pool import Pool
from clipsift.uids import hex_to_records, isin_sorted


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipsift.synth import make_pool

    out = tmp_path_factory.mktemp("truth") / "pool"
    make_pool(out, 12_000, seed=1)
    truth = pd.read_parquet(out / "truth.parquet")
    ctx = RunContext(Pool(str(out / "metadata")), LocalExecutor(workers=2, show_progress=False))
    return truth, hex_to_records(truth.uid.to_numpy()), ctx


def test_semdedup_removes_planted_duplicates_keeps_unique(world):
    truth, rec, ctx = world
    kept = isin_sorted(rec, SemDeDupFilter(niter=10).select(ctx).uids)
    dup = truth.dup_group.to_numpy() >= 0
    per_group = pd.Series(kept[dup]).groupby(truth.dup_group.to_numpy()[dup]).sum()
    redundant_kept = int((per_group - 1).clip(lower=0).sum())
    assert truth.is_dup_copy.sum() > 300
    assert redundant_kept / truth.is_dup_copy.sum() < 0.1  # > 90% of redundant copies removed
    assert (per_group >= 1).all()  # every duplicate group keeps one member
    assert kept[~dup].mean() > 0.99  # unique items stay


def test_dbp_keeps_rare_concepts_random_loses(world):
    truth, rec, ctx = world
    sel = DBPFilter(fraction=0.3, niter=10, clip_filter=False).select(ctx)
    dbp = isin_sorted(rec, sel.uids)
    rnd = isin_sorted(rec, RandomFilter(count=len(sel), seed=0).select(ctx).uids)
    freq = truth.concept.value_counts()
    rare = truth.concept.isin(freq[freq <= freq.quantile(0.1)].index).to_numpy()
    assert len(sel) == int(0.3 * sel.counters["after_dedup"])
    print("rare rows kept: dbp", dbp[rare].mean(), "random", rnd[rare].mean())
    assert dbp[rare].mean() > 1.5 * rnd[rare].mean()
    assert dbp[truth.is_dup_copy.to_numpy()].mean() < 0.5 * rnd[truth.is_dup_copy.to_numpy()].mean()
