"""ClipCov's per-class work (class sequences, fixed-mode picks, cap splits, uid lookups) runs as
executor tasks in worker processes, with the same picks in the same order at 1 and 2 workers;
the merge stays in the driver (issue 12 item 3)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from density_pools import SpyExecutor
from test_clipcov_pool import clipcov_pool, write_labels

from clipsift import clustering
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.clipcov.filter import ClipCovFilter
from clipsift.pool import Pool


@pytest.fixture(scope="module")
def labelled_pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cc-tasks")
    root, uids, _, _ = clipcov_pool(tmp / "pool", [300, 250], seed=31)
    labels = write_labels(tmp / "labels.parquet", uids, np.random.default_rng(4).integers(0, 6, 550))
    return root, labels


CASES = {
    "scalable": ({"batch": 4}, ["clipcov: classes", "clipcov: uids"]),
    "fixed": ({"mode": "fixed"}, ["clipcov: classes (fixed)", "clipcov: uids"]),
    "scalable-cap": ({"batch": 3, "cap": 40}, ["clipcov: split classes", "clipcov: classes", "clipcov: uids"]),
}


def select(root, executor, workdir, order_out, **params):
    return ClipCovFilter(**params, order_out=str(order_out)).select(RunContext(Pool(str(root)), executor, workdir=workdir))


@pytest.mark.parametrize("case", list(CASES))
def test_class_work_runs_in_worker_processes_with_the_same_picks(labelled_pool, tmp_path, monkeypatch, case):
    root, labels = labelled_pool
    extra, descs = CASES[case]
    params = dict(partition="labels", labels=str(labels), fraction=0.3, **extra)
    one = select(root, LocalExecutor(1, show_progress=False), tmp_path / "w1", tmp_path / "one.parquet", **params)
    monkeypatch.setattr(clustering, "GROUP_TASK_BYTES", 1 << 12)  # a class or two per task: several tasks
    spy = SpyExecutor(workers=2)
    two = select(root, spy, tmp_path / "w2", tmp_path / "two.parquet", **params)
    assert np.array_equal(one.uids, two.uids) and one.counters == two.counters
    assert pq.read_table(tmp_path / "one.parquet").equals(pq.read_table(tmp_path / "two.parquet"))  # same picks, same order
    for desc in descs:
        (call,) = [c for c in spy.group_calls(desc) if c["desc"] == desc]
        assert len(call["items"]) > 1 and os.getpid() not in call["pids"]


def test_finished_class_sequences_are_not_recomputed(labelled_pool, tmp_path):
    root, labels = labelled_pool
    params = dict(partition="labels", labels=str(labels), fraction=0.3, batch=4)
    first = select(root, LocalExecutor(1, show_progress=False), tmp_path / "w", tmp_path / "a.parquet", **params)
    spy = SpyExecutor(workers=2)
    again = select(root, spy, tmp_path / "w", tmp_path / "b.parquet", **params)
    (call,) = spy.group_calls("clipcov: classes")
    assert call["items"] == [] and np.array_equal(first.uids, again.uids)
