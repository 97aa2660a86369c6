"""DataComp's ``no_filter`` baseline: every uid of the pool (duplicates kept, sorted)."""

from __future__ import annotations

import numpy as np

from clipsift.filter import RowFilter


class NoFilter(RowFilter):
    name = "no_filter"
    description = "Keep every sample (DataComp baseline no_filter)."
    columns = ("uid",)
    threads = True  # only numpy work per shard

    def keep(self, batch) -> np.ndarray:
        return np.ones(len(batch), dtype=bool)
