"""One rule for every embedding reader: rows that are non-finite or have zero norm are an error
naming the file, key and row, or, when the user asks for it (``bad_embeddings="drop"``), rows that
are left out and counted.

Such rows cannot be normalised: a NaN poisons every batch product it enters (negCLIPLoss drops the
whole batch), faiss rejects them, and a zero row has no direction to cluster or compare.
"""

from __future__ import annotations

import numpy as np

from clipsift.errors import PoolError

BAD_EMBEDDING_POLICIES = ("error", "drop")


_MAGNITUDE = {  # float dtype -> (unsigned view, mask of the magnitude bits, smallest non-finite magnitude)
    np.dtype(np.float16): (np.uint16, 0x7FFF, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0x7F800000),
    np.dtype(np.float64): (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}
_BLOCK = 8192  # rows per pass: bounds the temporary to a few MB


def bad_embedding_rows(emb: np.ndarray) -> np.ndarray:
    """Boolean mask of rows that hold a NaN/inf or are all zero.

    Reads the IEEE bits: a row's largest magnitude (sign bit cleared) is at least the exponent's
    all-ones pattern exactly when the row holds a non-finite value, and is 0 exactly when every
    entry is +-0. One integer max per row, several times faster than a float16 norm.
    """
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-d, got shape {emb.shape}")
    view, mask, inf = _MAGNITUDE.get(emb.dtype, (None, None, None))
    if view is None:  # other dtypes: plain float arithmetic
        x = emb.astype(np.float64)
        return ~np.isfinite(x).all(axis=1) | ~(x != 0).any(axis=1)
    bits = np.ascontiguousarray(emb).view(view)
    out = np.empty(len(emb), dtype=bool)
    for start in range(0, len(emb), _BLOCK):
        top = (bits[start : start + _BLOCK] & view(mask)).max(axis=1, initial=0)
        out[start : start + _BLOCK] = (top >= inf) | (top == 0)
    return out


def screen_embeddings(
    emb: np.ndarray, *, source: str, key: str, policy: str = "error", rows: np.ndarray | None = None
) -> np.ndarray | None:
    """Check ``emb`` by the rule above.

    Returns ``None`` when every row is usable; with ``policy="drop"`` returns the boolean mask of
    rows to keep; with ``policy="error"`` raises :class:`PoolError` naming ``source`` (a file),
    ``key`` and the first bad row (``rows`` maps positions in ``emb`` to the row numbers the user
    sees, e.g. rows of the shard).
    """
    if policy not in BAD_EMBEDDING_POLICIES:
        raise ValueError(f"bad_embeddings must be one of {BAD_EMBEDDING_POLICIES}, got {policy!r}")
    bad = bad_embedding_rows(emb)
    if not bad.any():
        return None
    if policy == "drop":
        return ~bad
    first = int(np.flatnonzero(bad)[0])
    row = int(rows[first]) if rows is not None else first
    vec = np.asarray(emb[first], dtype=np.float64)
    what = "non-finite values" if not np.isfinite(vec).all() else "zero norm"
    raise PoolError(
        f"{source}: key {key!r} row {row} has {what} ({int(bad.sum())} such row(s)); "
        "fix or re-download the file, or pass --bad-embeddings drop to leave such rows out (counted in the manifest)"
    )


class DropCounts(dict):
    """Rows left out while reading, by reason: a plain dict for the manifest, which counts each
    shard row once however many passes read it (k-means sample, then assignment, say)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rows: dict = {}

    def add_rows(self, reason: str, shard_rank: int, rows: np.ndarray) -> None:
        seen = self._rows.setdefault((reason, shard_rank), set())
        before = len(seen)
        seen.update(int(r) for r in rows)
        if len(seen) > before:
            self[reason] = self.get(reason, 0) + len(seen) - before
