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

from clipsift.kth import desc_keys, fraction_index, key_value, kth_desc_key  # noqa: F401 - one home for the rule

COLLECT_ROWS = 1 << 22


def fraction_threshold_parts(parts: Callable[[], Iterable[np.ndarray]], num_rows: int, fraction: float, dtype) -> np.generic:
    """DataComp's ``-np.sort(-V)[int(N * f)]`` over values yielded by ``parts()`` (float64 copies
    of a column whose own dtype is ``dtype``); the threshold is returned in that dtype."""
    idx = fraction_index(num_rows, fraction)
    key = kth_desc_key(lambda: (desc_keys(v) for v in parts()), idx, num_rows, COLLECT_ROWS)
    return np.dtype(dtype).type(key_value(key))
