"""The shuffle on shared storage (clipsift/shuffle.py) and what is built on it: the sorted uid file
written by tasks (SortedUidParts, against UidSorter's bytes) and the grouped store laid out by tasks
(against a straightforward numpy grouping), locally, through fsspec URLs and on a Ray cluster."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import random_records as _records
from conftest import two_node_ray, write_pool

import clipsift.shuffle as shuffle
from clipsift.errors import ClipsiftError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.grouped import GroupedStore
from clipsift.pool import Pool
from clipsift.shuffle import PartFolder, ShuffleError, group_by_partition, pack, ranges_by_size
from clipsift.stagecache import dumps, loads
from clipsift.uids import UID_DTYPE
from clipsift.uidsort import SortedUidParts, UidSorter


def _with_duplicates(r):
    r[: len(r) // 10] = r[len(r) // 10 : len(r) // 5]
    return r


CASES = {
    "uniform with duplicates": lambda: _with_duplicates(_records(40_000, 0)),
    "no rows": lambda: _records(0, 1),
    "all in one bucket": lambda: _with_duplicates(_records(30_000, 2, hi_values=np.arange(5000, dtype=np.uint64) + (7 << 56))),
    "heavy hi ties": lambda: _records(30_000, 3, hi_values=np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)),
}


def _reference(records, tmp: Path) -> tuple[bytes, str, str]:
    with UidSorter(len(records), tmp / "ref-spill") as sorter:
        sorter.add(records)
        path, digest = sorter.write_npy(tmp / "ref.npy")
        return Path(path).read_bytes(), digest, sorter.file_sha256


def _write_parts(out: SortedUidParts, records, parts: int, seed: int) -> None:
    """Records split into uneven parts written in a shuffled order (as tasks finish)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(records) + 1, parts - 1))
    pieces = np.split(records, cuts)
    for i in rng.permutation(len(pieces)):
        out.add_part(out.writer.write(f"{i:06d}", pieces[i]))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("workers", [1, 2])
def test_sorted_parts_write_the_bytes_of_the_in_process_sorter(case, workers, tmp_path):
    records = CASES[case]()
    want, want_digest, want_file = _reference(records, tmp_path)
    # small buckets and tasks: many buckets, many sort ranges (a range per task)
    with SortedUidParts(str(tmp_path / "sort"), len(records), LocalExecutor(workers, show_progress=False),
                        bucket_rows=2048, task_rows=4096) as out:
        _write_parts(out, records, 9, seed=workers)
        assert out.count == len(records)
        if case == "uniform with duplicates":
            assert out.num_buckets == 32 and len(out.ranges()) > 4
        if case == "all in one bucket":
            assert len(out.ranges()) == 1  # skew: one range, larger than task_rows, still exact
        path, digest = out.write_npy(tmp_path / "got.npy")
        assert Path(path).read_bytes() == want
        assert (digest, out.file_sha256) == (want_digest, want_file)
        np.testing.assert_array_equal(out.to_array(), np.load(tmp_path / "ref.npy"))
        assert sum(len(c) for c in out.sorted_chunks()) == len(records)
    assert not (tmp_path / "sort").exists()  # close() removes parts and sorted ranges


def test_sorted_parts_take_driver_adds_and_file_urls(tmp_path):
    records = _with_duplicates(_records(25_000, 5))
    want, want_digest, _ = _reference(records, tmp_path)
    out = SortedUidParts(f"file://{tmp_path}/sort", len(records), LocalExecutor(2, show_progress=False), task_rows=3000)
    _write_parts(out, records[:10_000], 4, seed=0)
    for i, piece in enumerate(np.array_split(records[10_000:], 7)):  # small adds in the driver, gathered into parts
        out.add(piece)
        assert out.count == 10_000 + sum(len(p) for p in np.array_split(records[10_000:], 7)[: i + 1])  # pending rows count
    path, digest = out.write_npy(tmp_path / "got.npy")
    assert Path(path).read_bytes() == want and digest == want_digest
    assert sorted(p.name for p in (tmp_path / "sort" / "parts").glob("driver-*.part")) == ["driver-000001.part"]
    out.close()


def test_sorted_parts_take_parts_back_from_a_run_folder_and_refuse_wrong_ones(tmp_path):
    records = _records(5000, 6)
    want, _, _ = _reference(records, tmp_path)
    out = SortedUidParts(str(tmp_path / "sort"), len(records))
    stored = [dumps(out.writer.write(f"{i:06d}", piece)) for i, piece in enumerate(np.array_split(records, 3))]
    for blob in stored:  # what a resumed run gets back from its run folder: plain tuples
        out.add_part(loads(blob))
    assert Path(out.write_npy(tmp_path / "got.npy")[0]).read_bytes() == want
    with pytest.raises(ClipsiftError, match="000001.part: part registered twice"):
        out.add_part(loads(stored[1]))
    other = PartFolder(str(tmp_path / "other"), out.num_buckets).write("x", np.zeros(3, np.int64), np.arange(3.0))
    with pytest.raises(ClipsiftError, match="not uid records"):
        out.add_part(other)


# ---- the primitive ------------------------------------------------------------------------------------
def _parts(folder: PartFolder, seed: int, n_parts: int = 6):
    """Random parts of packed (int, float16 vector) rows; returns names, all rows and keys in part order."""
    rng = np.random.default_rng(seed)
    names, rows, keys = [], [], []
    for i in range(n_parts):
        n = int(rng.integers(0, 60)) if i != 2 else 0  # one empty part: not written
        data = pack({"a": rng.integers(0, 1000, n), "v": rng.random((n, 3)).astype(np.float16)})
        k = rng.integers(0, folder.num_partitions, n)
        part = folder.write(f"{i:06d}", k, data)
        assert part.rows == n and part.counts.sum() == n
        if n:
            names.append(part.name)
        rows.append(data)
        keys.append(k)
    return names, np.concatenate(rows), np.concatenate(keys)


@pytest.mark.parametrize("url", ["plain", "file", "memory"])
def test_a_partition_range_reads_every_parts_slice_in_part_order(url, tmp_path):
    base = {"plain": str(tmp_path / "f"), "file": f"file://{tmp_path}/f", "memory": f"memory://{tmp_path.name}/f"}[url]
    folder = PartFolder(base, 9)
    names, rows, keys = _parts(folder, seed=1)
    assert not folder.is_complete("000002")  # empty parts are not written
    assert all(folder.is_complete(n) for n in names)
    for lo, hi in [(0, 9), (2, 6), (4, 4), (8, 9)]:
        got, index = folder.read_range(names, lo, hi, rows.dtype)
        inside = (keys >= lo) & (keys < hi)
        # per part: partition order, the written order within a partition
        assert len(got) == inside.sum() and index.counts.shape == (len(names), hi - lo)
        grouped, sizes = group_by_partition(got, index)
        want = rows[inside][np.argsort(keys[inside], kind="stable")]  # parts concatenated in order: stable = part order
        np.testing.assert_array_equal(grouped, want)
        np.testing.assert_array_equal(sizes, np.bincount(keys[inside] - lo, minlength=hi - lo))
    folder.remove()


def test_ranges_by_size_cover_every_nonempty_entry_in_bounded_ranges():
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 5, 200) * (rng.random(200) < 0.7)
    sizes[50] = 100  # larger than the target: only its own range grows
    ranges = ranges_by_size(sizes, 20)
    covered = np.zeros(len(sizes), bool)
    for lo, hi in ranges:
        assert sizes[lo] and sizes[hi - 1]  # no empty ends
        assert sizes[lo:hi].sum() <= 20 + sizes[lo:hi].max()
        covered[lo:hi] = True
    assert not (sizes[~covered]).any() and ranges == sorted(ranges)
    assert ranges_by_size(np.zeros(4, np.int64), 10) == []
    assert sum(lo <= 50 < hi for lo, hi in ranges) == 1


def _die_after_first_piece(url, keys, data):
    """In a child process: write a part but be killed after its first rows reach the file."""
    real = shuffle._write_piece

    def write_then_die(fh, piece):
        real(fh, piece)
        fh.flush()
        os._exit(9)

    shuffle._write_piece = write_then_die
    PartFolder(url, 4).write("000007", keys, data)


def test_a_killed_map_task_leaves_no_part_that_reads_as_complete(tmp_path):
    folder = PartFolder(str(tmp_path / "f"), 4)
    data = np.arange(200_000, dtype=np.int64)  # several write pieces
    child = mp.get_context("fork").Process(target=_die_after_first_piece, args=(folder.url, data % 4, data))
    child.start()
    child.join()
    assert child.exitcode == 9
    assert [p.name for p in (tmp_path / "f").iterdir() if p.name.endswith(".tmp")]  # it did start writing
    assert not folder.is_complete("000007")
    with pytest.raises(ShuffleError, match="000007.part: part missing"):
        folder.read_range(["000007"], 0, 4, np.int64)
    # a truncated copy under the final name (a damaged file system, a partial copy) is caught too
    whole = folder.write("000008", data % 4, data)
    path = Path(folder.path(whole.name))
    assert folder.is_complete(whole.name)
    path.write_bytes(path.read_bytes()[:-8])
    assert not folder.is_complete(whole.name)
    with pytest.raises(ShuffleError, match="incomplete part"):
        folder.read_range([whole.name], 0, 4, np.int64)
    # a failed write (an exception) leaves neither a part nor its temporary
    with pytest.raises(ShuffleError, match=r"partition keys must be integers in \[0, 4\)"):
        folder.write("000009", data % 5, data)
    assert not any(p.name.startswith(".000009") for p in (tmp_path / "f").iterdir())


# ---- the grouped store laid out by tasks --------------------------------------------------------------
def _group_fn(batch):
    emb = batch.embeddings["b32_img"].astype(np.float32)
    gid = np.argmax(emb[:, :5], axis=1) - (emb[:, 5] > 0.08)  # -1: left out
    return gid, {"gidx": batch.global_index, "emb": batch.embeddings["b32_img"], "uid": batch.uids}


def _reference_groups(pool, num_groups):
    batches = [pool.read(s, keys=["b32_img"]) for s in pool.shards]
    gid = np.concatenate([_group_fn(b)[0] for b in batches])
    arrays = {k: np.concatenate([_group_fn(b)[1][k] for b in batches]) for k in ("gidx", "emb", "uid")}
    return [{k: v[gid == g] for k, v in arrays.items()} for g in range(num_groups)]


@pytest.fixture(scope="module")
def group_pool(tmp_path_factory):
    return Pool(write_pool(tmp_path_factory.mktemp("grouped") / "pool", [70, 0, 45, 90, 30], seed=5))


@pytest.mark.parametrize(
    "max_partitions,layout_bytes",
    [(4096, 1 << 26), (2, 1 << 26), (4096, 3000), (2, 3000)],  # one group per partition or blocks; one or many tasks and batches
)
def test_grouped_store_laid_out_by_tasks_equals_a_numpy_grouping(group_pool, max_partitions, layout_bytes, tmp_path):
    ctx = RunContext(group_pool, LocalExecutor(2, show_progress=False), workdir=tmp_path / "w")
    store = GroupedStore.build(ctx, _group_fn, keys=["b32_img"], num_groups=5, path=tmp_path / "g",
                               max_partitions=max_partitions, layout_bytes=layout_bytes)
    want = _reference_groups(group_pool, 5)
    assert store.names == ["gidx", "emb", "uid"] and store.num_groups == 5
    assert store.sizes.tolist() == [len(w["gidx"]) for w in want]
    for g in range(5):
        got = store.read(g)
        for k in ("gidx", "emb", "uid"):
            np.testing.assert_array_equal(got[k], want[g][k])
        assert got["emb"].dtype == np.float16 and got["uid"].dtype == UID_DTYPE
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["emb.npy", "gidx.npy", "grouped.json", "uid.npy"]
    # a task elsewhere gets the store by its path: pickling copies no rows
    blob = pickle.dumps(store)
    assert len(blob) < 2000
    np.testing.assert_array_equal(pickle.loads(blob).read_rows(1, 2, 9)["emb"], want[1]["emb"][2:9])


def test_grouped_store_with_no_rows_and_one_worker(group_pool, tmp_path):
    ctx = RunContext(group_pool, LocalExecutor(1, show_progress=False), workdir=tmp_path / "w")
    drop_all = partial(_drop_all, _group_fn)
    store = GroupedStore.build(ctx, drop_all, keys=["b32_img"], num_groups=3, path=tmp_path / "g")
    assert store.num_rows == 0 and store.sizes.tolist() == [0, 0, 0]
    assert store.read(1)["emb"].shape == (0, 512)
    reopened = GroupedStore.open(tmp_path / "g")
    assert reopened.names == store.names and reopened.read(0)["uid"].dtype == UID_DTYPE


def _drop_all(fn, batch):
    gid, arrays = fn(batch)
    return np.full_like(gid, -1), arrays


# ---- on a Ray cluster: tasks on two nodes share only the folder ---------------------------------------
@pytest.fixture(scope="module")
def ray_executor():
    yield from two_node_ray(sys.modules[__name__])  # this module's steps travel to the workers by value


def _kept_part(writer, batch):
    """A row filter's map step: kept uids written as this shard's part, the Part returned."""
    keep = batch.uids["f1"] % 3 != 0
    return writer.write(f"{batch.shard.rank:06d}", batch.uids[keep]), len(batch)


@pytest.mark.slow
def test_on_ray_the_sorted_file_and_the_grouped_store_are_the_same(group_pool, ray_executor, tmp_path):
    ctx = RunContext(group_pool, ray_executor, workdir=tmp_path / "w")
    local = RunContext(group_pool, LocalExecutor(1, show_progress=False), workdir=tmp_path / "wl")
    records = np.concatenate([b.uids for b in (group_pool.read(s) for s in group_pool.shards)])
    kept = records[records["f1"] % 3 != 0]
    want, want_digest, want_file = _reference(kept, tmp_path)
    with SortedUidParts(str(tmp_path / "sort"), group_pool.num_rows, ctx.executor, bucket_rows=16, task_rows=40) as out:
        for part, _ in ctx.map_shards(partial(_kept_part, out.writer), desc="keep"):
            out.add_part(part)
        assert len(out.ranges()) > 2  # several sort tasks, spread over the two nodes
        path, digest = out.write_npy(tmp_path / "ray.npy")
        assert Path(path).read_bytes() == want and (digest, out.file_sha256) == (want_digest, want_file)
    on_ray = GroupedStore.build(ctx, _group_fn, keys=["b32_img"], num_groups=5, path=tmp_path / "g-ray", layout_bytes=3000)
    here = GroupedStore.build(local, _group_fn, keys=["b32_img"], num_groups=5, path=tmp_path / "g-local")
    assert on_ray.sizes.tolist() == here.sizes.tolist() and on_ray.num_rows > 0
    for name in here.names:
        assert (tmp_path / "g-ray" / f"{name}.npy").read_bytes() == (tmp_path / "g-local" / f"{name}.npy").read_bytes()
