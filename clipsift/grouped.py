"""Rows grouped by an integer id (class, cluster) on disk, so per-group work holds one group.

``build`` runs a per-shard map step that returns each row's group id and the arrays to keep. Each
shard's rows are written as a shuffle part (:mod:`clipsift.shuffle`) partitioned by group (by
blocks of consecutive groups beyond ``MAX_PARTITIONS``, with each row's group stored beside it).
Layout tasks, one per range of groups and run by the executor, then read their groups' slice of
every part and write those groups at their place in one ``.npy`` per array; a task holds about
``LAYOUT_BYTES`` of rows at a time, however large a group is. The driver keeps only the group sizes
and the part names. Within a group, rows stay in ascending global order.

``read(g)`` memory-maps one group's slice. The store is a folder on a file system every task sees
(a shared one on a cluster): tasks write into its files, and a store opened or unpickled in a task
re-opens them from the path alone.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.log import get_logger
from clipsift.shuffle import (
    Part,
    PartFolder,
    ShuffleError,
    dtype_from_descr,
    pack,
    pwrite_all,
    ranges_by_size,
)

log = get_logger("grouped")
_META = "grouped.json"
_GROUP = "_group"  # the field holding each row's group when partitions are blocks of groups
MAX_PARTITIONS = 4096  # a part's index is 8 bytes per partition: beyond this, blocks of groups
LAYOUT_BYTES = 1 << 26  # rows a layout task reads at once (and the size of a task's group range)


def _write_part(fn, num_groups: int, block: int, folder: PartFolder, batch):
    """Map step: one shard's rows as a part partitioned by group; returns (Part, groups, counts)."""
    gid, arrays = fn(batch)
    gid = np.asarray(gid, dtype=np.int64)
    if gid.shape != (len(batch),):
        raise ClipsiftError(f"group function returned {gid.shape} ids for {len(batch)} rows")
    if len(gid) and gid.max(initial=-1) >= num_groups:
        raise ClipsiftError(f"group id {int(gid.max())} out of range [0, {num_groups})")
    if _GROUP in arrays:
        raise ClipsiftError(f"array name {_GROUP!r} is reserved by the grouped store; rename that array")
    keep = gid >= 0
    kept = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if len(arr) != len(batch):
            raise ClipsiftError(f"array {name!r} has {len(arr)} rows, shard has {len(batch)}")
        kept[name] = arr if keep.all() else arr[keep]
    gid = gid[keep]
    if block > 1:
        kept[_GROUP] = gid
    part = folder.write(f"part-{batch.shard.rank:06d}", gid // block, pack(kept))
    groups, counts = np.unique(gid, return_counts=True)
    return part, groups.astype(np.int64), counts.astype(np.int64)


def _field_mismatch(a: np.dtype, b: np.dtype) -> str:
    """The first array whose dtype or shape differs between two parts' record dtypes."""
    for name in a.names:
        if name not in b.names or a[name] != b[name]:
            return name
    return next((n for n in b.names if n not in a.names), "?")


def _lay_out(folder: PartFolder, names, dtype_text: str, files, offsets: np.ndarray, block: int, num_groups: int,
             batch_bytes: int, partitions: tuple[int, int]) -> int:
    """Layout task: groups of partitions ``[lo, hi)`` from every part (in part order), written at their
    offsets in the store's files. Reads batches of parts of about ``batch_bytes``; returns rows written."""
    lo, hi = partitions
    dtype = dtype_from_descr(dtype_text)
    index = folder.index(names, lo, hi, dtype)
    g_lo, g_hi = lo * block, min(hi * block, num_groups)
    cursor = np.array(offsets[g_lo:g_hi], dtype=np.int64)  # where each group's next rows go
    narrow = np.uint8 if g_hi - g_lo <= 256 else np.uint16 if g_hi - g_lo <= 65536 else np.int64
    fds = [(name, os.open(path, os.O_WRONLY), start) for name, path, start in files]
    try:
        for a, b in ranges_by_size(index.rows * dtype.itemsize, batch_bytes):  # consecutive parts, in order
            rows = folder.read(index, slice(a, b))
            gid = rows[_GROUP] if _GROUP in dtype.names else index.partition_of_rows(slice(a, b))
            rel = (gid - g_lo).astype(narrow)
            order = np.argsort(rel, kind="stable")  # group by group; part order and row order kept
            rows, rel = rows[order], rel[order]
            counts = np.bincount(rel, minlength=g_hi - g_lo)
            present = np.flatnonzero(counts)
            lens, dest = counts[present], cursor[present]
            src = np.cumsum(lens) - lens
            # consecutive groups whose places in the file touch are one write (all of them, when one batch holds the range)
            cut = np.flatnonzero(dest[1:] != dest[:-1] + lens[:-1]) + 1
            first, last = np.concatenate([[0], cut]), np.concatenate([cut, [len(present)]]) - 1
            runs = list(zip(src[first].tolist(), (src[last] + lens[last] - src[first]).tolist(), dest[first].tolist()))
            for name, fd, start in fds:
                col = np.ascontiguousarray(rows[name])
                row_bytes = dtype[name].itemsize
                data = memoryview(col.reshape(-1).view(np.uint8))
                for s, n, d in runs:
                    pwrite_all(fd, data[s * row_bytes : (s + n) * row_bytes], start + d * row_bytes)
            cursor[present] += lens
    finally:
        for _, fd, _ in fds:
            os.close(fd)
    if not np.array_equal(cursor, offsets[g_lo + 1 : g_hi + 1]):
        raise ShuffleError(f"{folder.url}: parts hold other rows than their map step reported; delete the store and rerun")
    return int(offsets[g_hi] - offsets[g_lo])


def _create_npy(path: Path, dtype: np.dtype, shape: tuple) -> int:
    """An ``.npy`` of the final size whose rows the layout tasks fill; returns where the data starts."""
    if shape[0] == 0:
        with open(path, "wb") as fh:  # a file object: np.save would append .npy to the name
            np.save(fh, np.empty(shape, dtype=dtype))
        return 0
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    start = out.offset
    del out
    return start


class GroupedStore:
    """Group-contiguous arrays on disk: ``sizes[g]`` rows of group g at ``offsets[g]``."""

    def __init__(self, path: Path, names: list[str], sizes: np.ndarray):
        self.path = Path(path)
        self.names = list(names)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self._maps = {n: np.load(self.path / f"{n}.npy", mmap_mode="r") for n in self.names}

    def __reduce__(self):  # into a task: re-open the files there, never copy their contents
        return type(self), (str(self.path), self.names, self.sizes)

    @property
    def num_groups(self) -> int:
        return len(self.sizes)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    def read(self, group: int, names=None) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of one group's rows (ascending global order)."""
        lo, hi = self.offsets[group], self.offsets[group + 1]
        return {n: self._maps[n][lo:hi] for n in (names or self.names)}

    def read_rows(self, group: int, start: int, stop: int, names=None) -> dict[str, np.ndarray]:
        """A block of one group's rows, for groups too large to hold at once."""
        lo = self.offsets[group]
        stop = min(stop, int(self.sizes[group]))
        return {n: self._maps[n][lo + start : lo + stop] for n in (names or self.names)}

    @classmethod
    def open(cls, path) -> GroupedStore:
        path = Path(path)
        meta_file = path / _META
        if not meta_file.is_file():
            raise ClipsiftError(f"{path}: not a complete grouped store (no {_META}); rebuild it")
        meta = json.loads(meta_file.read_text())
        return cls(path, meta["names"], np.asarray(meta["sizes"], dtype=np.int64))

    @classmethod
    def build(cls, ctx, fn, *, columns=(), keys=(), num_groups: int, path, desc: str = "group",
              max_partitions: int = MAX_PARTITIONS, layout_bytes: int = LAYOUT_BYTES) -> GroupedStore:
        """Run ``fn(batch) -> (group_ids, {name: array})`` over the pool and lay groups out on disk
        (rows with a negative group id are left out). The map runs through ``ctx.map_shards``, the
        layout as ``ctx.executor`` tasks over ranges of groups."""
        path = Path(path)
        if (path / _META).is_file():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        num_groups = int(num_groups)
        block = -(-num_groups // max(1, min(num_groups, int(max_partitions)))) if num_groups else 1
        folder = PartFolder(str(path / "_parts"), max(1, -(-num_groups // block)))
        task = partial(_write_part, fn, num_groups, block, folder)
        sizes = np.zeros(num_groups, dtype=np.int64)
        parts, dtype_text = [], None
        for part, groups, counts in ctx.map_shards(task, columns=columns, keys=keys, desc=desc):
            part = Part(*part)
            if dtype_text is None:
                dtype_text = part.dtype
            elif part.dtype != dtype_text:
                name = _field_mismatch(dtype_from_descr(dtype_text), dtype_from_descr(part.dtype))
                raise ClipsiftError(f"array {name!r}: shard parts disagree in dtype/shape")
            np.add.at(sizes, groups, counts)
            if part.rows:
                parts.append(part.name)
        dtype = dtype_from_descr(dtype_text) if dtype_text else None
        names = [n for n in dtype.names if n != _GROUP] if dtype is not None else []
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(offsets[-1])
        files = []
        for name in names:
            tmp = path / f"{name}.npy.tmp"
            files.append((name, str(tmp), _create_npy(tmp, dtype[name].base, (total, *dtype[name].shape))))
        if total:
            starts = np.arange(0, num_groups, block)
            partition_bytes = np.add.reduceat(sizes, starts) * dtype.itemsize
            lay_out = partial(_lay_out, folder, parts, dtype_text, files, offsets, block, num_groups, int(layout_bytes))
            ranges = ranges_by_size(partition_bytes, layout_bytes)
            done = sum(ctx.executor.map(lay_out, ranges, desc=f"{desc}: lay out", unit="range"))
            if done != total:
                raise ShuffleError(f"{path}: {done} rows laid out, {total} expected; delete the store and rerun")
        for name, tmp, _ in files:
            os.replace(tmp, path / f"{name}.npy")
        folder.remove()
        (path / _META).write_text(json.dumps({"names": names, "sizes": sizes.tolist()}))
        log.info("%s: %d rows in %d groups (largest %d) at %s", desc, total, num_groups, int(sizes.max(initial=0)), path)
        return cls(path, names, sizes)
