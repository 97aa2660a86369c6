"""Uniform random subset with an exact size, reproducible from the seed alone.

Each uid gets a 64-bit key hashed from (seed, uid); the rows with the smallest keys win (ties by
uid). The result depends only on the seed and the set of candidate uids, never on shard layout,
worker count or processing order.

Keys are uniform, so the cut lies within a few standard deviations of ``k/n * 2**64``. One pass
streams the rows below a window around that point straight into the sorter and keeps only the
window's rows (a few thousand) in memory; the exact cut is then taken inside the window. If the
cut falls outside it (a pool whose row count differs from the expected one), a second, in-memory
pass gives the same answer.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from clipsift.budget import budget_params, keep_count, require_one
from clipsift.filter import Filter, RunContext, Selection, row_counters
from clipsift.log import get_logger
from clipsift.params import Param
from clipsift.uids import UID_DTYPE

log = get_logger("filters.random")
WINDOW_SIGMAS = 8.0  # half-width of the window in binomial standard deviations of the count below the cut
WINDOW_MIN_ROWS = 256
_SPAN = 1 << 64

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def uid_hash(uids: np.ndarray, seed: int) -> np.ndarray:
    s = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        return _mix(uids["f0"] ^ _mix(uids["f1"] + _GOLD * (s + np.uint64(1))))


def target_size(n: int, fraction: float | None, count: int | None) -> int:
    """``int(fraction * n)`` (Python float semantics) or ``min(count, n)``."""
    return int(fraction * n) if fraction is not None else min(count, n)


class RandomFilter(Filter):
    name = "random"
    description = "Uniform random subset of an exact size (fraction or count), seeded."
    params = (
        *budget_params("candidate rows"),
        Param("seed", int, 0, "random seed"),
    )
    columns = ("uid",)

    def validate(self) -> None:
        require_one(self, "fraction", "count")

    threads = True

    def _keys(self, batch):
        return batch.uids, uid_hash(batch.uids, self.seed)

    def _split(self, writer, low: int, high: int | None, batch):
        """Write rows with key < low as this shard's part; return the rows in [low, high)."""
        keys = uid_hash(batch.uids, self.seed)
        below = keys < np.uint64(low) if low < _SPAN else np.ones(len(keys), dtype=bool)
        window = ~below if high is None else (~below & (keys < np.uint64(high)))
        part = writer.write(f"{batch.shard.rank:06d}", batch.uids[below])
        return part, batch.uids[window], keys[window], len(batch)

    def select(self, ctx: RunContext) -> Selection:
        n_expected = ctx.num_candidates
        k = target_size(n_expected, self.fraction, self.count)
        half = int(WINDOW_SIGMAS * math.sqrt(k * (n_expected - k) / max(n_expected, 1))) + WINDOW_MIN_ROWS
        low = max(k - half, 0) * _SPAN // max(n_expected, 1)
        high = None if k + half >= n_expected else (k + half) * _SPAN // n_expected
        sorter = ctx.uid_sorter(max(k, 1), self.name, key=(self, low, high))
        win_uids, win_keys, seen = [], [], 0
        for part, wu, wk, n in ctx.map_shards(partial(self._split, sorter.writer, low, high), desc=self.name, threads=True):
            sorter.add_part(part)
            win_uids.append(wu)
            win_keys.append(wk)
            seen += n
        details: dict = {}
        k = keep_count(seen, self.fraction, self.count, owner="random", details=details)
        need = k - sorter.count
        uids = np.concatenate(win_uids) if win_uids else np.empty(0, dtype=UID_DTYPE)
        keys = np.concatenate(win_keys) if win_keys else np.empty(0, dtype=np.uint64)
        if not 0 <= need <= len(uids):
            sorter.close()
            log.warning("random: the cut fell outside the expected window (%d rows, %d expected); second pass", seen, n_expected)
            return self._select_in_memory(ctx)
        sorter.add(uids[smallest_keys(keys, uids, need)])
        return Selection(sorter=sorter, counters=row_counters(seen, k), details=details)

    def _select_in_memory(self, ctx: RunContext) -> Selection:
        parts = list(ctx.map_shards(self._keys, desc=self.name, threads=self.threads))
        uids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, dtype=UID_DTYPE)
        keys = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, dtype=np.uint64)
        details: dict = {}
        k = keep_count(len(uids), self.fraction, self.count, owner="random", details=details)
        chosen = smallest_keys(keys, uids, k)
        return Selection(uids[chosen], counters=row_counters(len(uids), k), details=details)


def smallest_keys(keys: np.ndarray, uids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest keys, ties at the cut broken by ascending uid (exact, O(n))."""
    n = len(keys)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= n:
        return np.arange(n)
    kth = np.partition(keys, k - 1)[k - 1]
    below = np.flatnonzero(keys < kth)
    tied = np.flatnonzero(keys == kth)
    need = k - len(below)
    if need < len(tied):
        tied = tied[np.lexsort((uids["f1"][tied], uids["f0"][tied]))[:need]]
    return np.concatenate([below, tied])
