"""CLIP-score thresholds exactly as DataComp computes and applies them.

* Threshold mode compares ``score >= T`` in the column's own dtype, as numpy does with a Python
  float (a float32 column is compared with ``float32(T)``); NaN never passes.
* Fraction mode: ``n = int(len(V) * fraction)``, ``T = sorted_desc(V)[n]`` with NaN last and
  Python indexing (negative n counts from the end; n out of range is an error). The result keeps
  the n+1 largest scores plus every tie with the (n+1)-th.
"""

from __future__ import annotations

import numpy as np

from clipsift.kth import fraction_index  # noqa: F401 - one home for DataComp's index rule

SCORE_COLUMNS = {"b32": "clip_b32_similarity_score", "l14": "clip_l14_similarity_score"}


def comparison_dtype(column_dtype: np.dtype, threshold) -> np.dtype:
    """dtype numpy (value-based casting, as DataComp's numpy 1.23) compares a column and T in."""
    if isinstance(threshold, np.generic):
        return np.result_type(column_dtype, threshold.dtype)
    if np.issubdtype(column_dtype, np.floating):
        return np.result_type(column_dtype, np.min_scalar_type(float(threshold)))
    return np.result_type(column_dtype, np.float64)


def at_least(values: np.ndarray, threshold) -> np.ndarray:
    """``values >= threshold`` with DataComp's dtype rule; NaN rows are False."""
    values = np.asarray(values)
    dtype = comparison_dtype(values.dtype, threshold)
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(dtype, copy=False) >= np.asarray(threshold, dtype=dtype)


def fraction_threshold(values: np.ndarray, fraction: float):
    """``-np.sort(-V)[int(len(V) * fraction)]`` (NaN sorts last), via a partition instead of a sort."""
    values = np.asarray(values)
    idx = fraction_index(len(values), fraction)
    neg = -values
    return -np.partition(neg, idx)[idx]
