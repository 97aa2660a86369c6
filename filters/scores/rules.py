"""DataComp's selection rules over per-uid scores, for scores that do not fit in memory.

The rules are the ones of :mod:`clipsift.baselines.scores` (``score >= T`` in the score's own
dtype; fraction mode ``T = sorted_desc(V)[int(N * f)]``, NaN last, ties kept). For the fraction
rule the value at a rank is found without holding V: every float is mapped to a 64-bit key whose
ascending order is V's descending order (NaN last), and the key at the rank is found one 16-bit
digit at a time with a histogram per pass over the on-disk parts (at most four passes; the last
pass collects the few candidates once a bin holds under ``COLLECT_ROWS`` rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from clipsift.baselines.scores import fraction_index

COLLECT_ROWS = 1 << 22
_SIGN = np.uint64(1 << 63)
_NAN_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)


def desc_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys: ascending key order = descending float order, every NaN last (one key)."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    v = np.where(v == 0, 0.0, v)  # -0.0 and 0.0 compare equal: one key
    bits = v.view(np.uint64)
    asc = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    keys = ~asc
    keys[np.isnan(v)] = _NAN_KEY
    return keys


def key_value(key: np.uint64) -> float:
    """Inverse of :func:`desc_keys` for one key (NaN for the NaN key)."""
    key = np.uint64(key)
    if key == _NAN_KEY:
        return float("nan")
    asc = ~key
    bits = asc & ~_SIGN if asc & _SIGN else ~asc
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def kth_desc_key(parts: Callable[[], Iterable[np.ndarray]], k: int) -> np.uint64:
    """The k-th smallest (0-based) of all keys yielded by ``parts()``, called once per pass."""
    prefix, shift, rank = np.uint64(0), 64, k
    while True:
        shift -= 16
        hist = np.zeros(1 << 16, dtype=np.int64)
        for keys in parts():
            sel = keys if shift == 48 else keys[(keys >> np.uint64(shift + 16)) == (prefix >> np.uint64(shift + 16))]
            if len(sel):
                hist += np.bincount(((sel >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64), minlength=1 << 16)
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[digit - 1]) if digit else 0
        prefix = prefix | (np.uint64(digit) << np.uint64(shift))
        if shift == 0:
            return prefix
        if hist[digit] <= COLLECT_ROWS:
            top = prefix >> np.uint64(shift)
            got = [keys[(keys >> np.uint64(shift)) == top] for keys in parts()]
            got = np.concatenate(got) if got else np.empty(0, np.uint64)
            return np.partition(got, rank)[rank]


def fraction_threshold_parts(parts: Callable[[], Iterable[np.ndarray]], num_rows: int, fraction: float, dtype) -> np.generic:
    """DataComp's ``-np.sort(-V)[int(N * f)]`` over values yielded by ``parts()`` (float64 copies
    of a column whose own dtype is ``dtype``); the threshold is returned in that dtype."""
    idx = fraction_index(num_rows, fraction)
    key = kth_desc_key(lambda: (desc_keys(v) for v in parts()), idx)
    return np.dtype(dtype).type(key_value(key))
