"""DataComp's fraction rule as an exact selection that never holds every score in one process.

DataComp takes ``T = -np.sort(-V)[int(len(V) * fraction)]`` (NaN last). Every float is mapped to
a 64-bit key whose ascending order is V's descending order with every NaN last
(:func:`desc_keys`), so ``T`` is the value of the k-th smallest key. That key is found one 16-bit
digit at a time: each pass histograms the next digit of the keys under the prefix found so far;
once the bucket holding rank k is small enough (or all 64 bits are fixed) its keys are gathered
and the rank is read off. Passes run over pool shards as map steps (:func:`fraction_cut`, the
histograms are computed where the shards are) or over any re-iterable parts in one process
(:func:`kth_desc_key`, e.g. a join's on-disk buckets). Memory: one 65,536-bin histogram and at
most ``gather_max`` keys, whatever the pool's size; the result is bit-identical to the sort.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import numpy as np

from clipsift.errors import ParamError

BITS = 16
GATHER_MAX = 1 << 20  # keys gathered in the last pass, at most
_SIGN = np.uint64(1 << 63)
NAN_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)


def desc_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys: ascending key order = descending float order, every NaN last (one key);
    ``-0.0`` and ``0.0`` share a key, as they compare equal."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    v = np.where(v == 0, 0.0, v)
    bits = v.view(np.uint64)
    keys = ~np.where(bits & _SIGN, ~bits, bits | _SIGN)
    keys[np.isnan(v)] = NAN_KEY
    return keys


def key_value(key) -> float:
    """Inverse of :func:`desc_keys` for one key (NaN for the NaN key)."""
    key = np.uint64(key)
    if key == NAN_KEY:
        return float("nan")
    asc = ~key
    bits = asc & ~_SIGN if asc & _SIGN else ~asc
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def fraction_index(num_rows: int, fraction: float) -> int:
    """Non-negative index into the descending scores that DataComp's ``[int(len * fraction)]`` hits."""
    n = int(num_rows * fraction)
    idx = n + num_rows if n < 0 else n
    if not 0 <= idx < num_rows:
        raise ParamError(
            f"fraction={fraction!r} over {num_rows} rows indexes position {n} of the sorted scores, "
            f"which DataComp's rule cannot take (IndexError there); use a fraction below 1"
        )
    return idx


def digit_pass(keys: np.ndarray, prefix_bits: int, prefix: int, gather: bool):
    """One part's contribution to a pass: its keys under the prefix (``gather``), else the sparse
    histogram (digits, counts) of their next 16 bits."""
    if prefix_bits:
        keys = keys[(keys >> np.uint64(64 - prefix_bits)) == np.uint64(prefix)]
    if gather:
        return keys
    digit = (keys >> np.uint64(64 - prefix_bits - BITS)) & np.uint64((1 << BITS) - 1)
    counts = np.bincount(digit.astype(np.int64), minlength=1 << BITS)
    nz = np.flatnonzero(counts)
    return nz.astype(np.int32), counts[nz]


def select_kth(run_pass: Callable[[int, int, bool], Iterable], rank_of: Callable[[int], int], expected: int,
               gather_max: int = GATHER_MAX) -> tuple[int, int]:
    """(key at rank ``rank_of(total keys)`` in ascending order, passes), where
    ``run_pass(prefix_bits, prefix, gather)`` yields every part's :func:`digit_pass`. The first pass
    sees every key, so the total comes from it; ``expected`` (rows, roughly) lets small inputs be
    gathered in that one pass."""
    prefix_bits, prefix, rank, in_bucket, passes = 0, 0, None, expected, 0
    while True:
        gather = prefix_bits == 64 or in_bucket <= gather_max
        passes += 1
        if gather:
            if prefix_bits == 64:
                return prefix, passes
            parts = list(run_pass(prefix_bits, prefix, True))
            keys = np.concatenate(parts) if parts else np.empty(0, np.uint64)
            if rank is None:
                rank = rank_of(len(keys))
            if not 0 <= rank < len(keys):
                raise RuntimeError("selection lost its rank: the values changed between passes")
            return int(np.partition(keys, rank)[rank]), passes
        hist = np.zeros(1 << BITS, dtype=np.int64)
        for digits, counts in run_pass(prefix_bits, prefix, False):
            np.add.at(hist, digits, counts)
        if rank is None:
            rank = rank_of(int(hist.sum()))
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[digit - 1]) if digit else 0
        in_bucket = int(hist[digit])
        prefix, prefix_bits = (prefix << BITS) | digit, prefix_bits + BITS


def kth_desc_key(parts: Callable[[], Iterable[np.ndarray]], k: int, expected: int | None = None, gather_max: int = GATHER_MAX) -> np.uint64:
    """The k-th smallest (0-based) of all keys yielded by ``parts()``, called once per pass."""
    def run_pass(prefix_bits, prefix, gather):
        return (digit_pass(keys, prefix_bits, prefix, gather) for keys in parts())

    key, _ = select_kth(run_pass, lambda total: k, gather_max + 1 if expected is None else expected, gather_max)
    return np.uint64(key)


# ---- over pool shards, as map steps --------------------------------------------------------------
def _shard_pass(reader, prefix_bits: int, prefix: int, gather: bool, batch):
    values = np.asarray(reader(batch))
    return str(values.dtype), len(values), digit_pass(desc_keys(values), prefix_bits, prefix, gather)


def fraction_cut(ctx, reader, fraction: float, columns, desc: str, gather_max: int = GATHER_MAX):
    """(T, details): ``T`` is exactly ``-np.sort(-V)[int(len(V) * fraction)]`` of the scores
    ``reader(batch)`` gives over ``ctx``'s rows (in V's dtype), computed in map passes."""
    dtypes, rows = set(), []

    def run_pass(prefix_bits, prefix, gather):
        step = partial(_shard_pass, reader, prefix_bits, prefix, gather)
        for dtype, n, part in ctx.map_shards(step, columns=columns, desc=f"{desc} (pass {prefix_bits // BITS + 1})", uids=False):
            dtypes.add(dtype)
            if prefix_bits == 0:
                rows.append(n)
            yield part

    key, passes = select_kth(run_pass, lambda total: fraction_index(total, fraction), ctx.num_candidates, gather_max)
    dtype = np.result_type(*[np.dtype(d) for d in dtypes]) if dtypes else np.dtype(np.float64)
    t = np.asarray(key_value(key), dtype=np.float64).astype(dtype)[()]  # exact: the value came from this dtype
    details = {"threshold": float(t), "threshold_dtype": str(np.asarray(t).dtype), "fraction": fraction,
               "score_rows": int(sum(rows)), "selection_passes": passes}
    return t, details
