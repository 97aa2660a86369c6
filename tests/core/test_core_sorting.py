"""Sorting uids at bounded memory: the radix order, the bucketed spill sorter, streamed subsets,
and the windowed random selection (against the straightforward in-memory answers)."""

from __future__ import annotations

import gc
import hashlib
import io
import os

import numpy as np
import pytest
from conftest import random_records as _records
from conftest import write_pool

import clipsift.filters.random_subset as random_subset
from clipsift.executor import LocalExecutor
from clipsift.filter import RowFilter, RunContext, Selection
from clipsift.pool import Pool
from clipsift.registry import create_filter
from clipsift.uids import UID_DTYPE, hex_to_records, sort_order
from clipsift.uidsort import UidSorter, bucket_bits


@pytest.fixture(scope="module")
def mid_pool(tmp_path_factory):
    """12k rows in uneven shards (one empty): large enough that the random window is a small part."""
    return write_pool(tmp_path_factory.mktemp("mid") / "pool", [4000, 0, 3000, 5000], npz=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _records(20_000, 0),  # hash-like uids
        lambda: _records(20_000, 1, hi_values=np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)),  # heavy hi ties
        lambda: _records(20_000, 2, hi_values=np.arange(5000, dtype=np.uint64) << np.uint64(40)),  # equal low bits
        lambda: _records(100, 3),  # small arrays take the lexsort path
    ],
)
def test_sort_order_is_the_stable_lexicographic_order(make):
    r = make()
    r[: len(r) // 10] = r[len(r) // 10 : len(r) // 5]  # exact duplicates: stability matters
    np.testing.assert_array_equal(sort_order(r), np.lexsort((r["f1"], r["f0"])))


@pytest.mark.parametrize("bad", ["g", " ", "-", "\x00"])
def test_hex_conversion_rejects_any_non_hex_byte_and_names_the_row(bad):
    uids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(50)]
    uids[37] = bad + uids[37][1:]
    with pytest.raises(ValueError, match="row 37.*not hexadecimal"):
        hex_to_records(uids)


def test_hex_conversion_accepts_uppercase_with_python_int_semantics():
    uids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(50)]
    recs = hex_to_records([u.upper() for u in uids])
    assert [int(u, 16) for u in uids] == [(int(a) << 64) | int(b) for a, b in zip(recs["f0"], recs["f1"])]


@pytest.mark.parametrize(
    "bucket_rows,threads,chunk_rows",
    [(1 << 18, 2, 1 << 18), (512, 2, 1000), (64, 2, 1), (10_000, 8, 7000), (64, 1, 1 << 18)],
)
def test_sorter_returns_every_record_sorted_and_writes_np_save_bytes(tmp_path, bucket_rows, threads, chunk_rows):
    r = _records(30_000, 4)
    r[:500] = r[500:1000]
    with UidSorter(len(r), tmp_path, bucket_rows=bucket_rows, threads=threads, chunk_rows=chunk_rows) as sorter:
        assert sorter.num_buckets == 1 << bucket_bits(len(r), bucket_rows)
        for chunk in np.array_split(r, 37):  # uneven adds
            sorter.add(chunk)
        assert sorter.count == len(r)
        if os.name == "posix":  # the spill file has no name: a killed run leaves nothing behind
            assert list(tmp_path.iterdir()) == []
        expected = r[np.lexsort((r["f1"], r["f0"]))]
        np.testing.assert_array_equal(sorter.to_array(), expected)
        path, digest = sorter.write_npy(tmp_path / "out")
    buf = io.BytesIO()
    np.save(buf, expected)
    assert path.name == "out.npy" and path.read_bytes() == buf.getvalue()
    assert digest == hashlib.sha256(expected.tobytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]  # spill file removed, no temporaries


def test_empty_sorter_writes_an_empty_subset(tmp_path):
    with UidSorter(0, tmp_path) as sorter:
        path, _ = sorter.write_npy(tmp_path / "empty.npy")
        assert np.load(path).dtype == UID_DTYPE and len(np.load(path)) == 0
        assert len(Selection(sorter=sorter)) == 0


def test_selection_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError):
        Selection()
    with UidSorter(1, tmp_path) as sorter, pytest.raises(ValueError):
        Selection(np.empty(0, dtype=UID_DTYPE), sorter=sorter)


def _in_memory(pool, params, workers, candidates=None):
    ctx = RunContext(pool, LocalExecutor(workers, show_progress=False), candidates)
    return create_filter("random", params)._select_in_memory(ctx)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "params",
    [{"fraction": 0.3, "seed": 0}, {"fraction": 0.0}, {"fraction": 1.0}, {"count": 1}, {"count": 1399}, {"fraction": 0.61, "seed": 7}],
)
def test_windowed_random_equals_the_in_memory_selection(mid_pool, params, workers):
    pool = Pool(mid_pool)
    ctx = RunContext(pool, LocalExecutor(workers, show_progress=False))
    got = create_filter("random", params).select(ctx)
    want = _in_memory(pool, params, workers)
    np.testing.assert_array_equal(got.uids, want.uids)
    assert got.counters == want.counters


def test_random_falls_back_when_the_cut_leaves_the_window(mid_pool, monkeypatch, caplog):
    pool = Pool(mid_pool)
    monkeypatch.setattr(random_subset, "WINDOW_SIGMAS", 0.0)
    monkeypatch.setattr(random_subset, "WINDOW_MIN_ROWS", 0)
    ctx = RunContext(pool, LocalExecutor(1, show_progress=False))
    results = {create_filter("random", {"fraction": 0.5, "seed": s}).select(ctx).uids.tobytes() for s in range(3)}
    want = {_in_memory(pool, {"fraction": 0.5, "seed": s}, 1).uids.tobytes() for s in range(3)}
    assert results == want
    assert "second pass" in caplog.text  # a zero-width window cannot hold the cut every time


def test_random_on_candidates_that_the_pool_lacks(mid_pool):
    """Fewer rows than candidates: the cut moves, the answer still equals the in-memory one."""
    pool = Pool(mid_pool)
    ctx = RunContext(pool, LocalExecutor(1, show_progress=False))
    half = create_filter("random", {"fraction": 0.5, "seed": 1}).select(ctx).uids
    ghosts = _records(len(half), 9)
    cand = np.sort(np.concatenate([half, ghosts]), order=("f0", "f1"))
    got = create_filter("random", {"fraction": 0.3, "seed": 2}).select(ctx.with_candidates(cand))
    want = _in_memory(pool, {"fraction": 0.3, "seed": 2}, 1, cand)
    np.testing.assert_array_equal(got.uids, want.uids)
    assert len(got) == int(0.3 * len(half))


class _OddLow(RowFilter):
    """Keeps rows whose uid is odd: a row rule whose answer is known without the filter."""

    name = "odd_low"
    columns = ("uid",)

    def keep(self, batch):
        return (batch.uids["f1"] & np.uint64(1)).astype(bool)


class _OddLowThreads(_OddLow):
    threads = True


@pytest.mark.parametrize("cls", [_OddLow, _OddLowThreads])
@pytest.mark.parametrize("workers", [1, 2])
def test_row_filters_stream_the_same_sorted_subset_in_processes_and_threads(mid_pool, tmp_path, cls, workers):
    pool = Pool(mid_pool)
    every = np.concatenate([pool.read(s).uids for s in pool.shards])
    cand = np.sort(every[::3], order=("f0", "f1"))
    for candidates, rows in ((None, every), (cand, cand)):
        ctx = RunContext(pool, LocalExecutor(workers, show_progress=False), candidates, workdir=tmp_path)
        sel = cls().select(ctx)
        want = np.sort(rows[(rows["f1"] & np.uint64(1)).astype(bool)], order=("f0", "f1"))
        assert sel.counters == {"input": len(rows), "kept": len(want), "dropped": len(rows) - len(want)}
        path, digest = sel.write(tmp_path / "odd.npy")
        np.testing.assert_array_equal(np.load(path), want)
        assert digest == hashlib.sha256(want.tobytes()).hexdigest()
    del sel
    gc.collect()
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["odd.npy"]  # parts and spill files go with their selections


def test_a_work_folder_that_does_not_exist_yet_is_created(mid_pool, tmp_path):
    ctx = RunContext(Pool(mid_pool), LocalExecutor(1, show_progress=False), workdir=tmp_path / "new" / "work")
    sel = create_filter("no_filter").select(ctx)
    assert len(sel) == 12_000 and (tmp_path / "new" / "work").is_dir()


def test_spill_survives_short_writes_and_sliced_chunk_writes(tmp_path, monkeypatch):
    from clipsift import uidsort

    real_pwrite = os.pwrite
    calls = []

    def short_pwrite(fd, data, offset):  # the kernel may write less than asked
        calls.append(len(data))
        return real_pwrite(fd, bytes(data[:997]), offset)

    monkeypatch.setattr(uidsort.os, "pwrite", short_pwrite)
    monkeypatch.setattr(uidsort, "_WRITE_ROWS", 300)  # several gathered slices per chunk
    r = _records(20_000, 9)
    with UidSorter(len(r), tmp_path, bucket_rows=1000, chunk_rows=4096, threads=2) as sorter:
        for chunk in np.array_split(r, 13):
            sorter.add(chunk)
        np.testing.assert_array_equal(sorter.to_array(), r[np.lexsort((r["f1"], r["f0"]))])
    assert len(calls) > 20_000 * 16 // 997 and max(calls) > 997


def test_chunks_grow_with_the_bucket_count_so_reads_stay_linear(tmp_path):
    from clipsift.uidsort import CHUNK_ROWS, MIN_SLICE_ROWS

    def chunk(rows, **kw):
        with UidSorter(rows, tmp_path, **kw) as s:
            return s.num_buckets, s.chunk_rows

    assert chunk(1_000_000) == (16, CHUNK_ROWS)  # pools up to 67M rows: flat memory
    assert chunk(10**9) == (4096, MIN_SLICE_ROWS * 4096)  # a bucket's slice of a chunk stays >= 256 rows
    assert chunk(10**9, chunk_rows=1000) == (4096, 1000)  # an explicit size is kept
    r = _records(20_000, 11)
    with UidSorter(len(r), tmp_path, bucket_rows=4) as sorter:  # 4096 buckets: chunks of 1M rows
        assert sorter.chunk_rows == MIN_SLICE_ROWS * sorter.num_buckets
        for part in np.array_split(r, 7):
            sorter.add(part)
        np.testing.assert_array_equal(sorter.to_array(), r[np.lexsort((r["f1"], r["f0"]))])
