"""Pool reader, filter plugins, registry, recipes and CLI behaviour on small generated pools."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pool

from clipsift.cli import main
from clipsift.errors import ParamError, PoolError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.grouped import GroupedStore
from clipsift.pool import Pool
from clipsift.recipe import load_recipe
from clipsift.registry import create_filter
from clipsift.subset import read_subset
from clipsift.uids import hex_to_records, records_to_hex, sort_records


def pool_uids(root) -> np.ndarray:
    tables = [pq.read_table(p, columns=["uid"]) for p in sorted(Path(root).glob("*.parquet"))]
    return sort_records(np.concatenate([hex_to_records(t.column("uid")) for t in tables]))


def test_pool_reader_offsets_and_columns(small_pool):
    pool = Pool(small_pool)
    assert pool.num_rows == 100 and sorted(s.num_rows for s in pool.shards) == [0, 25, 35, 40]
    assert [s.parquet for s in pool.shards] == sorted(s.parquet for s in pool.shards)
    assert [s.offset for s in pool.shards] == list(np.cumsum([0] + [s.num_rows for s in pool.shards])[:-1])
    batch = pool.read(pool.shards[0], columns=["text"], keys=["b32_img"])
    assert batch.table.column_names == ["uid", "text"]
    assert batch.embeddings["b32_img"].shape == (len(batch), 512)
    assert batch.embeddings["b32_img"].dtype == np.float16
    cand = sort_records(batch.uids[::2])
    sub = pool.read(pool.shards[0], keys=["l14_img"], candidates=cand)
    assert len(sub) == len(cand) and (sub.rows == np.arange(0, len(batch), 2)).all()
    np.testing.assert_array_equal(sub.embeddings["l14_img"], batch_l14 := pool.read(pool.shards[0], keys=["l14_img"]).embeddings["l14_img"][::2])
    assert batch_l14.shape[1] == 768


def test_cli_no_filter_equals_pool_and_check_passes(small_pool, tmp_path, capsys):
    out = tmp_path / "all.npy"
    assert main(["-q", "filter", "no_filter", "--pool", str(small_pool), "--out", str(out), "--workers", "2"]) == 0
    np.testing.assert_array_equal(read_subset(out), pool_uids(small_pool))
    manifest = json.loads((tmp_path / "all.npy.json").read_text())
    assert manifest["filter"] == "no_filter" and manifest["output_count"] == 100
    assert manifest["pool"]["num_rows"] == 100 and manifest["peak_memory_mb"]["self"] > 0
    assert main(["-q", "subset", "check", str(out), "--pool", str(small_pool)]) == 0
    assert "status      ok" in capsys.readouterr().out


def test_random_exact_fraction_and_reproducible(small_pool, tmp_path):
    runs = []
    for i, workers in enumerate(["1", "2", "1"]):
        seed = "7" if i < 2 else "8"
        out = tmp_path / f"r{i}.npy"
        assert main(["-q", "filter", "random", "--pool", str(small_pool), "--out", str(out), "--set", "fraction=0.3", "--set", f"seed={seed}", "--workers", workers]) == 0
        runs.append(read_subset(out))
    assert len(runs[0]) == int(0.3 * 100)
    np.testing.assert_array_equal(runs[0], runs[1])  # same seed, any worker count
    assert not np.array_equal(runs[0], runs[2])  # another seed, another subset
    assert np.isin(records_to_hex(runs[0]), records_to_hex(pool_uids(small_pool))).all()


def test_random_count_and_validation(small_pool):
    ctx = RunContext(Pool(small_pool), LocalExecutor(1, False))
    assert len(create_filter("random", {"count": 7}).select(ctx)) == 7
    with pytest.raises(ParamError, match="exactly one"):
        create_filter("random", {"count": 7, "fraction": 0.1})
    with pytest.raises(ParamError, match="maximum"):
        create_filter("random", {"fraction": 1.5})


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["filter", "nope"], "unknown filter 'nope'"),
        (["filter", "random", "--set", "bogus=1"], "unknown parameter 'bogus'"),
        (["filter", "random", "--set", "fraction=abc"], "not a valid float"),
    ],
)
def test_bad_filter_requests_fail_cleanly(small_pool, tmp_path, capsys, argv, msg):
    out = tmp_path / "o.npy"
    rc = main(["-q", *argv, "--pool", str(small_pool), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and msg in err and err.count("\n") == 1
    assert not list(tmp_path.glob("*o.npy*"))


def _break(pool_dir: Path, how: str) -> Path:
    first = sorted(pool_dir.glob("*.parquet"))[-1]
    npz = first.with_suffix(".npz")
    if how == "missing_npz":
        npz.unlink()
    elif how == "misaligned":
        data = dict(np.load(npz))
        data["l14_img"] = data["l14_img"][:-1]
        np.savez(npz, **data)
    elif how == "nonhex":
        t = pq.read_table(first)
        uids = t.column("uid").to_pylist()
        uids[3] = "z" * 32
        pq.write_table(t.set_column(0, "uid", pa.array(uids)), first)
    return first


@pytest.mark.parametrize("how,msg", [("missing_npz", "missing embeddings file"), ("misaligned", "not row-aligned"), ("nonhex", "row 3")])
def test_bad_pools_name_the_shard_and_write_nothing(tmp_path, how, msg):
    pool = write_pool(tmp_path / "pool", [30, 20])
    bad = _break(pool, how)
    out = tmp_path / "out" / "x.npy"
    # test_emb (a test-local plugin) reads l14_img, so npz problems surface
    rc, err, _ = _run_with_test_plugin(["-q", "filter", "test_emb", "--pool", str(pool), "--out", str(out)], tmp_path)
    assert rc == 1 and msg in err and bad.stem in err and err.count("\n") == 1, err
    assert not out.exists() and not list(out.parent.glob("*x.npy*"))


PLUGIN = textwrap.dedent(
    '''
    import numpy as np
    from clipsift.filter import RowFilter
    from clipsift.params import Param

    class TestEmb(RowFilter):
        """Keeps rows whose first l14_img coordinate exceeds a threshold."""
        name = "test_emb"
        description = "test plugin"
        params = (Param("threshold", float, 0.0, "cut on l14_img[:, 0]"),)
        columns = ("uid",)
        embedding_keys = ("l14_img",)

        def keep(self, batch):
            return batch.embeddings["l14_img"][:, 0].astype(np.float32) > self.threshold
    '''
)


def _install_plugin(tmp_path: Path, extra: str = "") -> Path:
    site = tmp_path / "plugin_site"
    (site / "test_plugin-0.1.dist-info").mkdir(parents=True, exist_ok=True)
    (site / "test_plugin.py").write_text(PLUGIN)
    (site / "test_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: test-plugin\nVersion: 0.1\n")
    (site / "test_plugin-0.1.dist-info" / "entry_points.txt").write_text("[clipsift.filters]\ntest_emb = test_plugin:TestEmb\n" + extra)
    return site


def _run_with_test_plugin(args, tmp_path, extra: str = ""):
    site = _install_plugin(tmp_path, extra)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "clipsift.cli", *args], capture_output=True, text=True, env=env)
    return proc.returncode, proc.stderr, proc.stdout


def test_entry_point_plugin_is_listed_and_runs(tmp_path, small_pool):
    rc, err, out = _run_with_test_plugin(["filters"], tmp_path)
    assert rc == 0 and "test_emb  test plugin" in out and "threshold: float = 0.0" in out
    target = tmp_path / "p.npy"
    rc, err, out = _run_with_test_plugin(["-q", "filter", "test_emb", "--pool", str(small_pool), "--out", str(target), "--set", "threshold=0.01"], tmp_path)
    assert rc == 0, err
    pool = Pool(small_pool)
    expect = []
    for s in pool.shards:
        b = pool.read(s, keys=["l14_img"])
        expect.append(b.uids[b.embeddings["l14_img"][:, 0].astype(np.float32) > 0.01])
    np.testing.assert_array_equal(read_subset(target), sort_records(np.concatenate(expect)))


def test_plugin_cannot_shadow_a_builtin_filter(tmp_path, small_pool):
    extra = "no_filter = test_plugin:TestEmb\n"
    rc, err, out = _run_with_test_plugin(["filters"], tmp_path, extra)
    assert rc == 0 and "filter no_filter declared twice" in err and "test_plugin:TestEmb" in err
    target = tmp_path / "all.npy"
    rc, err, out = _run_with_test_plugin(["-q", "filter", "no_filter", "--pool", str(small_pool), "--out", str(target)], tmp_path, extra)
    assert rc == 0, err
    assert len(read_subset(target)) == Pool(small_pool).num_rows  # the built-in ran, not the plugin


def test_recipe_chain_and_union(small_pool, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        textwrap.dedent(
            """
            name = "demo"
            [[step]]
            filter = "random"
            params = { fraction = 0.5, seed = 1 }
            [[step]]
            union = [ { filter = "random", params = { count = 10, seed = 2 } },
                      { filter = "random", params = { count = 10, seed = 3 } } ]
            """
        )
    )
    step = load_recipe(recipe)
    ctx = RunContext(Pool(small_pool), LocalExecutor(1, False))
    sel = step.select(ctx)
    half = create_filter("random", {"fraction": 0.5, "seed": 1}).select(ctx)
    sub = ctx.with_candidates(half.uids)
    a = create_filter("random", {"count": 10, "seed": 2}).select(sub).uids
    b = create_filter("random", {"count": 10, "seed": 3}).select(sub).uids
    expect = np.union1d(records_to_hex(a), records_to_hex(b))
    assert list(records_to_hex(sel.uids)) == list(expect)
    assert sel.details["stages"][0]["output"] == 50
    bad = tmp_path / "bad.toml"
    bad.write_text("[[step]]\nfilter = 'random'\nparams = { fraction = 2.0 }\n")
    with pytest.raises(ParamError, match="bad.toml"):
        load_recipe(bad)


def _group_fn(batch):
    emb = batch.embeddings["b32_img"].astype(np.float32)
    return np.argmax(emb[:, :4], axis=1) - (emb[:, 5] > 0.08), {"gidx": batch.global_index, "emb": batch.embeddings["b32_img"]}


def test_grouped_store_equals_in_memory_grouping(tmp_path):
    pool = Pool(write_pool(tmp_path / "pool", [50, 0, 30, 45], seed=5))
    ctx = RunContext(pool, LocalExecutor(2, False))
    store = GroupedStore.build(ctx, _group_fn, keys=["b32_img"], num_groups=4, path=tmp_path / "g")
    batches = [pool.read(s, keys=["b32_img"]) for s in pool.shards]
    gids = np.concatenate([_group_fn(b)[0] for b in batches])
    gidx = np.concatenate([b.global_index for b in batches])
    emb = np.concatenate([b.embeddings["b32_img"] for b in batches])
    for g in range(4):
        got = store.read(g)
        np.testing.assert_array_equal(got["gidx"], gidx[gids == g])
        np.testing.assert_array_equal(got["emb"], emb[gids == g])
    assert store.sizes.sum() == (gids >= 0).sum()
    reopened = GroupedStore.open(tmp_path / "g")
    np.testing.assert_array_equal(reopened.read(2)["gidx"], store.read(2)["gidx"])
    with pytest.raises(Exception, match="not a complete grouped store"):
        GroupedStore.open(tmp_path / "nothing")


def test_pool_errors_are_one_line(tmp_path):
    with pytest.raises(PoolError, match="pool directory not found"):
        Pool(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="no .parquet files"):
        Pool(tmp_path / "empty")
    pool = Pool(write_pool(tmp_path / "p", [5]))
    with pytest.raises(PoolError, match="missing column"):
        pool.require(["nonexistent_column"])


def test_cli_start_up_stays_light():
    """Building the parser (every `clipsift ...` call) must not import the heavy stacks."""
    code = (
        "import sys; from clipsift.cli import build_parser; build_parser();"
        "heavy = [m for m in ('torch', 'matplotlib', 'open_clip', 'faiss') if m in sys.modules];"
        "from clipsift.leaderboards import build, cli; assert build.ALL_FORMATS == cli.ALL_FORMATS;"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifest_peak_memory_is_the_run_own_not_the_parent_peak():
    import resource

    block = bytearray(300 * 2**20)  # raise this (parent) process's peak before starting the child
    block[:: 4096] = b"x" * len(block[:: 4096])
    del block
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > 300
    code = "from clipsift.runner import peak_memory_mb; print(peak_memory_mb()['self'])"
    child_peak = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child_peak < 250  # Linux carries ru_maxrss over fork and exec; VmHWM does not


def test_worker_tasks_do_not_carry_the_shard_list(tmp_path):
    import pickle

    small = Pool(write_pool(tmp_path / "a", [5] * 3, npz=False))
    large = Pool(write_pool(tmp_path / "b", [5] * 300, npz=False))
    # what map_shards sends with every task: the reader, never the pool's shard list
    assert len(pickle.dumps(large.reader)) == len(pickle.dumps(small.reader)) < 2048
    batch = pickle.loads(pickle.dumps(large.reader)).read(large.shards[123])
    np.testing.assert_array_equal(batch.uids, large.read(large.shards[123]).uids)


def test_pool_reads_the_same_through_fsspec_urls(tmp_path, small_pool):
    import fsspec

    mem = fsspec.filesystem("memory")
    for path in Path(small_pool).iterdir():
        mem.pipe(f"/urlpool/{path.name}", path.read_bytes())
    local = Pool(small_pool)
    for url in (f"file://{small_pool}", "memory://urlpool"):
        pool = Pool(url)
        assert [(s.name, s.num_rows, s.has_npz) for s in pool.shards] == [(s.name, s.num_rows, s.has_npz) for s in local.shards]
        assert pool.embedding_shapes() == local.embedding_shapes()
        for a, b in zip(pool.shards, local.shards):
            x, y = pool.read(a, columns=["text"], keys=["l14_img"]), local.read(b, columns=["text"], keys=["l14_img"])
            np.testing.assert_array_equal(x.uids, y.uids)
            np.testing.assert_array_equal(x.embeddings["l14_img"], y.embeddings["l14_img"])
            assert x.table.column("text").equals(y.table.column("text"))
    with pytest.raises(PoolError, match="pool directory not found"):
        Pool("memory://no-such-pool")
    mem.rm("/urlpool", recursive=True)


def test_unlistable_pool_folder_is_one_clear_error(tmp_path, monkeypatch):
    import clipsift.pool as pool_module

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pool_module.os, "scandir", denied)
    with pytest.raises(PoolError, match=r"cannot list the pool folder \(Permission denied\); check its permissions"):
        Pool(tmp_path)


def test_gpu_steps_declare_one_gpu_per_task(tmp_path):
    """A step on CUDA declares {"num_gpus": 1} to the executor (Ray schedules by it); CPU steps
    declare nothing. The declaration reaches executor.map for row filters and negclip's pass."""
    from clipsift.devices import task_resources
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RowFilter, RunContext
    from clipsift.filters.negclip.negclip import NegClipFilter
    from clipsift.pool import Pool

    assert task_resources("cuda") == task_resources("cuda:1") == {"num_gpus": 1}
    assert task_resources("cpu") is None and task_resources("mps") is None

    class Spy(LocalExecutor):
        def map(self, fn, items, **kw):
            self.seen.append((kw.get("desc"), kw.get("resources")))
            return super().map(fn, items, **kw)

    class OnGpu(RowFilter):
        name = "on_gpu"
        columns = ("uid",)

        def task_resources(self):
            return {"num_gpus": 1}

        def keep(self, batch):
            return np.ones(len(batch), dtype=bool)

    root = write_pool(tmp_path / "pool", [30, 20], seed=2)
    spy = Spy(1, show_progress=False)
    spy.seen = []
    sel = OnGpu().select(RunContext(Pool(str(root)), spy, workdir=tmp_path / "w"))
    assert len(sel) == 50 and spy.seen == [("on_gpu", {"num_gpus": 1})]
    spy.seen = []
    NegClipFilter(fraction=0.5, batch_size=8).select(RunContext(Pool(str(root)), spy, workdir=tmp_path / "w2", device="cpu"))
    assert spy.seen and all(r is None for _, r in spy.seen)


@pytest.mark.parametrize("name, params", [("clip_score", {"arch": "l14", "fraction": 0.3}), ("no_filter", {}),
                                          ("semdedup", {"k": 3, "eps": 0.5}), ("negclip", {"fraction": 0.5, "batch_size": 16})])
def test_several_shards_per_task_give_the_same_bytes(tmp_path, name, params):
    """An executor that asks for several shards per task (as Ray does at many shards, so the
    driver's per-task cost stays small) gets per-shard results back in order: same output, and a
    run folder written that way is reused shard by shard."""
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.pool import Pool
    from clipsift.registry import create_filter
    from clipsift.stagecache import RunFolder

    class Batching(LocalExecutor):
        def shards_per_task(self, n):
            return 3

    root = write_pool(tmp_path / "pool", [20, 0, 15, 25, 10, 30, 5], seed=5)
    one = create_filter(name, params).select(RunContext(Pool(str(root)), LocalExecutor(2, show_progress=False), workdir=tmp_path / "a"))
    run = RunFolder(str(tmp_path / "run"))
    ctx = lambda w: RunContext(Pool(str(root)), Batching(2, show_progress=False), workdir=tmp_path / w, run_dir=run)  # noqa: E731
    batched = create_filter(name, params).select(ctx("b"))
    again = create_filter(name, params).select(ctx("c"))
    assert len(one) > 0
    np.testing.assert_array_equal(one.uids, batched.uids)
    np.testing.assert_array_equal(one.uids, again.uids)


def test_ray_batches_shards_when_there_are_many():
    from clipsift.ray_executor import MAX_SHARDS_PER_TASK, RayExecutor

    ex = object.__new__(RayExecutor)  # the arithmetic only: no cluster
    ex.workers = 2
    assert ex.shards_per_task(4) == 1 and ex.shards_per_task(1000) == 31
    assert ex.shards_per_task(1_280_000) == MAX_SHARDS_PER_TASK
