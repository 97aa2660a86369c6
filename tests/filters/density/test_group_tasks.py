"""Per-cluster work of SemDeDup, SSP and DBP runs as executor tasks over batches of clusters, in
worker processes, with the same result at 1 and 2 workers (issue 12 item 3)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from density_pools import SpyExecutor, planted_pool, same

from clipsift import clustering
from clipsift.clustering import group_batches
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.density.dbp import DBPFilter
from clipsift.filters.density.semdedup import SemDeDupFilter
from clipsift.filters.density.ssp import SSPFilter
from clipsift.pool import Pool


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return planted_pool(tmp_path_factory.mktemp("tasks") / "pool", n=1200, shard_sizes=(400, 500, 300), seed=5)


def test_group_batches_cut_by_bytes_and_keep_big_groups_alone():
    sizes = np.array([3, 0, 2, 10, 1, 1, 1, 4, 2])
    groups = np.flatnonzero(sizes)
    batches = group_batches(sizes, groups, row_bytes=1, target_bytes=4)
    assert np.array_equal(np.concatenate(batches), groups)  # every group once, in order
    # a batch holds the groups that start in the same 4-byte slice; a group of 4 bytes or more is alone
    assert [b.tolist() for b in batches] == [[0, 2], [3], [4], [5, 6], [7], [8]]
    assert all(len(b) == 1 for b in batches if (sizes[b] >= 4).any())
    assert [b.tolist() for b in group_batches(sizes, groups, row_bytes=1, target_bytes=1000)] == [groups.tolist()]
    assert group_batches(sizes, np.empty(0, np.int64), row_bytes=1) == []


def run_with(filt, root, executor, tmp):
    return filt.select(RunContext(Pool(str(root)), executor, workdir=tmp))


CASES = {
    "semdedup-eps": (lambda: SemDeDupFilter(k=6, niter=8, eps=0.05), ["semdedup: clusters"]),
    "semdedup-target": (lambda: SemDeDupFilter(k=6, niter=8, target=0.6, keep="random", seed=3),
                        ["semdedup: clusters", "semdedup: kept rows"]),
    "ssp-global": (lambda: SSPFilter(k=6, niter=8, fraction=0.4, balance=0.5), ["ssp: clusters"]),
    "dbp": (lambda: DBPFilter(k=6, niter=8, fraction=0.5, dedup_k=4, clip_fraction=0.8, keep="random"),
            ["dbp-semdedup: clusters", "dbp: d_intra", "dbp: select"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_cluster_work_runs_in_worker_processes_with_the_same_result(pool_dir, tmp_path, monkeypatch, case):
    make, descs = CASES[case]
    one = run_with(make(), pool_dir, LocalExecutor(1, show_progress=False), tmp_path / "one")
    monkeypatch.setattr(clustering, "GROUP_TASK_BYTES", 1 << 8)  # tiny tasks: several per map, even for d_intra (4 B/row)
    spy = SpyExecutor(workers=2)
    two = run_with(make(), pool_dir, spy, tmp_path / "two")
    same(one.uids, two.uids)
    assert one.counters == two.counters
    for desc in descs:
        (call,) = spy.group_calls(desc)
        groups = np.concatenate([g for g, _ in call["items"]])
        assert len(call["items"]) > 1 and np.all(np.diff(groups) > 0)  # batches of clusters, in cluster order
        assert os.getpid() not in call["pids"]  # the per-cluster step ran in worker processes
        assert call["resources"] is None  # CPU run: no GPU asked for


def test_tasks_cover_exactly_the_non_empty_clusters(pool_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(clustering, "GROUP_TASK_BYTES", 1 << 12)
    spy = SpyExecutor(workers=2)
    sel = run_with(SSPFilter(k=8, niter=8, fraction=0.3), pool_dir, spy, tmp_path)
    sizes = np.asarray(sel.details["cluster_sizes"])
    (call,) = spy.group_calls("ssp: clusters")
    groups = np.concatenate([g for g, _ in call["items"]])
    assert np.array_equal(groups, np.flatnonzero(sizes))
    quotas = np.concatenate([a for _, a in call["items"]])  # per-cluster values travel with their batch
    assert np.array_equal(quotas, np.asarray(sel.details["guaranteed"])[groups])


def test_cuda_device_asks_for_one_gpu_per_task(tmp_path):
    sizes = np.array([4, 0, 5])
    seen = []

    class Recorder(LocalExecutor):
        def map(self, fn, items, **kw):
            seen.append(kw.get("resources"))
            return super().map(fn, items, **kw)

    ctx = RunContext(None, Recorder(1, show_progress=False), workdir=tmp_path)
    assert list(clustering.map_groups(ctx, len, tmp_path, [], sizes, row_bytes=1, desc="x", device="cuda:0")) == []
    assert seen == [{"num_gpus": 1}]
