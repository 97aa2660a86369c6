"""ClipCov's row-alignment check skips NaN scores (real pools hold some); a misaligned row still fails."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_clipcov_pool import clipcov_pool, run

from clipsift.errors import PoolError


def _set_scores(root, rows, value):
    f = sorted(root.glob("*.parquet"))[0]
    t = pq.read_table(f)
    s = t.column("clip_b32_similarity_score").to_numpy().copy()
    s[rows] = value
    pq.write_table(t.set_column(t.schema.get_field_index("clip_b32_similarity_score"), "clip_b32_similarity_score", pa.array(s)), f)


def test_nan_scores_pass_the_alignment_check_and_change_nothing(tmp_path):
    clean, *_ = clipcov_pool(tmp_path / "clean", [200, 100], seed=7)
    nans, *_ = clipcov_pool(tmp_path / "nans", [200, 100], seed=7)
    _set_scores(nans, [3, 50, 199], np.nan)
    params = dict(partition="kmeans", clusters=3, fraction=0.3, kmeans_iters=5)
    a = run(str(clean), tmp_path / "w1", **params).uids
    b = run(str(nans), tmp_path / "w2", **params).uids
    np.testing.assert_array_equal(a, b)


def test_a_wrong_score_still_fails_the_check(tmp_path):
    root, *_ = clipcov_pool(tmp_path / "bad", [200, 100], seed=7)
    _set_scores(root, [3], np.nan)
    _set_scores(root, [5], 0.99)
    with pytest.raises(PoolError, match="row 5 image·text"):
        run(str(root), tmp_path / "w", partition="kmeans", clusters=3, fraction=0.3, kmeans_iters=5)
