"""`score` and `uids` filters: external per-uid files joined to the pool by uid (known answers)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_uids, write_pool

from clipsift.baselines.scores import fraction_threshold
from clipsift.cli import main as cli_main
from clipsift.errors import ParamError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.scores import join, rules
from clipsift.pool import Pool
from clipsift.recipe import load_recipe
from clipsift.registry import create_filter
from clipsift.subset import read_subset
from clipsift.uids import hex_to_records, sort_records

N = 100


@pytest.fixture
def pool(tmp_path):
    return write_pool(tmp_path / "pool", [30, 0, 45, 25], seed=3)


def run(pool, name, tmp_path, candidates=None, **params):
    ctx = RunContext(Pool(str(pool)), LocalExecutor(workers=1, show_progress=False), candidates=candidates, workdir=tmp_path / "work")
    return create_filter(name, params).select(ctx)


def records(hexes):
    return sort_records(hex_to_records(list(hexes)))


def write_scores(path, uids, scores, dtype=None, column="score"):
    dtype = dtype or pa.float64()
    pq.write_table(pa.table({"uid": pa.array(list(uids), pa.string()), column: pa.array(scores, dtype)}), path)
    return path


@pytest.fixture
def uids():
    return make_uids(N, 3)


@pytest.fixture(params=[0, 3])
def small_buckets(request, monkeypatch):
    """Run every join with 1 bucket and with 8 buckets (the bucketed merge must not matter)."""
    monkeypatch.setattr(join, "join_bits", lambda *a: request.param)
    return request.param


def test_score_threshold_and_fraction_equal_clip_score_rule(pool, uids, tmp_path, small_buckets):
    rng = np.random.default_rng(0)
    vals = np.round(rng.random(N), 2).astype(np.float32)  # ties on purpose
    f = write_scores(tmp_path / "s.parquet", uids, vals, pa.float32())
    sel = run(pool, "score", tmp_path, scores=str(f), threshold=0.5)
    expect = records(np.asarray(uids)[vals >= np.float32(0.5)])
    assert np.array_equal(sel.uids, expect)
    for frac in (0.0, 0.1, 0.37, 0.9):
        t = fraction_threshold(vals, frac)
        sel = run(pool, "score", tmp_path, scores=str(f), fraction=frac)
        assert np.array_equal(sel.uids, records(np.asarray(uids)[vals >= t])), frac
        assert sel.details["threshold"] == float(t)
    with pytest.raises(ParamError, match="fraction=1.0"):
        run(pool, "score", tmp_path, scores=str(f), fraction=1.0)


def test_score_missing_extra_and_duplicates(pool, uids, tmp_path, small_buckets):
    # file: rows 10.. of the pool, 5 uids not in the pool, uid 20 twice (0.9 then 0.1)
    extra = make_uids(5, 99)
    file_uids = uids[10:] + extra + [uids[20]]
    vals = np.linspace(0, 1, len(file_uids))
    vals[10] = 0.9  # uids[20] first occurrence
    vals[-1] = 0.1
    f = write_scores(tmp_path / "s.parquet", file_uids, vals)
    with pytest.raises(ParamError, match="appears more than once"):
        run(pool, "score", tmp_path, scores=str(f), threshold=0.5, missing="drop")
    with pytest.raises(ParamError, match=r"10 of 100 pool rows have no score"):
        run(pool, "score", tmp_path, scores=str(f), threshold=0.5, duplicates="first")
    by = dict(zip(file_uids[:-1], vals[:-1]))
    for rule, v20 in (("first", 0.9), ("max", 0.9), ("min", 0.1), ("mean", 0.5)):
        sel = run(pool, "score", tmp_path, scores=str(f), threshold=0.5, missing="drop", duplicates=rule)
        score = {**by, uids[20]: v20}
        expect = [u for u in uids[10:] if score[u] >= 0.5]
        assert np.array_equal(sel.uids, records(expect)), rule
        c = sel.counters
        assert (c["pool_rows_without_score"], c["score_uids_not_in_pool"], c["score_duplicate_rows"]) == (10, 5, 1)
    # fill: missing rows score fill_value and count in N
    sel = run(pool, "score", tmp_path, scores=str(f), fraction=0.5, missing="fill", fill_value=2.0, duplicates="first")
    full = np.array([2.0 if u not in by else (0.9 if u == uids[20] else by[u]) for u in uids])
    t = fraction_threshold(full, 0.5)
    assert np.array_equal(sel.uids, records(np.asarray(uids)[full >= t]))
    assert set(uids[:10]) <= set(np.asarray(uids)[full >= t])


def test_score_with_candidates_and_folder(pool, uids, tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    vals = np.arange(N, dtype=np.float64)
    write_scores(folder / "a.parquet", uids[:50], vals[:50])
    (folder / "sub").mkdir()
    write_scores(folder / "sub" / "b.parquet", uids[50:], vals[50:])
    cands = records(uids[::2])
    sel = run(pool, "score", tmp_path, candidates=cands, scores=str(folder), fraction=0.5)
    # 50 candidates with values 0,2,..,98: T = 25th largest (index 25) -> keep 26 rows
    cand_vals = vals[::2]
    t = fraction_threshold(cand_vals, 0.5)
    assert np.array_equal(sel.uids, records(np.asarray(uids[::2])[cand_vals >= t]))
    assert sel.counters["score_uids_not_in_pool"] == 50


def test_score_file_errors(pool, uids, tmp_path):
    bad = write_scores(tmp_path / "bad.parquet", ["xyz"] + uids[1:], np.zeros(N))
    with pytest.raises(ParamError, match=r"bad.parquet: row 0: uid 'xyz'"):
        run(pool, "score", tmp_path, scores=str(bad), threshold=0.0)
    nocol = write_scores(tmp_path / "nocol.parquet", uids, np.zeros(N), column="dfn")
    with pytest.raises(ParamError, match="no column 'score'"):
        run(pool, "score", tmp_path, scores=str(nocol), threshold=0.0)
    sel = run(pool, "score", tmp_path, scores=str(nocol), column="dfn", threshold=0.0)
    assert len(sel) == N
    with pytest.raises(ParamError, match="not found"):
        run(pool, "score", tmp_path, scores=str(tmp_path / "nope.parquet"), threshold=0.0)
    with pytest.raises(ParamError, match="fill_value"):
        create_filter("score", {"scores": "x", "threshold": 0.1, "missing": "fill"})


def test_uids_filter_keep_drop_repeats(pool, uids, tmp_path, small_buckets):
    listed = uids[5:15] + uids[7:9] + make_uids(3, 77)  # 7, 8 listed twice; 3 not in the pool
    npy = tmp_path / "list.npy"
    np.save(npy, sort_records(hex_to_records(listed)))
    txt = tmp_path / "list.txt"
    txt.write_text("\n".join(listed) + "\n")
    pqf = tmp_path / "list.parquet"
    pq.write_table(pa.table({"uid": listed}), pqf)
    for path in (npy, txt, pqf):
        sel = run(pool, "uids", tmp_path, uids=str(path))
        assert np.array_equal(sel.uids, records(uids[5:15])), path
        assert sel.counters["list_uids_not_in_pool"] == 3
        assert sel.counters["list_duplicate_rows"] == 2
    sel = run(pool, "uids", tmp_path, uids=str(npy), repeats=True)
    assert np.array_equal(sel.uids, records(uids[5:15] + uids[7:9]))
    sel = run(pool, "uids", tmp_path, uids=str(npy), mode="drop")
    assert np.array_equal(sel.uids, records(uids[:5] + uids[15:]))
    sel = run(pool, "uids", tmp_path, candidates=records(uids[:8]), uids=str(npy))
    assert np.array_equal(sel.uids, records(uids[5:8]))


def test_uids_in_recipe_intersect_union_and_cli(pool, uids, tmp_path):
    a = tmp_path / "a.npy"
    np.save(a, records(uids[:40]))
    s = write_scores(tmp_path / "s.parquet", uids, np.arange(N, dtype=np.float64))
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "t"\n[[step]]\nunion = [ {{ filter = "uids", params = {{ uids = "{a}" }} }},\n'
        f'  {{ filter = "score", params = {{ scores = "{s}", threshold = 90.0 }} }} ]\n'
        f'[[step]]\nfilter = "uids"\nparams = {{ uids = "{a}", mode = "drop" }}\n'
    )
    out = tmp_path / "out.npy"
    assert cli_main(["filter", "--recipe", str(recipe), "--pool", str(pool), "--out", str(out), "--workers", "1"]) == 0
    assert np.array_equal(read_subset(out), records(uids[90:]))
    step = load_recipe(recipe)
    assert step is not None
    assert cli_main(["filter", "score", "--pool", str(pool), "--out", str(out), "--set", f"scores={s}", "--set", "threshold=1e9"]) == 0
    assert len(read_subset(out)) == 0


def test_bucket_spill_and_duplicates_pure():
    rows = np.zeros(5, dtype=join.VALUE_DTYPE)
    rows["f0"] = [1, 1, 2, 3, 3]
    rows["v"] = [1.0, 3.0, 5.0, np.nan, 2.0]
    out, dups = join.reduce_duplicates(rows, "max", "x")
    assert dups == 2 and list(out["f0"]) == [1, 2, 3] and list(out["v"][:2]) == [3.0, 5.0]
    keys = rules.desc_keys(np.array([1.0, -0.0, 0.0, np.nan, -np.inf, np.inf, -2.5]))
    order = np.argsort(keys, kind="stable")
    assert list(order) == [5, 0, 1, 2, 6, 4, 3]
    for v in (1.5, -2.25, 0.0, np.inf, -np.inf):
        assert rules.key_value(rules.desc_keys(np.array([v]))[0]) == v


def test_lookup_with_shared_high_words():
    """Reference rows sharing a 64-bit high word are still matched exactly on the low word."""
    from clipsift.uids import UID_DTYPE

    ref = np.zeros(6, dtype=join.VALUE_DTYPE)
    ref["f0"] = [5, 5, 5, 7, 9, 9]
    ref["f1"] = [1, 4, 8, 2, 3, 6]
    ref["v"] = np.arange(6.0)
    q = np.zeros(7, dtype=UID_DTYPE)
    q["f0"] = [5, 5, 5, 9, 9, 7, 4]
    q["f1"] = [8, 4, 5, 6, 3, 2, 1]
    vals, found = join.merge_bucket(q, ref)
    assert found.tolist() == [True, True, False, True, True, True, False]
    assert vals[found].tolist() == [2.0, 1.0, 5.0, 4.0, 3.0]
