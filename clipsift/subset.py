"""DataComp subset files: read (.npy or raw 16-byte records), write sorted with a manifest, check,
and combine by sorted merge."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsift.errors import SubsetError
from clipsift.io import atomic_pair, atomic_write, file_sha256, output_lock
from clipsift.uids import (
    UID_DTYPE,
    count_duplicates,
    first_unsorted,
    isin_sorted,
    records_to_hex,
    sort_records,
    unique_sorted,
)

NPY_MAGIC = b"\x93NUMPY"


def subset_path(path: str | os.PathLike) -> Path:
    """DataComp's ``np.save`` appends ``.npy`` when the name lacks it; so do we."""
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest lives beside the subset as ``FILE.json``."""
    return Path(f"{subset_path(path)}.json")


def read_subset(path: str | os.PathLike) -> np.ndarray:
    """Read a subset file as the resharder does: ``.npy`` memory-mapped, else raw records."""
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"{path}: subset file not found")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise SubsetError(f"{path}: cannot read the subset file ({exc.strerror}); check its permissions") from exc
    if magic == NPY_MAGIC:
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise SubsetError(f"{path}: unreadable .npy ({exc}); rewrite it with np.save") from exc
        if arr.dtype != UID_DTYPE or arr.ndim != 1:
            raise SubsetError(
                f"{path}: array has dtype {arr.dtype} and shape {arr.shape}; DataComp needs a 1-d "
                "np.dtype('u8,u8') array (fields f0, f1 little-endian); convert with clipsift.uids.hex_to_records"
            )
        return arr
    size = path.stat().st_size
    if size == 0:
        # an empty file is what a crashed or truncated write leaves: never read it as "no uids"
        raise SubsetError(
            f"{path}: empty file (0 bytes), not a subset; an empty subset is a .npy holding 0 records "
            "(np.save(path, np.empty(0, 'u8,u8')))"
        )
    if size % UID_DTYPE.itemsize:
        raise SubsetError(f"{path}: {size} bytes is not a whole number of 16-byte uid records and not .npy")
    return np.memmap(path, dtype=UID_DTYPE, mode="r")


def write_subset(path: str | os.PathLike, uids: np.ndarray, manifest: dict | None = None) -> Path:
    """Sort (duplicates kept) and ``np.save`` atomically; write ``FILE.json`` beside it.

    The manifest gets ``file_sha256`` (the exact bytes of the .npy) and is written as a pair with
    the .npy (:func:`clipsift.io.atomic_pair`); an old manifest beside ``path`` is removed even when
    ``manifest`` is None, since it would describe another file.
    """
    path = subset_path(path)
    arr = sort_records(np.asarray(uids))
    if manifest is None:
        with atomic_pair(path, manifest_path(path), suffix=".npy") as (tmp, _):
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
        return path
    with output_lock(path), atomic_pair(path, manifest_path(path), suffix=".npy") as (tmp, mtmp):
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
        write_manifest_file(mtmp, {**manifest, "file_sha256": file_sha256(tmp)})
    return path


def write_manifest_file(path: str | os.PathLike, manifest: dict) -> None:
    """Write a manifest as JSON at ``path`` (a temporary name of :func:`atomic_pair`)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, default=str)
        fh.write("\n")


def write_uid_text(path: str | os.PathLike, uids: np.ndarray) -> None:
    """Plain-text listing (one hex uid per line), for humans and other tools."""
    with atomic_write(path, "w", encoding="ascii") as fh:
        if len(uids):
            fh.write("\n".join(records_to_hex(uids)))
            fh.write("\n")


@dataclass
class SubsetReport:
    """What ``clipsift subset check`` reports."""

    path: str
    count: int
    dtype: str
    sorted: bool
    first_unsorted: int
    duplicates: int
    missing_from_pool: int | None
    pool_rows: int | None
    manifest: str | None = None  # FILE.json when present
    manifest_status: str = "absent"  # absent | verified | unverified | mismatch | unreadable
    manifest_problem: str | None = None  # one line when the manifest does not describe the file

    @property
    def ok(self) -> bool:
        return self.sorted and (self.missing_from_pool in (None, 0)) and self.manifest_status not in ("mismatch", "unreadable")


def verify_manifest(path: str | os.PathLike, arr: np.ndarray | None = None) -> tuple[str | None, str, str | None]:
    """Does ``FILE.json`` describe ``FILE``? Returns (manifest path or None, status, problem line).

    ``file_sha256`` (written since manifests name their file) is checked against the file's bytes;
    older manifests are checked by ``uids_sha256`` (the record bytes) and ``output_count``.
    """
    path = Path(path)
    mpath = Path(f"{path}.json")
    if not mpath.exists():
        return None, "absent", None
    try:
        with open(mpath, encoding="utf-8") as fh:
            manifest = json.load(fh)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:
        why = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:120]
        return str(mpath), "unreadable", f"{mpath}: manifest unreadable ({why}); rerun the command that wrote {path.name}"
    mismatch = f"{path}: does not match its manifest {mpath} ({{}}); the two come from different runs or the file changed: rerun the command that wrote it"
    want = manifest.get("file_sha256")
    if isinstance(want, str):
        got = file_sha256(path)
        if got != want:
            return str(mpath), "mismatch", mismatch.format(f"sha256 {got[:12]}... != {want[:12]}...")
        return str(mpath), "verified", None
    count, digest = manifest.get("output_count"), manifest.get("uids_sha256")
    if arr is None:
        arr = read_subset(path)
    if isinstance(count, int) and count != len(arr):
        return str(mpath), "mismatch", mismatch.format(f"{len(arr)} uids, manifest says {count}")
    if isinstance(digest, str):
        got = hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8)).hexdigest() if len(arr) else hashlib.sha256(b"").hexdigest()
        if got != digest:
            return str(mpath), "mismatch", mismatch.format("uids_sha256 differs")
        return str(mpath), "verified", None
    return str(mpath), "unverified", None


def check_subset(path: str | os.PathLike, pool=None, executor=None) -> SubsetReport:
    """Dtype, sortedness, duplicates, (with a pool) how many uids the pool lacks, and whether the
    manifest beside the file describes it."""
    arr = read_subset(path)
    mpath, status, problem = verify_manifest(path, arr)
    bad = first_unsorted(arr)
    srt = arr if bad < 0 else sort_records(np.asarray(arr))
    missing = pool_rows = None
    if pool is not None:
        from clipsift.executor import map_shards

        uniq = unique_sorted(np.asarray(srt))
        found = 0
        for n in map_shards(pool, _count_found, executor=executor, candidates=uniq, desc="check"):
            found += n
        missing = len(uniq) - found
        pool_rows = pool.num_rows
    return SubsetReport(
        str(path), len(arr), str(arr.dtype), bad < 0, bad, count_duplicates(srt), missing, pool_rows, mpath, status, problem
    )


def _count_found(batch) -> int:
    return len(batch)


def _unique(path) -> np.ndarray:
    return unique_sorted(sort_records(np.asarray(read_subset(path))))


def combine(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Set algebra on uid arrays (result sorted, unique): ``intersect``, ``union`` or ``diff`` (a - b)."""
    a = unique_sorted(sort_records(np.asarray(a)))
    b = unique_sorted(sort_records(np.asarray(b)))
    if op == "intersect":
        return a[isin_sorted(a, b)]
    if op == "diff":
        return a[~isin_sorted(a, b)]
    if op == "union":
        return unique_sorted(sort_records(np.concatenate([a, b])))
    raise SubsetError(f"unknown subset operation {op!r}; use intersect, union or diff")


def distinct_chunks(chunks) -> Iterator[np.ndarray]:
    """Sorted record chunks without repeats, also across chunk edges."""
    last = None
    for chunk in chunks:
        chunk = unique_sorted(np.asarray(chunk, dtype=UID_DTYPE))
        if last is not None and len(chunk) and chunk["f0"][0] == last["f0"] and chunk["f1"][0] == last["f1"]:
            chunk = chunk[1:]
        if len(chunk):
            last = chunk[-1].copy()
            yield chunk


def combine_streams(op: str, a_chunks, b_chunks) -> Iterator[np.ndarray]:
    """:func:`combine` over two streams of sorted record chunks, in bounded memory: each round
    takes every record up to the smaller of the two buffers' last keys (both streams are complete
    up to it), so the result streams out sorted and unique."""
    if op not in ("intersect", "union", "diff"):
        raise SubsetError(f"unknown subset operation {op!r}; use intersect, union or diff")
    streams = [distinct_chunks(a_chunks), distinct_chunks(b_chunks)]
    bufs = [np.empty(0, UID_DTYPE), np.empty(0, UID_DTYPE)]
    done = [False, False]
    while True:
        for i in (0, 1):
            while not done[i] and not len(bufs[i]):
                nxt = next(streams[i], None)
                done[i] = nxt is None
                if nxt is not None:
                    bufs[i] = nxt
        if not len(bufs[0]) and not len(bufs[1]):
            return
        lasts = [b[-1:] for i, b in enumerate(bufs) if not done[i]]
        bound = min(lasts, key=lambda r: (int(r["f0"][0]), int(r["f1"][0]))) if lasts else None
        cut = [len(b) if bound is None else _count_le(b, bound) for b in bufs]
        out = combine(op, bufs[0][: cut[0]], bufs[1][: cut[1]])
        bufs = [bufs[0][cut[0] :], bufs[1][cut[1] :]]
        if len(out):
            yield out


def _count_le(sorted_records: np.ndarray, bound: np.ndarray) -> int:
    """How many records are <= ``bound`` (a one-record array), by (hi, lo)."""
    hi, lo = sorted_records["f0"], sorted_records["f1"]
    b_hi, b_lo = bound["f0"][0], bound["f1"][0]
    return int(np.searchsorted(hi, b_hi, side="left") + np.count_nonzero((hi == b_hi) & (lo <= b_lo)))


def combine_files(op: str, paths: list[str | os.PathLike]) -> np.ndarray:
    """Fold ``combine`` over several subset files, left to right."""
    result = _unique(paths[0])
    for p in paths[1:]:
        result = combine(op, result, _unique(p))
    return result
