"""Joining per-uid files to the pool by uid in bounded memory (a bucketed sorted merge).

Neither side is ever held whole. Both the pool's candidate uids and the file's rows are streamed
into on-disk buckets chosen by the top bits of the uid's high word (uids are hashes, so buckets
are balanced); then one bucket pair at a time is sorted and merged. Buckets come out in increasing
uid order, so the joined rows are produced sorted. Memory: one batch while spilling, then one
bucket of each side (about ``BUCKET_ROWS`` rows, 24 bytes each on the file side).

The per-shard and per-bucket steps are pure functions over arrays (:func:`pool_uids`,
:func:`merge_bucket`, :func:`reduce_duplicates`) so they port to another executor unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsift.errors import ParamError, SubsetError
from clipsift.log import get_logger
from clipsift.uids import UID_DTYPE, UidFormatError, hex_to_records, records_to_hex, sort_order
from clipsift.uidsort import bucket_bits

log = get_logger("filters.scores.join")

BUCKET_ROWS = 1 << 20  # rows per bucket (24 MiB on the file side)
MAX_BITS = 8  # at most 256 bucket files per side (open-file limits); buckets grow beyond 268M rows
READ_ROWS = 1 << 20  # rows per batch read from a parquet file
VALUE_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8"), ("v", "<f8")])
DUPLICATE_RULES = ("error", "first", "max", "min", "mean")


# ---------------------------------------------------------------- reading per-uid files


def list_parquet(path: str | os.PathLike, what: str) -> list[Path]:
    """A parquet file, or every ``*.parquet`` under a folder (sorted, recursive)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise ParamError(f"{p}: no .parquet files in this folder; give a {what} parquet file or a folder of them")
        return files
    raise ParamError(f"{p}: {what} not found; give a parquet file (or a folder of them) with a uid column")


def parquet_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _decode(path, col, start: int) -> np.ndarray:
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ParamError(f"{path}: uid is null in row {start + row}; every row needs a 32-hex uid")
    try:
        return hex_to_records(col)
    except UidFormatError as exc:
        raise ParamError(f"{path}: row {start + exc.row}: uid {exc.value!r} {exc.reason}; uids must be 32 hex characters") from None


def iter_scores(files: list[Path], column: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.dtype]]:
    """(uid records, values as float64, the column's own dtype) per batch of a score file set."""
    for path in files:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        for need in ("uid", column):
            if need not in names:
                raise ParamError(f"{path}: no column {need!r} (columns: {', '.join(names)}); a score file needs uid and {column}")
        typ = pf.schema_arrow.field(column).type
        if not (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
            raise ParamError(f"{path}: column {column!r} has type {typ}; scores must be numbers")
        dtype = np.dtype(typ.to_pandas_dtype()) if not pa.types.is_integer(typ) else np.dtype(np.float64)
        start = 0
        for batch in pf.iter_batches(batch_size=READ_ROWS, columns=["uid", column]):
            uids = _decode(path, batch.column(0), start)
            col = batch.column(1)
            vals = col.to_numpy(zero_copy_only=False).astype(np.float64) if col.null_count == 0 else np.asarray(
                col.fill_null(float("nan")).to_numpy(zero_copy_only=False), dtype=np.float64
            )
            start += len(uids)
            yield uids, vals, dtype


def iter_uid_list(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """uid records of a released subset: DataComp ``.npy`` / raw 16-byte records, a parquet with
    ``uid`` (file or folder), or a text file of 32-hex uids, one per line."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".parquet":
        for f in list_parquet(p, "uid list"):
            pf = pq.ParquetFile(f)
            if "uid" not in pf.schema_arrow.names:
                raise ParamError(f"{f}: no column 'uid' (columns: {', '.join(pf.schema_arrow.names)}); a uid list needs uid")
            start = 0
            for batch in pf.iter_batches(batch_size=READ_ROWS, columns=["uid"]):
                yield _decode(f, batch.column(0), start)
                start += batch.num_rows
        return
    if not p.is_file():
        raise ParamError(f"{p}: uid list not found; give a .npy subset, a parquet with uid, or a text file of uids")
    if p.suffix in (".txt", ".csv", ".tsv"):
        with open(p, "rb") as fh:
            start = 0
            while True:
                lines = fh.readlines(1 << 24)
                if not lines:
                    break
                words = [w.strip() for w in lines]
                words = np.asarray([w.decode("ascii", "replace") for w in words if w])
                yield _decode(p, pa.array(words, type=pa.string()), start)
                start += len(words)
        return
    try:
        arr = read_subset_any(p)
    except SubsetError as exc:
        raise ParamError(str(exc)) from None
    for s in range(0, len(arr), READ_ROWS):
        yield np.array(arr[s : s + READ_ROWS])


def read_subset_any(p: Path) -> np.ndarray:
    from clipsift.subset import read_subset

    return read_subset(p)


# ---------------------------------------------------------------- bucket spills


class BucketSpill:
    """Records appended in any order, kept on disk grouped by the top ``bits`` bits of ``f0``."""

    def __init__(self, dtype: np.dtype, bits: int, workdir, prefix: str):
        self.dtype, self.bits = np.dtype(dtype), int(bits)
        self.num_buckets = 1 << self.bits
        self.dir = Path(tempfile.mkdtemp(prefix=f"clipsift-{prefix}-", dir=workdir))
        self._files: dict[int, object] = {}
        self.count = 0

    def bucket_of(self, records: np.ndarray) -> np.ndarray:
        if not self.bits:
            return np.zeros(len(records), dtype=np.uint16)
        return (records["f0"] >> np.uint64(64 - self.bits)).astype(np.uint16)

    def add(self, records: np.ndarray) -> None:
        records = np.asarray(records)
        if records.dtype != self.dtype:
            raise TypeError(f"expected {self.dtype}, got {records.dtype}")
        if not len(records):
            return
        self.count += len(records)
        keys = self.bucket_of(records)
        order = np.argsort(keys, kind="stable")  # stable: equal uids keep their arrival (file) order
        counts = np.bincount(keys, minlength=self.num_buckets)
        grouped = records[order]
        starts = np.concatenate([[0], np.cumsum(counts)])
        for b in np.flatnonzero(counts):
            fh = self._files.get(int(b))
            if fh is None:
                fh = self._files[int(b)] = open(self.dir / f"{int(b):04d}.bin", "ab")
            grouped[starts[b] : starts[b + 1]].tofile(fh)

    def read(self, b: int) -> np.ndarray:
        fh = self._files.get(int(b))
        if fh is None:
            return np.empty(0, dtype=self.dtype)
        fh.flush()
        return np.fromfile(self.dir / f"{int(b):04d}.bin", dtype=self.dtype)

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def join_bits(*row_counts: int) -> int:
    return min(bucket_bits(max(row_counts + (0,)), BUCKET_ROWS), MAX_BITS)


def pool_uids(batch) -> np.ndarray:
    """Map step: the candidate uids of one shard."""
    return batch.uids


def spill_pool(ctx, bits: int, desc: str) -> BucketSpill:
    """Every candidate uid of the pool into a bucket spill (the pool side of a join)."""
    spill = BucketSpill(UID_DTYPE, bits, ctx.workdir, "pool")
    try:
        for uids in ctx.map_shards(pool_uids, columns=("uid",), desc=desc, threads=True):
            spill.add(np.ascontiguousarray(uids, dtype=UID_DTYPE))
    except BaseException:
        spill.close()
        raise
    return spill


# ---------------------------------------------------------------- per-bucket merge (pure)


def _keys(records: np.ndarray) -> np.ndarray:
    be = np.empty((len(records), 2), dtype=">u8")
    be[:, 0] = records["f0"]
    be[:, 1] = records["f1"]
    return be.view("S16").reshape(-1)


def sort_bucket(records: np.ndarray) -> np.ndarray:
    """Records of one bucket sorted by uid; stable, so equal uids keep their file order."""
    if len(records) < 2:
        return records
    order = sort_order(records)
    words = records.dtype.itemsize // 8  # gather whole rows as uint64 words (faster than a struct gather)
    return records.view(np.uint64).reshape(-1, words)[order].reshape(-1).view(records.dtype)


def reduce_duplicates(rows: np.ndarray, rule: str, where: str) -> tuple[np.ndarray, int]:
    """Sorted (uid, value) rows -> one row per uid by ``rule``; returns (rows, duplicate rows)."""
    if len(rows) < 2:
        return rows, 0
    same = (rows["f0"][1:] == rows["f0"][:-1]) & (rows["f1"][1:] == rows["f1"][:-1])
    dups = int(np.count_nonzero(same))
    if not dups:
        return rows, 0
    if rule == "error":
        i = int(np.flatnonzero(same)[0])
        uid = records_to_hex(rows[i : i + 1][["f0", "f1"]].astype(UID_DTYPE))[0]
        raise ParamError(
            f"{where}: uid {uid} appears more than once ({dups} repeated rows in this part of the file); "
            f"set duplicates=first, max, min or mean to combine them"
        )
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    out = rows[starts].copy()
    if rule == "max":
        out["v"] = np.maximum.reduceat(rows["v"], starts)
    elif rule == "min":
        out["v"] = np.minimum.reduceat(rows["v"], starts)
    elif rule == "mean":
        out["v"] = np.add.reduceat(rows["v"], starts) / np.diff(np.concatenate([starts, [len(rows)]]))
    return out, dups


def lookup(sorted_ref: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``sorted_ref``, found mask) of every ``query`` uid (any order).

    Searches on the 64-bit high word, then checks the low word; the rare queries whose high word
    is shared by several reference rows are searched again on the full 128-bit key.
    """
    n = len(sorted_ref)
    if not n or not len(query):
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    hi = np.ascontiguousarray(sorted_ref["f0"])
    qhi = np.ascontiguousarray(query["f0"])
    order = np.argsort(qhi)  # sorted needles: searchsorted walks forward instead of missing the cache
    pos = np.empty(len(qhi), dtype=np.intp)
    pos[order] = np.searchsorted(hi, qhi[order])
    pos_c = np.minimum(pos, n - 1)
    same_hi = (pos < n) & (hi[pos_c] == query["f0"])
    found = same_hi & (sorted_ref["f1"][pos_c] == query["f1"])
    shared = np.flatnonzero(hi[1:] == hi[:-1]) if n > 1 else np.empty(0, np.int64)
    if len(shared):  # high words repeated in the reference: exact search for the queries hitting them
        rep = np.unique(hi[shared])
        redo = np.flatnonzero(same_hi & ~found & np.isin(query["f0"], rep))
        if len(redo):
            ref, q = _keys(sorted_ref), _keys(query[redo])
            p2 = np.searchsorted(ref, q)
            p2c = np.minimum(p2, n - 1)
            ok = (p2 < n) & (ref[p2c] == q)
            pos_c[redo] = p2c
            found[redo] = ok
    return pos_c, found


def merge_bucket(pool_uids: np.ndarray, file_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value per pool uid, found mask) for pool uids (any order) against sorted unique file rows."""
    pos, found = lookup(file_rows, pool_uids)
    vals = np.where(found, file_rows["v"][pos] if len(file_rows) else np.nan, np.nan)
    return vals, found


# ---------------------------------------------------------------- the score join


@dataclass
class JoinStats:
    pool_rows: int = 0
    file_rows: int = 0
    duplicate_rows: int = 0
    missing: int = 0  # pool rows without a score in the file
    not_in_pool: int = 0  # distinct file uids that are not candidates
    first_missing: str | None = None
    dtype: str = "float64"
    extra: dict = field(default_factory=dict)

    def counters(self) -> dict:
        return {
            "pool_rows": self.pool_rows, "score_rows": self.file_rows, "score_duplicate_rows": self.duplicate_rows,
            "pool_rows_without_score": self.missing, "score_uids_not_in_pool": self.not_in_pool,
        }


def score_join(ctx, path, column: str = "score", duplicates: str = "error", unsorted_ok: bool = False) -> tuple[Iterator, JoinStats, object]:
    """Join a per-uid score file (or folder) to ``ctx``'s candidates.

    Returns (an iterator of per-bucket ``(pool uids, values float64, found mask)`` in increasing
    bucket order, the statistics filled in as it runs, a ``close()`` callable). Within a bucket
    the pool uids are sorted, unless ``unsorted_ok`` (the caller sorts later anyway).
    """
    files = list_parquet(path, "score file")
    bits = join_bits(ctx.num_candidates, parquet_rows(files))
    stats = JoinStats()
    scores = BucketSpill(VALUE_DTYPE, bits, ctx.workdir, "scores")
    pool = None
    try:
        dtypes = set()
        for uids, vals, dtype in iter_scores(files, column):
            rows = np.empty(len(uids), dtype=VALUE_DTYPE)
            rows["f0"], rows["f1"], rows["v"] = uids["f0"], uids["f1"], vals
            scores.add(rows)
            dtypes.add(dtype)
        stats.file_rows = scores.count
        stats.dtype = str(np.result_type(*dtypes)) if dtypes else "float64"
        pool = spill_pool(ctx, bits, "score join: pool uids")
        stats.pool_rows = pool.count
    except BaseException:
        scores.close()
        if pool is not None:
            pool.close()
        raise

    def buckets():
        for b in range(scores.num_buckets):
            p = pool.read(b) if unsorted_ok else sort_bucket(pool.read(b))
            f, dups = reduce_duplicates(sort_bucket(scores.read(b)), duplicates, str(path))
            stats.duplicate_rows += dups
            vals, found = merge_bucket(p, f)
            n_found = int(found.sum())
            stats.not_in_pool += len(f) - n_found  # pool uids are unique
            if n_found < len(p):
                stats.missing += len(p) - n_found
                if stats.first_missing is None:
                    stats.first_missing = str(records_to_hex(p[~found][:1])[0])
            yield p, vals, found

    def close():
        scores.close()
        pool.close()

    return buckets(), stats, close


def uid_list_join(ctx, path, unsorted_ok: bool = False) -> tuple[Iterator, dict, object]:
    """Per bucket: (candidate uids, how many times each is in the list). Bounded memory."""
    probe = Path(path)
    if probe.is_file() and probe.suffix not in (".parquet", ".txt", ".csv", ".tsv"):
        list_rows = probe.stat().st_size // 16
    elif probe.exists() and (probe.is_dir() or probe.suffix == ".parquet"):
        list_rows = parquet_rows(list_parquet(probe, "uid list"))
    else:
        list_rows = ctx.num_candidates
    bits = join_bits(ctx.num_candidates, list_rows)
    lst = BucketSpill(UID_DTYPE, bits, ctx.workdir, "uidlist")
    pool = None
    stats = {"list_rows": 0, "list_duplicate_rows": 0, "list_uids_not_in_pool": 0}
    try:
        for recs in iter_uid_list(path):
            lst.add(np.ascontiguousarray(recs, dtype=UID_DTYPE))
        stats["list_rows"] = lst.count
        pool = spill_pool(ctx, bits, "uids: pool uids")
    except BaseException:
        lst.close()
        if pool is not None:
            pool.close()
        raise

    def buckets():
        for b in range(lst.num_buckets):
            p = pool.read(b) if unsorted_ok else sort_bucket(pool.read(b))
            ref = sort_bucket(lst.read(b))
            if len(ref) > 1:
                first = np.concatenate([[True], (ref["f0"][1:] != ref["f0"][:-1]) | (ref["f1"][1:] != ref["f1"][:-1])])
                starts = np.flatnonzero(first)
                uniq, mult = ref[starts], np.diff(np.concatenate([starts, [len(ref)]]))
            else:
                uniq, mult = ref, np.ones(len(ref), dtype=np.int64)
            stats["list_duplicate_rows"] += len(ref) - len(uniq)
            pos, found = lookup(uniq, p)
            counts = np.where(found, mult[pos] if len(mult) else 0, 0)
            stats["list_uids_not_in_pool"] += len(uniq) - int(np.count_nonzero(found))
            yield p, counts

    def close():
        lst.close()
        pool.close()

    return buckets(), stats, close
