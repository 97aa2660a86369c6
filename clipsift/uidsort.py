"""Sorted uid output at bounded memory: DataComp subsets must be sorted, pools arrive in shard order.

:class:`UidSorter` collects records in chunks of ``chunk_rows``. Each full chunk is grouped by
the top bits of ``hi`` into buckets of about ``bucket_rows`` rows (uids are hashes, so buckets are
balanced) and appended to one spill file with every bucket contiguous. At the end one bucket at a
time is read back (one read per chunk) and sorted. Memory holds about two chunks plus a few
buckets: flat up to 67M rows, where buckets pass 1024 and chunks grow so that a bucket's slice of
a chunk stays at least 256 rows (reads at the end are then at most rows / 256, not
chunks × buckets growing with the square of the pool), up to 16 MiB chunks from 268M rows on.
Skewed uids only make some buckets larger, never wrong.

:class:`SortedUidParts` is the same bucketed sort spread over tasks, for pools beyond one machine:
map tasks write their kept records as parts partitioned by the same top bits
(:mod:`clipsift.shuffle`, on shared storage), one task per range of buckets reads its slice of every
part, sorts it and writes it as a file, and the driver concatenates those files into the ``.npy``
while hashing it. The bytes equal :class:`UidSorter`'s for the same records. Use::

    out = SortedUidParts(url, expected_rows, ctx.executor)  # driver; url: a folder every task reaches
    writer = out.writer                                      # picklable: pass it into the map step
    # in the task:  return writer.write(f"{batch.shard.rank:06d}", kept_records)  -> a small Part
    for part in ctx.map_shards(partial(step, writer), ...):
        out.add_part(part)                                   # O(buckets) per part, nothing pool-sized
    out.count; out.sorted_chunks(); out.to_array()
    path, uids_sha256 = out.write_npy(path); out.file_sha256
    out.close()                                              # deletes the folder
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.io import atomic_write
from clipsift.shuffle import (
    Part,
    PartFolder,
    dtype_descr,
    group_by_partition,
    put_atomic,
    pwrite_all,
    ranges_by_size,
    read_pieces,
)
from clipsift.subset import subset_path
from clipsift.uids import UID_DTYPE, sort_order

BUCKET_ROWS = 1 << 16  # 1 MiB of records per bucket: sorted within the CPU caches
CHUNK_ROWS = 1 << 18  # 4 MiB of records gathered before each write to the spill file
MIN_SLICE_ROWS = 256  # rows of a bucket per chunk, at least: chunks grow past 4 MiB beyond 1024 buckets
MAX_BUCKET_BITS = 12
_WRITE_ROWS = 1 << 15  # rows gathered per write of a chunk
TASK_ROWS = 1 << 20  # records one sort task reads and sorts at once (16 MiB; plus one bucket at most)


def bucket_bits(expected_rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """log2 of the bucket count that keeps buckets near ``bucket_rows`` rows (at most 4096 buckets)."""
    bits = 0
    while (bucket_rows << bits) < expected_rows and bits < MAX_BUCKET_BITS:
        bits += 1
    return bits


def bucket_keys(records: np.ndarray, bits: int) -> np.ndarray:
    """Bucket of every record: the top ``bits`` bits of ``hi``, as the narrowest unsigned int."""
    if not bits:
        return np.zeros(len(records), dtype=np.uint8)
    return (records["f0"] >> np.uint64(64 - bits)).astype(np.uint8 if bits <= 8 else np.uint16)


def write_sorted_npy(path: str | os.PathLike, count: int, chunks) -> tuple[Path, str, str]:
    """Write ``count`` records arriving as sorted ``chunks`` into ``path`` as ``np.save`` would (header
    1.0), atomically, hashing while writing. Returns (path, sha256 of the record bytes, sha256 of
    the file): the manifest's ``uids_sha256`` and ``file_sha256``."""
    path = subset_path(path)
    digest, file_digest = hashlib.sha256(), hashlib.sha256()
    header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False, "shape": (int(count),)}
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    file_digest.update(head.getvalue())

    def both(data):
        digest.update(data)
        file_digest.update(data)

    written = 0
    with atomic_write(path) as fh, ThreadPoolExecutor(1) as hasher:
        fh.write(head.getvalue())
        hashed = None
        for chunk in chunks:
            data = chunk.view(np.uint8)
            written += len(chunk)
            if hashed is not None:
                hashed.result()
            hashed = hasher.submit(both, data)  # hashlib releases the GIL: hash while writing
            fh.write(data)
        if hashed is not None:
            hashed.result()
        if written != count:
            raise ClipsiftError(f"{path}: {written} sorted records for a header of {count}; the sort's inputs changed, rerun")
    return path, digest.hexdigest(), file_digest.hexdigest()


class UidSorter:
    """Collect uid records in any order; read them back sorted (duplicates kept), bucket by bucket."""

    def __init__(
        self,
        expected_rows: int,
        workdir: str | os.PathLike | None = None,
        bucket_rows: int = BUCKET_ROWS,
        threads: int = 1,
        chunk_rows: int | None = None,
    ):
        self.threads = max(1, int(threads))  # buckets sorted concurrently when reading back
        self.bits = bucket_bits(max(int(expected_rows), 0), bucket_rows)
        self.num_buckets = 1 << self.bits
        if chunk_rows is None:  # keep each bucket's slice of a chunk one useful read long
            chunk_rows = max(CHUNK_ROWS, MIN_SLICE_ROWS * self.num_buckets)
        self.chunk_rows = max(1, int(chunk_rows))
        self.count = 0
        if workdir is not None:
            os.makedirs(workdir, exist_ok=True)
        self._fd, self._path = tempfile.mkstemp(prefix="clipsift-uids-", suffix=".spill", dir=workdir)
        if os.name == "posix":  # nameless from now on: a killed run leaves no spill file behind
            os.unlink(self._path)
        self._lock = threading.Lock()  # add() may be called from worker threads
        self._offset = 0
        self._pending: list[np.ndarray] = []  # records not yet written
        self._pending_rows = 0
        self._blocks: list[np.ndarray] = []  # per written chunk: byte offset of each bucket's slice
        self._counts: list[np.ndarray] = []

    def add(self, records: np.ndarray) -> None:
        """Add records in any order; safe to call from several threads."""
        records = np.asarray(records, dtype=UID_DTYPE)
        if len(records) == 0:
            return
        with self._lock:
            self._pending.append(records)
            self._pending_rows += len(records)
            self.count += len(records)
            if self._pending_rows < self.chunk_rows:
                return
            chunk, self._pending, self._pending_rows = self._pending, [], 0
        self._write_chunk(chunk)

    def _write_chunk(self, parts: list[np.ndarray]) -> None:
        """Write one chunk grouped by bucket (so a bucket is one read per chunk later)."""
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        parts.clear()  # the caller's list: the pieces are freed before the gathered copies exist
        if self.bits:
            keys = bucket_keys(data, self.bits)
            order = np.argsort(keys, kind="stable")  # a radix pass on 8/16-bit keys
            total = np.bincount(keys, minlength=self.num_buckets).astype(np.int64)
            del keys
        else:
            order, total = None, np.array([len(data)], dtype=np.int64)
        with self._lock:  # reserve a region of the spill file; equal uids are equal bytes, so order is free
            offset = self._offset
            self._offset += len(data) * UID_DTYPE.itemsize
            self._blocks.append(np.concatenate([[0], np.cumsum(total)[:-1]]) * UID_DTYPE.itemsize + offset)
            self._counts.append(total)
        step = _WRITE_ROWS
        for start in range(0, len(data), step):  # gathered and written in slices: no second chunk-sized copy
            piece = data[start : start + step] if order is None else data[order[start : start + step]]
            pwrite_all(self._fd, memoryview(piece.view(np.uint8)), offset + start * UID_DTYPE.itemsize)

    def _flush(self) -> None:
        with self._lock:
            chunk, self._pending, self._pending_rows = self._pending, [], 0
        if chunk:
            self._write_chunk(chunk)

    def sorted_chunks(self) -> Iterator[np.ndarray]:
        """Each non-empty bucket, sorted; concatenated they are the sorted records.

        With ``threads > 1`` the next buckets are read and sorted while the caller consumes one
        (numpy's sorts release the GIL); at most ``threads + 1`` buckets are in memory.
        """
        self._flush()
        if not self._counts:
            return
        starts, counts = np.stack(self._blocks), np.stack(self._counts)  # (chunks, buckets)
        buckets = [int(b) for b in np.flatnonzero(counts.sum(axis=0))]
        load = partial(self._load_sorted, starts, counts)
        if self.threads == 1 or len(buckets) == 1:
            yield from map(load, buckets)
            return
        todo = iter(buckets)
        with ThreadPoolExecutor(self.threads) as pool:
            pending = deque(pool.submit(load, b) for b in itertools.islice(todo, self.threads))
            while pending:
                chunk = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(load, nxt))
                yield chunk

    def _load_sorted(self, starts: np.ndarray, counts: np.ndarray, b: int) -> np.ndarray:
        sizes = counts[:, b]
        buf = np.empty(int(sizes.sum()), dtype=UID_DTYPE)
        view = memoryview(buf.view(np.uint8))
        present = sizes > 0
        pos = 0
        # positional reads (threads share the descriptor): one per chunk holding this bucket
        for nbytes, offset in zip((sizes[present] * UID_DTYPE.itemsize).tolist(), starts[present, b].tolist()):
            end = pos + nbytes
            while pos < end:
                got = os.preadv(self._fd, [view[pos:end]], offset)
                if got == 0:
                    raise OSError(f"spill file {self._path} is shorter than written")
                pos, offset = pos + got, offset + got
        return buf[sort_order(buf)]

    def to_array(self) -> np.ndarray:
        """All records, sorted, in memory (for callers that need the whole array)."""
        chunks = list(self.sorted_chunks())
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=UID_DTYPE)

    def write_npy(self, path: str | os.PathLike) -> tuple[Path, str]:
        """Stream the sorted records into ``path`` (as ``np.save`` writes them), atomically.

        Returns the path and the sha256 of the record bytes (the manifest's ``uids_sha256``).
        """
        path, digest, self.file_sha256 = write_sorted_npy(path, self.count, self.sorted_chunks())
        return path, digest

    def close(self) -> None:
        """Delete the spill file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.name != "posix" and os.path.exists(self._path):
            os.unlink(self._path)

    def __enter__(self) -> UidSorter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ---- the same sort over tasks: parts on shared storage -------------------------------------------
_UID_DESCR = dtype_descr(UID_DTYPE)


@dataclass(frozen=True)
class UidPartWriter:
    """The map side of :class:`SortedUidParts` (picklable): one shard's kept records as one part."""

    folder: PartFolder
    bits: int

    def write(self, name: str, records: np.ndarray) -> Part:
        """Write ``records`` (any order) as part ``name`` (unique in the folder, e.g. the shard's rank).
        Returns the small :class:`~clipsift.shuffle.Part` to hand to :meth:`SortedUidParts.add_part`."""
        records = np.asarray(records, dtype=UID_DTYPE)
        return self.folder.write(name, bucket_keys(records, self.bits), records)


def sorted_range(folder: PartFolder, names, lo: int, hi: int) -> np.ndarray:
    """Buckets ``[lo, hi)`` of every part, sorted (DataComp's order, duplicates kept)."""
    records, index = folder.read_range(names, lo, hi, UID_DTYPE)
    if hi - lo == 1:
        return records[sort_order(records)]
    records, sizes = group_by_partition(records, index)  # bucket by bucket: one radix pass
    ends = np.cumsum(sizes)
    for start, end in zip((ends - sizes).tolist(), ends.tolist()):  # a bucket is sorted within the CPU caches
        if end - start > 1:
            records[start:end] = records[start:end][sort_order(records[start:end])]
    return records


def _sort_task(folder: PartFolder, names, out_url: str, bucket_range: tuple[int, int]) -> tuple[int, int, int]:
    """Reduce task: sort one range of buckets and store it as raw records; returns (lo, hi, rows)."""
    lo, hi = bucket_range
    records = sorted_range(folder, names, lo, hi)
    put_atomic(_range_url(out_url, lo, hi), [memoryview(records.view(np.uint8))])
    return lo, hi, len(records)


def _range_url(out_url: str, lo: int, hi: int) -> str:
    return f"{out_url}/{lo:05d}-{hi:05d}.uids"


class SortedUidParts:
    """Uid records written as parts by map tasks, sorted by tasks, concatenated into DataComp's ``.npy``.

    The driver keeps the part names and per-bucket totals (``num_buckets`` counts), never the records:
    its memory is flat in the pool size. A sort task holds one range of about ``task_rows`` records
    (one bucket more at most; skewed uids make a bucket, hence a task, larger, never wrong). With no
    executor, one worker or a single range the ranges are sorted in the driver, one at a time.
    """

    def __init__(self, url: str, expected_rows: int, executor=None, *, bucket_rows: int = BUCKET_ROWS,
                 task_rows: int = TASK_ROWS):
        # one sort range holds everything up to task_rows: then no partitioning (no argsort per part)
        self.bits = 0 if int(expected_rows) <= int(task_rows) else bucket_bits(max(int(expected_rows), 0), bucket_rows)
        self.num_buckets = 1 << self.bits
        self.url = str(url).rstrip("/")
        self.writer = UidPartWriter(PartFolder(f"{self.url}/parts", self.num_buckets), self.bits)
        self.executor = executor
        self.task_rows = max(1, int(task_rows))
        self.count = 0
        self.file_sha256: str | None = None
        self._names: list[str] = []  # registered parts, in order
        self._seen: set[str] = set()
        self._bucket_rows = np.zeros(self.num_buckets, dtype=np.int64)
        self._lock = threading.Lock()
        self._pending: list[np.ndarray] = []  # records added in the driver, not yet written
        self._pending_rows = 0
        self._driver_parts = 0
        self._sorted: list[tuple[int, int, int]] | None = None  # ranges sorted by tasks into files

    @property
    def folder(self) -> PartFolder:
        return self.writer.folder

    def add_part(self, part) -> None:
        """Register a part a map task wrote (a :class:`~clipsift.shuffle.Part`, or the plain tuple a
        run folder gives back)."""
        self._register(part, counted=False)

    def _register(self, part, counted: bool) -> None:
        """``counted``: the rows were already counted when :meth:`add` took them (``count`` always
        includes every row added, written or still pending, as :class:`UidSorter`'s does)."""
        part = Part(*part)
        if part.dtype != _UID_DESCR:
            raise ClipsiftError(f"{self.folder.path(part.name)}: holds {part.dtype}, not uid records; "
                                "write it with SortedUidParts.writer")
        if not part.rows:
            return
        with self._lock:
            if part.name in self._seen:
                raise ClipsiftError(f"{self.folder.path(part.name)}: part registered twice; give each map step's "
                                    "parts their own names (e.g. a step prefix before the shard rank)")
            self._seen.add(part.name)
            self._names.append(part.name)
            np.add.at(self._bucket_rows, np.asarray(part.partitions, dtype=np.int64), np.asarray(part.counts, dtype=np.int64))
            if not counted:
                self.count += int(part.rows)
            self._sorted = None

    def add(self, records: np.ndarray) -> None:
        """Add records in the driver (any order; safe from several threads): gathered into parts of
        at least ``CHUNK_ROWS``, so many small adds do not make many small parts."""
        records = np.asarray(records, dtype=UID_DTYPE)
        if not len(records):
            return
        with self._lock:
            self._pending.append(records)
            self._pending_rows += len(records)
            self.count += len(records)
            if self._pending_rows < CHUNK_ROWS:
                return
            chunk, self._pending, self._pending_rows = self._pending, [], 0
            name = self._next_driver_part()
        self._register(self.writer.write(name, np.concatenate(chunk)), counted=True)

    def _next_driver_part(self) -> str:
        self._driver_parts += 1
        return f"driver-{self._driver_parts:06d}"

    def _flush(self) -> None:
        with self._lock:
            chunk, self._pending, self._pending_rows = self._pending, [], 0
            name = self._next_driver_part() if chunk else None
        if chunk:
            self._register(self.writer.write(name, np.concatenate(chunk)), counted=True)

    def ranges(self) -> list[tuple[int, int]]:
        """The bucket ranges of the sort tasks: about ``task_rows`` records each, empty buckets skipped."""
        return ranges_by_size(self._bucket_rows, self.task_rows)

    def _in_driver(self, ranges) -> bool:
        return self.executor is None or getattr(self.executor, "workers", 1) <= 1 or len(ranges) <= 1

    def sorted_chunks(self) -> Iterator[np.ndarray]:
        """The records sorted, as consecutive chunks (each at most a range or ``CHUNK_ROWS`` records)."""
        self._flush()
        ranges = self.ranges()
        names = list(self._names)
        if self._in_driver(ranges):
            for lo, hi in ranges:
                yield sorted_range(self.folder, names, lo, hi)
            return
        if self._sorted is not None:  # sorted by an earlier pass
            for lo, hi, _ in self._sorted:
                yield from self._read_sorted(lo, hi)
            return
        task = partial(_sort_task, self.folder, names, f"{self.url}/sorted")
        done = []
        for lo, hi, rows in self.executor.map(task, ranges, desc="sort uids", unit="range"):
            done.append((lo, hi, rows))  # ranges arrive in order: stream each while later ones sort
            yield from self._read_sorted(lo, hi)
        self._sorted = done

    def _read_sorted(self, lo: int, hi: int) -> Iterator[np.ndarray]:
        piece = CHUNK_ROWS * UID_DTYPE.itemsize
        for data in read_pieces(_range_url(f"{self.url}/sorted", lo, hi), piece):
            yield np.frombuffer(data, dtype=UID_DTYPE)

    def to_array(self) -> np.ndarray:
        """All records, sorted, in memory (for callers that need the whole array)."""
        chunks = list(self.sorted_chunks())
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=UID_DTYPE)

    def write_npy(self, path: str | os.PathLike) -> tuple[Path, str]:
        """Stream the sorted records into ``path`` (as ``np.save`` writes them: :class:`UidSorter`'s
        bytes), atomically. Returns the path and the sha256 of the record bytes (``uids_sha256``);
        ``file_sha256`` is set to the sha256 of the file."""
        self._flush()
        path, digest, self.file_sha256 = write_sorted_npy(path, self.count, self.sorted_chunks())
        return path, digest

    def close(self) -> None:
        """Delete the parts and sorted ranges (the whole folder)."""
        PartFolder(self.url, 1).remove()

    def __enter__(self) -> SortedUidParts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
