"""Rows grouped by an integer id (class, cluster) on disk, so per-group work holds one group.

``build`` runs a per-shard map step that returns each row's group id and the arrays to keep;
every shard's rows are stably sorted by group and written as ``.npy`` parts; a compaction pass then
lays the groups out contiguously in one ``.npy`` per array (a counting sort over the whole pool),
holding at most one group's rows from one part at a time. Within a group, rows stay in ascending
global order. ``read(g)`` memory-maps one group's slice.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.log import get_logger, progress

log = get_logger("grouped")
_META = "grouped.json"


def _write_part(fn, num_groups: int, part_dir: str, batch):
    """Map step: group ids and arrays of one shard, stably sorted by group, saved as .npy."""
    gid, arrays = fn(batch)
    gid = np.asarray(gid, dtype=np.int64)
    if gid.shape != (len(batch),):
        raise ClipsiftError(f"group function returned {gid.shape} ids for {len(batch)} rows")
    if len(gid) and gid.max(initial=-1) >= num_groups:
        raise ClipsiftError(f"group id {int(gid.max())} out of range [0, {num_groups})")
    keep = gid >= 0
    order = np.argsort(gid[keep], kind="stable")
    counts = np.bincount(gid[keep], minlength=num_groups).astype(np.int64)
    out = Path(part_dir) / f"part-{batch.shard.rank:06d}"
    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if len(arr) != len(batch):
            raise ClipsiftError(f"array {name!r} has {len(arr)} rows, shard has {len(batch)}")
        np.save(out / f"{name}.npy", np.ascontiguousarray(arr[keep][order]))
        meta[name] = [arr.dtype.descr if arr.dtype.names else arr.dtype.str, list(arr.shape[1:])]
    np.save(out / "_counts.npy", counts)
    return counts, meta


class GroupedStore:
    """Group-contiguous arrays on disk: ``sizes[g]`` rows of group g at ``offsets[g]``."""

    def __init__(self, path: Path, names: list[str], sizes: np.ndarray):
        self.path = Path(path)
        self.names = list(names)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self._maps = {n: np.load(self.path / f"{n}.npy", mmap_mode="r") for n in self.names}

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
    def build(cls, ctx, fn, *, columns=(), keys=(), num_groups: int, path, desc: str = "group") -> GroupedStore:
        """Run ``fn(batch) -> (group_ids, {name: array})`` over the pool and lay groups out on disk."""
        path = Path(path)
        if (path / _META).is_file():
            shutil.rmtree(path)
        parts_dir = path / "_parts"
        parts_dir.mkdir(parents=True, exist_ok=True)
        task = partial(_write_part, fn, num_groups, str(parts_dir))
        results = list(ctx.map_shards(task, columns=columns, keys=keys, desc=desc))
        shards = [s.rank for s in ctx.pool.shards]
        counts = np.stack([r[0] for r in results]) if results else np.zeros((0, num_groups), np.int64)
        metas = [r[1] for r in results]
        names = list(metas[0]) if metas else []
        sizes = counts.sum(axis=0)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        total = int(offsets[-1])
        for name in names:
            parts = [np.load(parts_dir / f"part-{r:06d}" / f"{name}.npy", mmap_mode="r") for r in shards]
            sample = parts[0]
            out = np.lib.format.open_memmap(path / f"{name}.npy.tmp", mode="w+", dtype=sample.dtype, shape=(total, *sample.shape[1:]))
            cursor = offsets[:-1].copy()
            for p, part in enumerate(progress(parts, desc=f"{desc}: lay out {name}", unit="part")):
                if part.dtype != sample.dtype or part.shape[1:] != sample.shape[1:]:
                    raise ClipsiftError(f"array {name!r}: shard parts disagree in dtype/shape")
                part_offsets = np.concatenate([[0], np.cumsum(counts[p])])
                nz = np.flatnonzero(counts[p])
                for g in nz:
                    n = counts[p, g]
                    out[cursor[g] : cursor[g] + n] = part[part_offsets[g] : part_offsets[g] + n]
                    cursor[g] += n
            out.flush()
            del out
            (path / f"{name}.npy.tmp").replace(path / f"{name}.npy")
        shutil.rmtree(parts_dir)
        (path / _META).write_text(json.dumps({"names": names, "sizes": sizes.tolist()}))
        log.info("%s: %d rows in %d groups (largest %d) at %s", desc, total, num_groups, int(sizes.max(initial=0)), path)
        return cls(path, names, sizes)
