"""Every registered filter, and a plugin defined here, under one contract: its parameters round-trip,
it pickles, and its output bytes are the same with the local executor at 1 and 2 workers and on a
two-node Ray cluster started inside the test."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import two_node_ray, write_pool

from clipsift.executor import LocalExecutor
from clipsift.filter import RowFilter, RunContext
from clipsift.params import Param
from clipsift.pool import Pool
from clipsift.registry import create_filter, get_filter_class


class EvenCaptionFilter(RowFilter):
    """A third-party style plugin: keeps rows whose caption has an even length (or a minimum)."""

    name = "even_caption"
    params = (Param("min_chars", int, 0, "shortest caption kept", min=0),)
    columns = ("text",)

    def keep(self, batch):
        n = np.asarray(pc.utf8_length(batch.column("text")).to_numpy(zero_copy_only=False))
        return (n % 2 == 0) & (n >= self.min_chars)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A pool plus the files some filters need (centroids, targets, score and uid files)."""
    from clipsift.baselines.centroids import save_centroids
    from clipsift.uids import hex_to_records

    root = tmp_path_factory.mktemp("conformance")
    words = ["a dog on the beach", "red sports car parked outside", "the cat sleeps on a sofa", "zzz",
             "un chien dans le jardin", "photo of a lighthouse at dusk", "two apples and a banana"]
    pool = write_pool(root / "pool", [60, 0, 45, 50], seed=11, texts=[f"{words[i % 7]} {i}" for i in range(155)])
    uids = pa.concat_arrays([pq.read_table(f).column("uid").combine_chunks() for f in sorted(pool.glob("*.parquet"))])
    rng = np.random.default_rng(0)
    c = rng.standard_normal((6, 768)).astype(np.float32)
    save_centroids(root / "centroids.pt", c / np.linalg.norm(c, axis=1, keepdims=True))
    np.save(root / "targets.npy", c[:3])
    pq.write_table(pa.table({"uid": uids, "score": rng.random(len(uids))}), root / "scores.parquet")
    np.save(root / "half.npy", np.sort(hex_to_records(uids[::2])))
    return root


def filter_params(assets: Path) -> dict:
    return {
        "no_filter": {},
        "basic_filter": {},
        "text_based": {},
        "laion2b": {},
        "clip_score": {"arch": "l14", "fraction": 0.3},
        "image_based": {"centroids": str(assets / "centroids.pt"), "targets": str(assets / "targets.npy")},
        "image_based_intersect_clip_score": {
            "centroids": str(assets / "centroids.pt"), "targets": str(assets / "targets.npy"), "arch": "l14", "fraction": 0.5,
        },
        "random": {"fraction": 0.4, "seed": 3},
        "negclip": {"fraction": 0.5, "batch_size": 16, "repeats": 2},
        "normsim": {"fraction": 0.5, "norm": "dynamic", "iterations": 5},
        "negclip_normsim": {"fraction": 0.6, "fraction_normsim": 0.3, "norm": "dynamic", "iterations": 5, "batch_size": 16, "repeats": 1},
        "clipcov": {"partition": "kmeans", "clusters": 3, "fraction": 0.4, "kmeans_iters": 5},
        "semdedup": {"k": 3, "eps": 0.5},
        "ssp": {"fraction": 0.5, "k": 3},
        "dbp": {"fraction": 0.5, "k": 3, "dedup_k": 2, "clip_fraction": 0.8},
        "score": {"scores": str(assets / "scores.parquet"), "fraction": 0.3},
        "uids": {"uids": str(assets / "half.npy")},
        "mix": {"inputs": "column:clip_l14_similarity_score;column:clip_b32_similarity_score", "fraction": 0.3},
        "scs": {"inputs": "column:clip_l14_similarity_score", "count": 120, "batch_size": 20, "seed": 1},
    }


BUILTINS = sorted(e.name for e in entry_points(group="clipsift.filters") if e.value.startswith("clipsift."))
SKIP = {
    "laion2b": (lambda: importlib.util.find_spec("gcld3") is None, "gcld3 not installed"),
    "text_based": (lambda: not Path("/usr/share/wordnet/index.noun").is_file(), "WordNet (wordnet-base) not installed"),
}


def make(name: str, params: dict):
    if name == EvenCaptionFilter.name:
        return EvenCaptionFilter(**params)
    return create_filter(name, params)


def run_bytes(filter_, pool_dir: Path, executor, out: Path, counters: dict | None = None, run_dir: Path | None = None) -> bytes:
    from clipsift.stagecache import RunFolder

    ctx = RunContext(Pool(str(pool_dir)), executor, workdir=out.parent / f"{out.stem}-work",
                     run_dir=RunFolder(str(run_dir)) if run_dir else None)
    sel = filter_.select(ctx)
    path, _ = sel.write(out)
    if counters is not None:
        counters.update(sel.counters, _rows=len(sel))
    return Path(path).read_bytes()


def check_counters(name: str, c: dict) -> None:
    """Every filter reports input, kept and dropped, named the same way (clipsift.filter.row_counters)."""
    assert {"input", "kept", "dropped"} <= set(c), f"{name}: counters {sorted(c)} lack input/kept/dropped"
    assert c["kept"] == c["_rows"], f"{name}: counters say kept={c['kept']}, the subset has {c['_rows']} rows"
    if "distinct" not in c:  # scs draws with repeats: its dropped counts the rows never drawn
        assert c["dropped"] == c["input"] - c["kept"], f"{name}: dropped != input - kept"
    reasons = sum(v for k, v in c.items() if k.startswith("dropped_") and isinstance(v, int))
    assert reasons in (0, c["dropped"]), f"{name}: per-reason drops sum to {reasons}, dropped is {c['dropped']}"


@pytest.fixture(scope="module")
def ray_executor():
    yield from two_node_ray(sys.modules[__name__])  # this module's steps travel to the workers by value


@pytest.mark.slow
@pytest.mark.parametrize("name", [*BUILTINS, EvenCaptionFilter.name])
def test_filter_contract_and_same_bytes_everywhere(name, assets, ray_executor, tmp_path):
    if name in SKIP and SKIP[name][0]():
        pytest.skip(SKIP[name][1])
    params = filter_params(assets).get(name, {"min_chars": 10} if name == EvenCaptionFilter.name else None)
    assert params is not None, f"add {name} to filter_params: every registered filter is checked"
    f = make(name, params)
    # parameters round-trip, and the filter pickles with them
    assert make(name, f.get_params()).get_params() == f.get_params()
    assert pickle.loads(pickle.dumps(f)).get_params() == f.get_params()
    if name != EvenCaptionFilter.name:
        assert get_filter_class(name).name == name
    pool_dir = assets / "pool"
    counters: dict = {}
    local1 = run_bytes(make(name, params), pool_dir, LocalExecutor(1, show_progress=False), tmp_path / "l1.npy", counters)
    check_counters(name, counters)
    local2 = run_bytes(make(name, params), pool_dir, LocalExecutor(2, show_progress=False), tmp_path / "l2.npy")
    # on Ray, everything the tasks exchange goes through the run folder (parts, masks, stores)
    on_ray = run_bytes(make(name, params), pool_dir, ray_executor, tmp_path / "ray.npy", run_dir=tmp_path / "run")
    assert local1 == local2, f"{name}: 1 and 2 local workers differ"
    assert local1 == on_ray, f"{name}: the Ray cluster differs from the local executor"
    assert len(np.load(tmp_path / "l1.npy")) > 0


class CrashOnceFilter(RowFilter):
    """Kills its own worker process the first time it sees shard 2 (a node or worker lost mid-run)."""

    name = "crash_once"
    params = (Param("marker", str, None, "file created just before the crash"),)

    def keep(self, batch):
        import os

        if batch.shard.rank == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return batch.uids["f1"] % 3 != 0


def test_a_killed_ray_worker_gives_the_same_output(assets, ray_executor, tmp_path):
    done = tmp_path / "already-crashed"
    done.touch()
    expected = run_bytes(CrashOnceFilter(marker=str(done)), assets / "pool", LocalExecutor(1, show_progress=False), tmp_path / "l.npy")
    marker = tmp_path / "crashed"
    got = run_bytes(CrashOnceFilter(marker=str(marker)), assets / "pool", ray_executor, tmp_path / "r.npy")
    assert marker.exists()  # the worker really died once
    assert got == expected


def test_ray_workers_write_the_run_folder_and_a_local_rerun_reuses_it(assets, ray_executor, tmp_path, caplog):
    import logging

    from clipsift.stagecache import RunFolder

    def run(executor, name):
        ctx = RunContext(Pool(str(assets / "pool")), executor, workdir=tmp_path / f"w-{name}", run_dir=RunFolder(str(tmp_path / "run")))
        path, _ = create_filter("negclip", {"fraction": 0.5, "batch_size": 16, "repeats": 2}).select(ctx).write(tmp_path / f"{name}.npy")
        return Path(path).read_bytes()

    on_ray = run(ray_executor, "ray")
    stored = sorted((tmp_path / "run").glob("*/*.npz"))
    assert len(stored) == 4  # one result per shard (the empty shard included), written by Ray workers
    with caplog.at_level(logging.INFO, logger="clipsift"):
        local = run(LocalExecutor(1, show_progress=False), "local")
    assert local == on_ray
    assert "4 of 4 shards reused from the run folder" in caplog.text
