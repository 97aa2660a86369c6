"""DataComp's fraction rule as an exact distributed selection: the threshold without gathering
every score in one process.

DataComp takes ``T = -np.sort(-V)[int(len(V) * fraction)]`` over the whole pool (NaN last). Here
each shard maps its scores to order-preserving 64-bit keys and returns a histogram of the top 16
bits; the driver sums the histograms and finds the bucket holding the wanted rank. Further passes
histogram the next 16 bits inside that bucket, until the bucket is small enough to gather (or all
64 bits are fixed, when the value is known). Driver memory is one 65,536-bin histogram and at
most ``gather_max`` values whatever the pool's size; the threshold is bit-identical to the sort.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from clipsift.errors import ParamError

BITS = 16
GATHER_MAX = 1 << 20  # values gathered in the last pass, at most
_SIGN = np.uint64(1 << 63)


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys that sort like the float64 values (``-0.0`` as ``0.0``); NaN rows must be removed."""
    v = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0
    bits = v.view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_value(key: int) -> float:
    bits = np.uint64(key)
    raw = bits & ~_SIGN if bits & _SIGN else ~bits
    return float(np.asarray(raw, dtype=np.uint64).view(np.float64))


def _pass(reader, prefix_bits: int, prefix: int, gather: bool, batch):
    """One shard: (dtype, rows, NaN rows, histogram of the next 16 key bits among keys with the
    given prefix) or, with ``gather``, the keys themselves."""
    values = np.asarray(reader(batch))
    finite = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    keys = order_keys(finite)
    if prefix_bits:
        keys = keys[(keys >> np.uint64(64 - prefix_bits)) == np.uint64(prefix)]
    if gather:
        return str(values.dtype), len(values), len(values) - len(finite), keys
    digit = (keys >> np.uint64(64 - prefix_bits - BITS)) & np.uint64((1 << BITS) - 1)
    counts = np.bincount(digit.astype(np.int64), minlength=1 << BITS)
    nz = np.flatnonzero(counts)
    return str(values.dtype), len(values), len(values) - len(finite), (nz.astype(np.int32), counts[nz])


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


def fraction_cut(ctx, reader, fraction: float, columns, desc: str, gather_max: int = GATHER_MAX):
    """(T, details) with ``T`` exactly ``-np.sort(-V)[int(len(V) * fraction)]`` of the scores
    ``reader(batch)`` gives over ``ctx``'s rows, computed in map passes over the shards."""
    prefix_bits, prefix = 0, 0
    rank = None  # rank wanted among the finite keys under the current prefix, counted from the top
    in_bucket = ctx.num_candidates  # small inputs are gathered in one pass
    passes = 0
    while True:
        gather = prefix_bits == 64 or in_bucket <= gather_max
        step = partial(_pass, reader, prefix_bits, prefix, gather)
        dtypes, rows, nans = set(), 0, 0
        hist = np.zeros(1 << BITS, dtype=np.int64) if not gather else None
        keys = []
        for dt, n, n_nan, part in ctx.map_shards(step, columns=columns, desc=f"{desc} (pass {passes + 1})", uids=False):
            dtypes.add(dt)
            rows, nans = rows + n, nans + n_nan
            if gather:
                keys.append(part)
            else:
                np.add.at(hist, part[0], part[1])
        passes += 1
        dtype = np.result_type(*[np.dtype(d) for d in dtypes]) if dtypes else np.dtype(np.float64)
        if rank is None:  # first pass: where does DataComp's index fall?
            idx = fraction_index(rows, fraction)
            details = {"score_rows": rows, "nan_rows": nans, "fraction": fraction}
            if idx >= rows - nans:  # the index lands among the NaN (they sort last)
                return _finish(np.nan, dtype, details, passes)
            rank = idx
        if gather:
            allk = np.concatenate(keys) if keys else np.empty(0, np.uint64)
            if prefix_bits == 64 and len(allk) == 0:
                raise RuntimeError("selection lost its bucket: the scores changed between passes")
            key = int(np.sort(allk)[::-1][rank]) if prefix_bits < 64 else prefix
            return _finish(key_value(key), dtype, details, passes)
        # descending: walk the histogram from the top digit down to the bucket holding ``rank``
        desc_counts = hist[::-1]
        cum = np.cumsum(desc_counts)
        j = int(np.searchsorted(cum, rank, side="right"))
        above = int(cum[j - 1]) if j else 0
        digit = (1 << BITS) - 1 - j
        rank -= above
        in_bucket = int(desc_counts[j])
        prefix = (prefix << BITS) | digit
        prefix_bits += BITS


def _finish(value: float, dtype: np.dtype, details: dict, passes: int):
    t = np.asarray(value, dtype=np.float64).astype(dtype)[()]  # exact: the value came from this dtype
    return t, {**details, "threshold": float(t), "threshold_dtype": str(np.asarray(t).dtype), "selection_passes": passes}
