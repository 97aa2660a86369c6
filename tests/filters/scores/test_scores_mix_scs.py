"""Score mixing (`mix`) and Soft Cap Sampling (`scs`): known answers from docs/scores.md's rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_uids, write_pool
from scipy.stats import rankdata

from clipsift.baselines.scores import fraction_threshold
from clipsift.cli import main as cli_main
from clipsift.errors import ParamError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.scores.scs import soft_cap_counts
from clipsift.pool import Pool
from clipsift.recipe import load_recipe
from clipsift.registry import create_filter
from clipsift.subset import read_subset
from clipsift.uids import hex_to_records, sort_order, sort_records

N = 60
RECIPES = Path(__file__).resolve().parents[3] / "filters" / "recipes"


@pytest.fixture
def pool(tmp_path):
    return write_pool(tmp_path / "pool", [25, 35], seed=5)


@pytest.fixture
def uids():
    return make_uids(N, 5)


def ctx_for(pool, tmp_path, candidates=None):
    return RunContext(Pool(str(pool)), LocalExecutor(workers=1, show_progress=False), candidates=candidates, workdir=tmp_path / "w", device="cpu")


def run(pool, name, tmp_path, **params):
    return create_filter(name, params).select(ctx_for(pool, tmp_path))


def in_uid_order(uids, values):
    """values (pool order) re-ordered like the sorted uids."""
    return np.asarray(values)[sort_order(hex_to_records(uids))]


def pool_column(pool, name):
    parts = [pq.read_table(p, columns=["uid", name]) for p in sorted(Path(pool).glob("*.parquet"))]
    return [u for p in parts for u in p.column("uid").to_pylist()], np.concatenate([p.column(name).to_numpy() for p in parts])


# ------------------------------------------------------------------ mix


def test_mix_rank_weighted_known_answer(pool, uids, tmp_path):
    pu, l14 = pool_column(pool, "clip_l14_similarity_score")
    ext = np.random.default_rng(1).random(N)
    f = tmp_path / "dfn.parquet"
    pq.write_table(pa.table({"uid": uids, "dfn": ext}), f)
    sel = run(pool, "mix", tmp_path, inputs=f"column:clip_l14_similarity_score; scores:{f}#dfn", weights="1,2", fraction=0.25)
    by_uid = dict(zip(pu, l14))
    a = np.array([by_uid[u] for u in uids])
    mixed = rankdata(a) / N + 2 * rankdata(ext) / N
    t = fraction_threshold(mixed, 0.25)
    expect = sort_records(hex_to_records(np.asarray(uids)[mixed >= t]))
    assert np.array_equal(sel.uids, expect)
    # zscore and a threshold
    sel = run(pool, "mix", tmp_path, inputs=f"scores:{f}#dfn", normalise="zscore", threshold=0.0)
    z = (ext - ext.mean()) / ext.std()
    assert np.array_equal(sel.uids, sort_records(hex_to_records(np.asarray(uids)[z >= 0])))


def test_mix_single_input_none_equals_clip_score(pool, tmp_path):
    a = run(pool, "mix", tmp_path, inputs="column:clip_b32_similarity_score", normalise="none", fraction=0.3)
    b = run(pool, "clip_score", tmp_path, arch="b32", fraction=0.3)
    assert np.array_equal(a.uids, b.uids)


def test_mix_missing_rules(pool, uids, tmp_path):
    f = tmp_path / "part.parquet"
    pq.write_table(pa.table({"uid": uids[:40], "score": np.arange(40.0)}), f)
    with pytest.raises(ParamError, match=r"20 of 60 candidates lack a score .*scores:"):
        run(pool, "mix", tmp_path, inputs=f"scores:{f}", threshold=0.0)
    sel = run(pool, "mix", tmp_path, inputs=f"scores:{f}", missing="drop", threshold=0.0)
    assert len(sel) == 40
    sel = run(pool, "mix", tmp_path, inputs=f"scores:{f}; column:clip_l14_similarity_score", missing="fill", fill_value=0.0, threshold=1.5)
    assert set(sel.uids.tolist()) <= set(hex_to_records(uids[:40]).tolist())
    for bad, msg in (
        ({"inputs": "nonsense", "threshold": 0.0}, "column:NAME"),
        ({"inputs": "column:a; column:b", "weights": "1", "threshold": 0.0}, "1 weights for 2 inputs"),
        ({"inputs": "filter:negclip bogus=1", "threshold": 0.0}, "unknown parameter"),
        ({"inputs": "column:a", "threshold": 0.0, "fraction": 0.1}, "exactly one"),
    ):
        with pytest.raises(ParamError, match=msg):
            create_filter("mix", bad)


def test_negclip_normsim_dfn_recipe(pool, uids, tmp_path):
    """The shipped recipe: rank(negCLIPLoss) + rank(NormSim) + 2 rank(DFN), top 30%."""
    rng = np.random.default_rng(2)
    dfn = tmp_path / "dfn_scores.parquet"
    pq.write_table(pa.table({"uid": uids, "score": rng.random(N)}), dfn)
    target = tmp_path / "target.npy"
    np.save(target, rng.standard_normal((8, 768)).astype(np.float32))
    text = (RECIPES / "negclip_normsim_dfn.toml").read_text()
    text = text.replace("dfn_scores/", str(dfn)).replace("target.npy", str(target))
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    out = tmp_path / "o.npy"
    assert cli_main(["filter", "--recipe", str(recipe), "--pool", str(pool), "--out", str(out), "--workers", "1", "--device", "cpu"]) == 0
    got = read_subset(out)
    # the same mix computed from the three filters' own scores
    ctx = ctx_for(pool, tmp_path)
    negclip = create_filter("negclip", {"threshold": -1e30})
    negclip.keep_scores = True  # its kept scores in memory, as mix asks for them
    neg = negclip.select(ctx)
    ns = create_filter("normsim", {"threshold": -1e30, "target": str(target)}).select(ctx)
    recs = sort_records(hex_to_records(uids))
    assert np.array_equal(neg.uids, recs) and np.array_equal(ns.uids, recs)
    d = in_uid_order(uids, pq.read_table(dfn).column("score").to_numpy())
    mixed = rankdata(neg.scores) / N + rankdata(ns.scores) / N + 2 * rankdata(d) / N
    t = fraction_threshold(mixed, 0.3)
    assert np.array_equal(got, recs[mixed >= t])
    assert load_recipe(RECIPES / "negclip_normsim_dfn.toml") is not None


# ------------------------------------------------------------------ SCS


def test_scs_batch_equal_to_candidates_draws_everyone_each_round():
    rng = np.random.default_rng(0)
    counts = soft_cap_counts(rng.standard_normal(50) * 5, total=50 * 7, penalty=0.3, batch_size=50, seed=3)
    assert np.all(counts == 7)


def test_scs_large_gaps_known_sequence():
    # z = [1000, 545, 0], penalty 100, one draw a round: the larger logit wins by >= 45 each round
    # rounds: 0(1000) 0(900) 0(800) 0(700) 0(600) 1(545>500) 0(500>445) 1(445>400) 0(400>345) 1(345>300)
    counts = soft_cap_counts(np.array([1000.0, 545.0, 0.0]), total=10, penalty=100.0, batch_size=1, seed=0)
    assert counts.tolist() == [7, 3, 0]
    # temperature divides the scores: the same with scores x10 and temperature 10
    counts = soft_cap_counts(np.array([10000.0, 5450.0, 0.0]), total=10, penalty=100.0, batch_size=1, temperature=10.0, seed=9)
    assert counts.tolist() == [7, 3, 0]


def test_scs_huge_penalty_is_a_hard_cap_of_one_until_exhausted():
    s = np.random.default_rng(4).standard_normal(40)
    counts = soft_cap_counts(s, total=40, penalty=1e6, batch_size=3, seed=1)
    assert np.all(counts == 1)
    counts = soft_cap_counts(s, total=100, penalty=1e6, batch_size=1, seed=1)
    assert counts.min() == 2 and counts.max() == 3 and counts.sum() == 100


def test_scs_zero_penalty_frequencies_follow_softmax():
    s = np.array([0.0, 1.0, 2.0])
    counts = soft_cap_counts(s, total=60000, penalty=0.0, batch_size=1, seed=0)
    p = np.exp(s) / np.exp(s).sum()
    assert np.allclose(counts / 60000, p, atol=0.01)


def test_scs_filter_deterministic_with_repeats(pool, uids, tmp_path):
    f = tmp_path / "s.parquet"
    pq.write_table(pa.table({"uid": uids, "score": np.linspace(0, 3, N)}), f)
    params = dict(inputs=f"scores:{f}", count=150, repetition_penalty=0.5, batch_size=10, seed=7)
    a = run(pool, "scs", tmp_path, **params)
    b = run(pool, "scs", tmp_path, **params)
    c = run(pool, "scs", tmp_path, **{**params, "seed": 8})
    assert len(a) == 150 and np.array_equal(a.uids, b.uids) and not np.array_equal(a.uids, c.uids)
    reps = Counter(a.uids.tolist())
    assert max(reps.values()) == a.details["max_repeats"] > 1
    assert np.array_equal(a.uids, sort_records(a.uids))
    # high scores are drawn more often
    hi = set(hex_to_records(uids[-10:]).tolist())
    lo = set(hex_to_records(uids[:10]).tolist())
    assert sum(v for k, v in reps.items() if k in hi) > 2 * sum(v for k, v in reps.items() if k in lo)
    # CLI: the written subset keeps the repeats, and a candidates file restricts the draw
    out = tmp_path / "scs.npy"
    args = ["filter", "scs", "--pool", str(pool), "--out", str(out), "--workers", "1"]
    for k, v in params.items():
        args += ["--set", f"{k}={v}"]
    assert cli_main(args) == 0
    assert np.array_equal(read_subset(out), a.uids)
    with pytest.raises(ParamError, match="exactly one of count or fraction"):
        create_filter("scs", {"inputs": "column:x"})
