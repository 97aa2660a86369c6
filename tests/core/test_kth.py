"""DataComp's fraction rule computed in map passes (clipsift.kth) equals the in-memory sort bit for
bit: ties, NaN, -0.0, negative scores, float32 and integer columns, any number of passes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_pool

from clipsift.baselines.clip_score import _FractionReader
from clipsift.baselines.scores import fraction_threshold
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.kth import desc_keys, fraction_cut, key_value, kth_desc_key
from clipsift.pool import Pool

COL = "clip_l14_similarity_score"


def scores(kind: str, n: int, rng) -> np.ndarray:
    if kind == "ties":
        return rng.choice([0.1, 0.25, 0.25000000000000006, 0.3, -0.2], n)
    if kind == "nan":
        v = rng.standard_normal(n)
        v[rng.random(n) < 0.3] = np.nan
        return v
    if kind == "zeros":
        return rng.choice([-0.0, 0.0, 1e-300, -1e-300, 5.0], n)
    if kind == "float32":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "int":
        return rng.integers(-5, 5, n)
    if kind == "equal":
        return np.full(n, 0.31)
    return rng.standard_normal(n)


@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "zeros", "float32", "int", "equal"])
@pytest.mark.parametrize("gather_max", [0, 7, 1 << 20])
def test_fraction_cut_equals_the_sort(tmp_path, kind, gather_max):
    rng = np.random.default_rng(len(kind) * 31 + gather_max % 97)
    sizes = [40, 0, 33, 27]
    values = scores(kind, sum(sizes), rng)
    pool = Pool(str(write_pool(tmp_path / "pool", sizes, extra_columns={COL: pa.array(values)})))
    ctx = RunContext(pool, LocalExecutor(1, show_progress=False), workdir=tmp_path / "w")
    for fraction in (0.0, 0.1, 0.3, 0.5, 0.77, 0.99, -0.1):
        want = fraction_threshold(values, fraction)
        got, details = fraction_cut(ctx, _FractionReader(COL), fraction, (COL,), "t", gather_max=gather_max)
        assert np.asarray(got).dtype == np.asarray(want).dtype
        if np.isnan(want):
            assert np.isnan(got)
        else:
            assert got == want, (kind, fraction, got, want)
        if gather_max == 0 and not np.isnan(want):
            assert details["selection_passes"] == 5  # four 16-bit digits, then the value is fixed


def test_desc_keys_sort_descending_with_nan_last():
    v = np.array([np.inf, 1.0, 0.5, 1e-300, 0.0, -0.0, -1e-300, -1.0, -1e300, -np.inf, np.nan])
    k = desc_keys(v)
    assert (np.diff(k.astype(object)) >= 0).all() and k[4] == k[5]
    back = [key_value(x) for x in k]
    assert back[:4] == list(v[:4]) and back[4:6] == [0.0, 0.0] and back[6:10] == list(v[6:10]) and np.isnan(back[10])


def test_kth_over_parts_in_one_process_matches_the_sort():
    rng = np.random.default_rng(5)
    parts = [rng.choice([0.1, 0.2, np.nan, -3.0], 50), rng.standard_normal(70), np.empty(0)]
    every = np.sort(desc_keys(np.concatenate(parts)))
    for k in (0, 13, 64, 119):
        for gather_max in (0, 10, 1 << 20):
            assert kth_desc_key(lambda: (desc_keys(p) for p in parts), k, 120, gather_max) == every[k]
