"""Shared fixtures: small hand-built DataComp pools (independent of the synthetic generator)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def make_uids(n: int, seed: int = 0) -> list[str]:
    return [hashlib.md5(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_pool(root: Path, shard_sizes, seed: int = 0, texts=None, extra_columns=None, npz=True) -> Path:
    """A DataComp-layout pool: one parquet+npz pair per shard, row-aligned, float16 embeddings.

    ``texts``/``extra_columns`` (lists over all rows) override generated values.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(sum(shard_sizes))
    uids = make_uids(n, seed)
    emb = {k: unit(rng, n, d).astype(np.float16) for k, d in (("b32_img", 512), ("b32_txt", 512), ("l14_img", 768), ("l14_txt", 768))}
    cols = {
        "uid": uids,
        "url": [f"http://example.com/{i}.jpg" for i in range(n)],
        "text": texts if texts is not None else [f"a photo of thing number {i}" for i in range(n)],
        "original_width": rng.integers(50, 1000, n),
        "original_height": rng.integers(50, 1000, n),
        "clip_b32_similarity_score": (emb["b32_img"].astype(np.float32) * emb["b32_txt"].astype(np.float32)).sum(1).astype(np.float64),
        "clip_l14_similarity_score": (emb["l14_img"].astype(np.float32) * emb["l14_txt"].astype(np.float32)).sum(1).astype(np.float64),
        "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in uids],
    }
    cols.update(extra_columns or {})
    start = 0
    for s, size in enumerate(shard_sizes):
        stem = hashlib.md5(f"shard-{seed}-{s}".encode()).hexdigest()[:16]
        sl = slice(start, start + size)
        table = pa.table({k: v[sl] for k, v in cols.items()})
        if size == 0:
            table = pa.Table.from_batches([], schema=pa.table({k: v[:1] for k, v in cols.items()}).schema)
        pq.write_table(table, root / f"{stem}.parquet")
        if npz:
            np.savez(root / f"{stem}.npz", **{k: v[sl] for k, v in emb.items()})
        start += size
    return root


@pytest.fixture
def small_pool(tmp_path) -> Path:
    return write_pool(tmp_path / "pool", [40, 0, 25, 35])


@pytest.fixture(autouse=True, scope="session")
def private_tmpdir(tmp_path_factory):
    """Runs under test get a TMPDIR of their own: scratch folders other programs (or killed runs)
    left in the machine's TMPDIR must not change what a test sees on stderr."""
    import multiprocessing.util

    multiprocessing.util.get_temp_dir()  # made (and removed at exit) in the real TMPDIR, as usual
    tmp = str(tmp_path_factory.mktemp("TMPDIR"))
    old_env, old_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = tmp, tmp
    yield tmp
    tempfile.tempdir = old_dir
    if old_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old_env


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A clipsift-tiny checkpoint with seeded random weights, in open_clip's training format."""
    import open_clip
    import torch

    from clipsift.eval.train import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("clipsift-tiny")
    path = tmp_path_factory.mktemp("ckpt") / "epoch_latest.pt"
    torch.save({"epoch": 1, "name": "t", "state_dict": model.state_dict()}, path)
    return path


def two_node_ray(test_module):
    """Yield a RayExecutor on a two-node ``ray.cluster_utils.Cluster`` started on this machine (one
    CPU per node), shut down afterwards; ``test_module``'s own functions travel to the workers by
    value (Ray workers cannot import test modules). For module-scoped fixtures."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from clipsift.ray_executor import RayExecutor

    ray.cloudpickle.register_pickle_by_value(test_module)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    executor = RayExecutor(address=cluster.address, show_progress=False)
    assert executor.workers == 2 and len(ray.nodes()) == 2
    yield executor
    ray.shutdown()
    cluster.shutdown()


def random_records(n: int, seed: int, hi_values=None) -> np.ndarray:
    """``n`` uniform random uid records (``hi`` drawn from ``hi_values`` when given: skew, ties)."""
    from clipsift.uids import UID_DTYPE

    rng = np.random.default_rng(seed)
    r = np.empty(n, dtype=UID_DTYPE)
    r["f0"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True) if hi_values is None else rng.choice(hi_values, n)
    r["f1"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    return r


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP barrier waits on a busy machine (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
