"""Sorted uid output at bounded memory: DataComp subsets must be sorted, pools arrive in shard order.

:class:`UidSorter` collects records in chunks of ``chunk_rows``. Each full chunk is grouped by
the top bits of ``hi`` into buckets of about ``bucket_rows`` rows (uids are hashes, so buckets are
balanced) and appended to one spill file with every bucket contiguous. At the end one bucket at a
time is read back (one read per chunk) and sorted. Memory holds about two chunks plus a few
buckets: flat up to 67M rows, where buckets pass 1024 and chunks grow so that a bucket's slice of
a chunk stays at least 256 rows (reads at the end are then at most rows / 256, not
chunks × buckets growing with the square of the pool), up to 16 MiB chunks from 268M rows on.
Skewed uids only make some buckets larger, never wrong.
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
from functools import partial
from pathlib import Path

import numpy as np

from clipsift.io import atomic_write
from clipsift.subset import subset_path
from clipsift.uids import UID_DTYPE, sort_order

BUCKET_ROWS = 1 << 16  # 1 MiB of records per bucket: sorted within the CPU caches
CHUNK_ROWS = 1 << 18  # 4 MiB of records gathered before each write to the spill file
MIN_SLICE_ROWS = 256  # rows of a bucket per chunk, at least: chunks grow past 4 MiB beyond 1024 buckets
MAX_BUCKET_BITS = 12
_WRITE_ROWS = 1 << 15  # rows gathered per write of a chunk


def bucket_bits(expected_rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """log2 of the bucket count that keeps buckets near ``bucket_rows`` rows (at most 4096 buckets)."""
    bits = 0
    while (bucket_rows << bits) < expected_rows and bits < MAX_BUCKET_BITS:
        bits += 1
    return bits


def _bucket_keys(records: np.ndarray, bits: int) -> np.ndarray:
    """Bucket of every record: the top ``bits`` bits of ``hi``, as the narrowest unsigned int."""
    return (records["f0"] >> np.uint64(64 - bits)).astype(np.uint8 if bits <= 8 else np.uint16)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (pwrite releases the GIL and may write less than asked)."""
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


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
            keys = _bucket_keys(data, self.bits)
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
            _pwrite_all(self._fd, memoryview(piece.view(np.uint8)), offset + start * UID_DTYPE.itemsize)

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
        path = subset_path(path)
        digest, file_digest = hashlib.sha256(), hashlib.sha256()
        header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False, "shape": (self.count,)}
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, header)
        file_digest.update(head.getvalue())

        def both(data):
            digest.update(data)
            file_digest.update(data)

        with atomic_write(path) as fh, ThreadPoolExecutor(1) as hasher:
            fh.write(head.getvalue())
            hashed = None
            for chunk in self.sorted_chunks():
                data = chunk.view(np.uint8)
                if hashed is not None:
                    hashed.result()
                hashed = hasher.submit(both, data)  # hashlib releases the GIL: hash while writing
                fh.write(data)
            if hashed is not None:
                hashed.result()
        self.file_sha256 = file_digest.hexdigest()  # of the exact bytes written (the manifest's file_sha256)
        return path, digest.hexdigest()

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
