"""negclip / normsim / negclip_normsim filters: streaming over shards and workers equals an in-memory
oracle, the two-stage counting rules, targets, presets and the CLI (specs/negclip.md 7.4, 7.8, 7.9, 7.11)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_pool
from test_negclip_math import naive_dynamic, naive_shard

from clipsift.cli import main as cli_main
from clipsift.errors import ParamError, PoolError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.negclip.rank import top_n
from clipsift.pool import Pool
from clipsift.recipe import load_recipe
from clipsift.registry import create_filter
from clipsift.subset import read_subset
from clipsift.uids import UID_DTYPE, isin_sorted, sort_records

SHARDS = [120, 0, 90, 150]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread




@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("negclip") / "pool", SHARDS, seed=3)


@pytest.fixture(scope="module")
def memory(pool_dir):
    """The whole pool in memory, shard by shard: the oracle's input."""
    pool = Pool(str(pool_dir))
    shards = [pool.read(s, keys=("l14_img", "l14_txt")) for s in pool.shards]
    return pool, shards


@pytest.fixture(scope="module")
def target_file(tmp_path_factory):
    rng = np.random.default_rng(7)
    g = rng.standard_normal((37, 768)).astype(np.float32)
    path = tmp_path_factory.mktemp("targets") / "g.npy"
    np.save(path, g / np.linalg.norm(g, axis=1, keepdims=True))
    return path


def run(pool_dir, name, params, workers=1, candidates=None, keep_scores=False):
    ctx = RunContext(Pool(str(pool_dir)), LocalExecutor(workers, show_progress=False), candidates=candidates, device="cpu")
    f = create_filter(name, params)
    f.keep_scores = keep_scores  # the kept scores in memory too (what score mixing asks for)
    return f.select(ctx)


def oracle_negclip(memory, b, k, seed=0, tau=0.01):
    pool, shards = memory
    uids = np.concatenate([s.uids for s in shards])
    scores = np.concatenate([
        naive_shard(s.embeddings["l14_img"].astype(np.float32), s.embeddings["l14_txt"].astype(np.float32), tau, b, k, seed, s.shard.name)
        if len(s) else np.empty(0)
        for s in shards
    ])
    return uids, scores


def as_set(uids):
    return set(map(tuple, uids.tolist()))


def test_negclip_streaming_equals_oracle_and_workers_agree(pool_dir, memory):
    uids, scores = oracle_negclip(memory, b=40, k=2)
    want = sort_records(uids[top_n(scores, uids, int(len(uids) * 0.3))])
    params = {"fraction": 0.3, "batch_size": 40, "repeats": 2}
    streamed = run(pool_dir, "negclip", params, workers=2)  # uids straight to the sorter on disk
    np.testing.assert_array_equal(streamed.uids, want)
    sels = [run(pool_dir, "negclip", params, workers=w, keep_scores=True) for w in (1, 2)]
    for sel in sels:
        np.testing.assert_array_equal(sel.uids, want)
        order = np.lexsort((uids["f1"], uids["f0"]))
        np.testing.assert_allclose(sel.scores, scores[order][isin_sorted(uids[order], sel.uids)], atol=2e-6)
        assert sel.counters["input"] == 360 and sel.counters["kept"] == 108
    np.testing.assert_array_equal(sels[0].scores, sels[1].scores)  # bit-identical across worker counts


def test_negclip_count_budget_is_the_fraction_rule_and_reports_shortfall(pool_dir, memory):
    """count= (the shared budget group) keeps the same top rows as the fraction giving that count;
    a count above the pool keeps everything and records the shortfall."""
    params = {"batch_size": 40, "repeats": 2}
    by_fraction = run(pool_dir, "negclip", {"fraction": 0.3, **params})
    by_count = run(pool_dir, "negclip", {"count": 108, **params})
    np.testing.assert_array_equal(by_count.uids, by_fraction.uids)
    too_many = run(pool_dir, "negclip", {"count": 1000, **params})
    assert len(too_many) == 360 and too_many.details["shortfall"]["short"] == 640
    with pytest.raises(ParamError, match="exactly one of fraction, count or threshold"):
        run(pool_dir, "negclip", {"count": 5, "fraction": 0.1, **params})


def test_negclip_threshold_and_seed(pool_dir, memory):
    uids, scores = oracle_negclip(memory, b=40, k=1, seed=5)
    thr = float(np.median(scores))
    sel = run(pool_dir, "negclip", {"threshold": thr, "batch_size": 40, "repeats": 1, "seed": 5})
    assert as_set(sel.uids) == as_set(uids[scores >= thr + 1e-6]) | (as_set(sel.uids) & as_set(uids[np.abs(scores - thr) < 1e-6]))
    with pytest.raises(ParamError):
        create_filter("negclip", {"fraction": 0.3, "threshold": -1.0})


def test_given_uids_batches_use_all_shard_rows(pool_dir, memory):
    uids, scores = oracle_negclip(memory, b=40, k=2)
    cands = sort_records(uids[::2])
    sel = run(pool_dir, "negclip", {"fraction": 0.5, "batch_size": 40, "repeats": 2}, candidates=cands)
    inside = isin_sorted(uids, cands)
    sub_u, sub_s = uids[inside], scores[inside]
    np.testing.assert_array_equal(sel.uids, sort_records(sub_u[top_n(sub_s, sub_u, int(len(cands) * 0.5))]))
    alone = run(pool_dir, "negclip", {"fraction": 0.5, "batch_size": 40, "repeats": 2, "score_all_rows": False}, candidates=cands,
                keep_scores=True)
    with_all = run(pool_dir, "negclip", {"fraction": 0.5, "batch_size": 40, "repeats": 2}, candidates=cands, keep_scores=True)
    assert len(alone) == len(sel) and not np.allclose(np.sort(alone.scores), np.sort(with_all.scores))


def test_two_stage_counts_and_rules(tmp_path, target_file):
    pool_dir = write_pool(tmp_path / "p1000", [400, 600], seed=1)
    base = {"fraction": 0.3, "batch_size": 256, "repeats": 1, "norm": "2", "target": str(target_file)}
    sel = run(pool_dir, "negclip_normsim", {**base, "fraction_normsim": 0.2})
    assert (sel.counters["input"], sel.counters["stage1_kept"], sel.counters["kept"]) == (1000, 300, 200)
    skipped = run(pool_dir, "negclip_normsim", {**base, "fraction_normsim": 0.3, "target": str(tmp_path / "absent.npy")})
    assert skipped.counters["stage2"] == "skipped" and len(skipped) == 300
    only = run(pool_dir, "negclip", {"fraction": 0.3, "batch_size": 256, "repeats": 1})
    np.testing.assert_array_equal(skipped.uids, only.uids)
    with pytest.raises(ParamError, match="exceeds"):
        create_filter("negclip_normsim", {**base, "fraction_normsim": 0.4})
    empty = run(pool_dir, "negclip_normsim", {**base, "fraction": 0.0005, "fraction_normsim": 0.0001})
    assert len(empty) == 0
    with pytest.raises(ParamError, match="target"):
        create_filter("negclip_normsim", {"fraction": 0.3, "fraction_normsim": 0.2, "norm": "inf"})


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_normsim_on_survivors_equals_scoring_everyone(pool_dir, memory, target_file, norm):
    pool, shards = memory
    uids = np.concatenate([s.uids for s in shards])
    img = np.concatenate([s.embeddings["l14_img"] for s in shards]).astype(np.float64)
    g = np.load(target_file).astype(np.float64)
    sims = img @ g.T
    everyone = np.linalg.norm(sims, axis=1) if norm == "2" else np.abs(sims).max(1)
    params = {"fraction": 0.3, "fraction_normsim": 0.2, "batch_size": 40, "repeats": 2, "norm": norm, "target": str(target_file)}
    sel = run(pool_dir, "negclip_normsim", params)
    stage1 = run(pool_dir, "negclip", {"fraction": 0.3, "batch_size": 40, "repeats": 2})
    inside = np.flatnonzero(isin_sorted(uids, stage1.uids))
    want = uids[inside[top_n(everyone[inside], uids[inside], int(360 * 0.2))]]
    np.testing.assert_array_equal(sel.uids, sort_records(want))
    alone = run(pool_dir, "normsim", {"fraction": 0.2, "norm": norm, "target": str(target_file)})
    np.testing.assert_array_equal(alone.uids, sort_records(uids[top_n(everyone, uids, 72)]))


def test_covariance_target_ranks_like_normsim2(pool_dir, target_file, tmp_path):
    g = np.load(target_file).astype(np.float64)
    torch.save({"variance": torch.from_numpy(g.T @ g / len(g))}, tmp_path / "variance_t.pt")
    vas = run(pool_dir, "normsim", {"fraction": 0.25, "norm": "2", "target": str(tmp_path / "variance_t.pt"), "target_format": "covariance"})
    ns2 = run(pool_dir, "normsim", {"fraction": 0.25, "norm": "2", "target": str(target_file)})
    np.testing.assert_array_equal(vas.uids, ns2.uids)
    np.testing.assert_allclose(np.sqrt(len(g) * vas.scores), ns2.scores, rtol=1e-9)


def test_target_formats_and_errors(pool_dir, target_file, tmp_path):
    g = np.load(target_file)
    d = tmp_path / "t"
    d.mkdir()
    np.save(d / "a.npy", g[:10])
    np.savez(d / "b.npz", image_features=g[10:20], other=g[:2])
    torch.save({"image_features": torch.from_numpy(g[20:])}, d / "c.pt")
    ref = run(pool_dir, "normsim", {"fraction": 0.3, "norm": "inf", "target": str(target_file)})
    for spec in (str(d), f"{d}/a.npy,{d}/b.npz,{d}/c.pt", f"{d}/*"):
        np.testing.assert_array_equal(run(pool_dir, "normsim", {"fraction": 0.3, "norm": "inf", "target": spec}).uids, ref.uids)
    np.save(tmp_path / "b32.npy", g[:, :512])
    with pytest.raises(ParamError, match="dimension 512") as err:
        run(pool_dir, "normsim", {"fraction": 0.3, "norm": "2", "target": str(tmp_path / "b32.npy")})
    assert "\n" not in str(err.value)
    with pytest.raises(ParamError, match="not found"):
        run(pool_dir, "normsim", {"fraction": 0.3, "norm": "2", "target": str(tmp_path / "nope.npy")})
    with pytest.raises(ParamError, match="target_key"):
        np.savez(tmp_path / "two.npz", x=g, y=g)
        run(pool_dir, "normsim", {"fraction": 0.3, "norm": "2", "target": str(tmp_path / "two.npz")})


def test_dynamic_two_stage_equals_in_memory(pool_dir, memory):
    pool, shards = memory
    uids = np.concatenate([s.uids for s in shards])
    img = np.concatenate([s.embeddings["l14_img"] for s in shards])
    params = {"fraction": 0.3, "fraction_normsim": 0.2, "batch_size": 40, "repeats": 2, "norm": "dynamic", "iterations": 5}
    stage1 = run(pool_dir, "negclip", {"fraction": 0.3, "batch_size": 40, "repeats": 2})
    inside = np.flatnonzero(isin_sorted(uids, stage1.uids))
    x = img.astype(np.float64)
    for init, initial in (("pool", x.T @ x / len(x)), ("start", None)):
        sel = run(pool_dir, "negclip_normsim", {**params, "init_target": init})
        keep = naive_dynamic(img[inside], uids[inside], 72, 5, initial=initial)
        np.testing.assert_array_equal(sel.uids, sort_records(uids[inside[keep]]))
        assert sel.counters["kept"] == 72 and sel.details["iterations_run"] == 5
    sub = [run(pool_dir, "negclip_normsim", {**params, "sigma_subsample": 0.5, "init_target": "start"}).uids for _ in range(2)]
    np.testing.assert_array_equal(sub[0], sub[1])


def test_clip_score_stage1(pool_dir):
    sel = run(pool_dir, "negclip_normsim", {"fraction": 0.25, "stage1": "clip_score", "fraction_normsim": 0.25})
    pool = Pool(str(pool_dir))
    batches = [pool.read(s, columns=["clip_l14_similarity_score"]) for s in pool.shards]
    uids = np.concatenate([b.uids for b in batches])
    score = np.concatenate([b.numpy("clip_l14_similarity_score") for b in batches])
    np.testing.assert_array_equal(sel.uids, sort_records(uids[top_n(score.astype(np.float32), uids, 90)]))


def test_presets_fill_unset_parameters(target_file):
    f = create_filter("negclip_normsim", {"preset": "small", "target": str(target_file)})
    assert (f.fraction, f.fraction_normsim, f.norm, f.repeats, f.batch_size, f.tau) == (0.44, 0.30, "2", 10, 32768, 0.01)
    f = create_filter("negclip_normsim", {"preset": "medium", "target": str(target_file), "repeats": 3})
    assert (f.fraction, f.fraction_normsim, f.norm, f.repeats) == (0.30, 0.20, "inf", 3)
    f = create_filter("negclip_normsim", {"preset": "dynamic"})
    assert (f.norm, f.iterations, f.init_target) == ("dynamic", 500, "pool")
    with pytest.raises(ParamError, match="needs target"):
        create_filter("negclip_normsim", {"preset": "small"})
    from importlib import resources

    recipe = resources.files("clipsift.filters").joinpath("recipes", "negclip_dynamic.toml")
    assert load_recipe(str(recipe)).get_params()["fraction_normsim"] == 0.2


def test_cli_writes_sorted_unique_subset(pool_dir, tmp_path):
    out = tmp_path / "neg.npy"
    rc = cli_main(["-q", "filter", "negclip", "--pool", str(pool_dir), "--out", str(out), "--workers", "1",
                   "--set", "fraction=0.3", "--set", "batch_size=40", "--set", "repeats=2", "--device", "cpu"])
    assert rc == 0
    uids = read_subset(out)
    assert uids.dtype == UID_DTYPE and len(uids) == 108
    assert (np.diff(uids["f0"].astype(np.float64)) >= 0).all() and len(np.unique(uids)) == len(uids)
    manifest = json.loads((tmp_path / "neg.npy.json").read_text())
    assert manifest["counters"]["kept"] == 108 and manifest["params"]["batch_size"] == 40


def test_missing_embeddings_is_one_line(tmp_path):
    pool_dir = write_pool(tmp_path / "nonpz", [10], npz=False)
    with pytest.raises(PoolError) as err:
        run(pool_dir, "negclip", {"fraction": 0.5})
    assert "\n" not in str(err.value)
