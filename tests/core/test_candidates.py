"""Candidates as per-shard masks (clipsift.candidates): the shuffle join gives exactly the rows whose
uid is kept (repeated uids included), whatever the bucket count, join ranges or worker count; a
filter restricted by masks writes the same bytes as one restricted by a uid array; a chain passes
masks between its steps and a rerun reuses them."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pool

from clipsift import candidates as cmod
from clipsift.candidates import CandidateRows
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.pool import Pool
from clipsift.recipe import Chain
from clipsift.registry import create_filter
from clipsift.uids import hex_to_records, isin_sorted, sort_records, unique_sorted


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    """Four shards (one empty); shard 3 repeats ten uids of shard 0 (a uid on two rows)."""
    root = write_pool(tmp_path_factory.mktemp("cand") / "pool", [70, 0, 55, 40], seed=4)
    shards = sorted(Pool(str(root)).shards, key=lambda s: -s.num_rows)
    first, last = shards[0].parquet, shards[2].parquet  # 70 and 40 rows
    t = pq.read_table(last)
    uids = t.column("uid").to_pylist()
    uids[:10] = pq.read_table(first).column("uid").to_pylist()[5:15]
    pq.write_table(t.set_column(t.schema.get_field_index("uid"), "uid", pa.array(uids)), last)
    return root


def shard_uids(pool):
    return [hex_to_records(pq.read_table(s.parquet).column("uid")) for s in pool.shards]


@pytest.mark.parametrize("workers, expected, join_rows", [(1, None, 1 << 22), (2, 10**7, 16)])
def test_masks_are_the_rows_whose_uid_is_kept(pool_dir, tmp_path, monkeypatch, workers, expected, join_rows):
    monkeypatch.setattr(cmod, "JOIN_ROWS", join_rows)  # many join ranges
    pool = Pool(str(pool_dir))
    every = np.concatenate(shard_uids(pool))
    rng = np.random.default_rng(1)
    kept = sort_records(np.concatenate([every[rng.random(len(every)) < 0.4], hex_to_records(["ab" * 16, "00" * 16])]))
    kept = np.concatenate([kept, kept[:7]])  # repeats in the stream are fine
    ctx = RunContext(pool, LocalExecutor(workers, show_progress=False), workdir=tmp_path / "w")
    chunks = (sort_records(kept)[i : i + 50] for i in range(0, len(kept), 50))  # chunk edges inside repeats
    rows = CandidateRows.from_sorted_uids(ctx, chunks, str(tmp_path / "c"), expected=expected)
    want = unique_sorted(sort_records(kept))
    total = 0
    for shard, uids in zip(pool.shards, shard_uids(pool)):
        mask = rows.mask(shard)
        assert np.array_equal(mask, isin_sorted(uids, want)), shard.name
        total += int(mask.sum())
    assert rows.num_rows == rows.counts.sum() == total and len(rows) == len(want)  # len(): distinct uids, as an array
    every_u, counts = np.unique(every, return_counts=True)
    assert isin_sorted(every_u[counts > 1], want).any()  # a repeated uid is in play


@pytest.mark.parametrize("name, params", [("clip_score", {"arch": "l14", "fraction": 0.3}), ("random", {"fraction": 0.5}),
                                          ("negclip", {"fraction": 0.5, "batch_size": 16}), ("ssp", {"fraction": 0.5, "k": 3})])
def test_filters_on_masks_equal_filters_on_a_uid_array(pool_dir, tmp_path, name, params):
    pool = Pool(str(pool_dir))
    every = unique_sorted(sort_records(np.concatenate(shard_uids(pool))))
    cands = every[::2]
    ex = LocalExecutor(2, show_progress=False)
    on_array = create_filter(name, params).select(RunContext(pool, ex, cands, workdir=tmp_path / "a"))
    base = RunContext(pool, ex, workdir=tmp_path / "m")
    masks = CandidateRows.from_sorted_uids(base, [cands], str(tmp_path / "c"))
    on_masks = create_filter(name, params).select(base.with_candidates(masks))
    assert np.array_equal(on_array.uids, on_masks.uids) and len(on_masks) > 0
    assert on_array.counters["input"] == on_masks.counters["input"]


def test_chain_passes_masks_and_a_rerun_reuses_them(pool_dir, tmp_path, caplog):
    pool = Pool(str(pool_dir))
    ex = LocalExecutor(1, show_progress=False)
    first, second = {"arch": "l14", "fraction": 0.6}, {"fraction": 0.5, "seed": 2}
    step1 = create_filter("clip_score", first).select(RunContext(pool, ex, workdir=tmp_path / "s1"))
    by_hand = create_filter("random", second).select(RunContext(pool, ex, unique_sorted(step1.uids), workdir=tmp_path / "s2"))
    chain = lambda: Chain([create_filter("clip_score", first), create_filter("random", second)])  # noqa: E731
    from clipsift.stagecache import RunFolder

    run = RunFolder(str(tmp_path / "run"))
    got = chain().select(RunContext(pool, ex, workdir=tmp_path / "c1", run_dir=run))
    assert np.array_equal(got.uids, by_hand.uids)
    assert got.counters == {"input": pool.num_rows, "kept": len(by_hand), "dropped": pool.num_rows - len(by_hand)}
    assert [s["output"] for s in got.details["stages"]] == [len(step1), len(by_hand)]
    assert len(list((tmp_path / "run" / "scratch").glob("candidates-*/done.json"))) == 1
    with caplog.at_level(logging.INFO, logger="clipsift"):
        again = chain().select(RunContext(pool, ex, workdir=tmp_path / "c2", run_dir=run))
    assert np.array_equal(again.uids, got.uids)
    assert any("reused from" in r.getMessage() for r in caplog.records)


def test_cli_candidates_file_in_any_order(pool_dir, tmp_path):
    """--candidates FILE: an unsorted file (repeats included) restricts the rows exactly as the
    sorted distinct uids do."""
    from clipsift.cli import main

    pool = Pool(str(pool_dir))
    every = unique_sorted(sort_records(np.concatenate(shard_uids(pool))))
    listed = every[np.random.default_rng(3).permutation(len(every))[:90]]
    np.save(tmp_path / "cands.npy", np.concatenate([listed, listed[:5]]))
    args = ["filter", "clip_score", "--pool", str(pool_dir), "--set", "arch=b32", "--set", "fraction=0.5", "--workers", "2"]
    assert main([*args, "--candidates", str(tmp_path / "cands.npy"), "--out", str(tmp_path / "cli.npy")]) == 0
    want = create_filter("clip_score", {"arch": "b32", "fraction": 0.5}).select(
        RunContext(pool, LocalExecutor(1, show_progress=False), unique_sorted(sort_records(listed)), workdir=tmp_path / "w"))
    assert np.array_equal(np.load(tmp_path / "cli.npy"), want.uids)
