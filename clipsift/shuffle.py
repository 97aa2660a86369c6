"""A shuffle on shared storage: map tasks write one part per shard, partitioned by an integer key;
reduce tasks read one contiguous range of partitions from every part.

Why: a sorted uid file (partitions = uid top bits) and a group-contiguous store (partitions =
groups) are the same job, and doing it in tasks keeps pool-sized data out of the driver and off a
single disk. The folder is a local path, ``file://`` or any fsspec URL every task can reach.

Map side, inside a task::

    folder = PartFolder(url, num_partitions)            # picklable: travels inside the task
    part = folder.write(f"{rank:06d}", keys, records)   # -> Part (small: return it to the driver)

Reduce side, one task per range ``[lo, hi)`` of partitions (``parts``: the Part names, in shard order)::

    index = folder.index(parts, lo, hi, dtype)          # every part's row counts in the range
    rows = folder.read(index)                           # one ranged read per part, in part order

A part is one file: a fixed header (magic, partitions, rows, itemsize, dtype length), the row
offsets of every partition (int64, ``partitions + 1``), the dtype (npy ``descr``, no pickle), then
the rows as packed records, stably ordered by key. Rows of partitions ``[lo, hi)`` are one
contiguous byte range, so a reduce task does two small reads per part (header and its slice of
the offsets) and one data read. ``write`` writes under a temporary name and renames, so a killed
task leaves no file under a part's name; :meth:`PartFolder.is_complete` also checks the size
against the header (a truncated copy never reads as complete). Parts with no rows are not written.
"""

from __future__ import annotations

import ast
import os
import uuid
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.stagecache import url_fs

MAGIC = b"CSPART01"
# a part's fixed header (48 bytes, little-endian); the partition offsets follow it
_HEAD = np.dtype([("magic", "S8"), ("partitions", "<u8"), ("rows", "<u8"), ("itemsize", "<u8"), ("dtype_len", "<u8"),
                  ("reserved", "<u8")])
SUFFIX = ".part"
_WRITE_ROWS = 1 << 16  # rows gathered per write: no second part-sized copy while writing


class ShuffleError(ClipsiftError):
    """A part is missing, incomplete or does not match what the reader expects."""


class Part(NamedTuple):
    """What a map task returns for one part: its name, rows, dtype (npy descr) and the row count of
    every non-empty partition. A plain tuple of str/int/arrays, so run folders can store it."""

    name: str
    rows: int
    dtype: str
    partitions: np.ndarray  # int64 ids of the non-empty partitions, ascending
    counts: np.ndarray  # int64 rows in each of them


def dtype_descr(dtype: np.dtype) -> str:
    """A dtype as the text of its npy ``descr`` (read back with :func:`dtype_from_descr`)."""
    return repr(np.lib.format.dtype_to_descr(np.dtype(dtype)))


def dtype_from_descr(text: str) -> np.dtype:
    """Inverse of :func:`dtype_descr`; literals only, never pickle."""
    return np.lib.format.descr_to_dtype(ast.literal_eval(text))


def pack(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Several row-aligned arrays as one 1-d array of packed records (one field per array)."""
    arrays = {name: np.asarray(arr) for name, arr in arrays.items()}
    rows = {len(arr) for arr in arrays.values()}
    if len(rows) > 1:
        raise ShuffleError(f"arrays to pack have different row counts: {sorted(rows)}")
    dtype = np.dtype([(name, arr.dtype, arr.shape[1:]) for name, arr in arrays.items()])
    out = np.empty(rows.pop() if rows else 0, dtype=dtype)
    for name, arr in arrays.items():
        out[name] = arr
    return out


def ranges_by_size(sizes: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Consecutive ``[lo, hi)`` ranges covering every non-empty entry, each of at most ``target`` plus
    its last entry in total (a large entry only makes its range larger); the reduce tasks of a shuffle."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not sizes.size or not sizes.any():
        return []
    start = np.cumsum(sizes) - sizes  # where each entry begins in the concatenation
    task = start // max(1, int(target))
    cuts = np.flatnonzero(np.diff(task)) + 1
    bounds = np.concatenate([[0], cuts, [len(sizes)]])
    out = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        nz = np.flatnonzero(sizes[lo:hi])
        if nz.size:  # trim empty entries at both ends: they cost reads and hold nothing
            out.append((lo + int(nz[0]), lo + int(nz[-1]) + 1))
    return out


@dataclass(frozen=True)
class RangeIndex:
    """Where the rows of partitions ``[lo, hi)`` are in every part (what :meth:`PartFolder.read` needs)."""

    names: tuple[str, ...]
    lo: int
    hi: int
    dtype: np.dtype
    counts: np.ndarray  # (parts, hi - lo) rows per part and partition
    starts: np.ndarray  # (parts,) byte offset of each part's slice

    @property
    def rows(self) -> np.ndarray:
        """Rows of the range in each part."""
        return self.counts.sum(axis=1)

    def partition_of_rows(self, parts: slice = slice(None)) -> np.ndarray:
        """Partition id (absolute) of every row :meth:`PartFolder.read` returns for ``parts``."""
        counts = self.counts[parts]
        ids = np.tile(np.arange(self.lo, self.hi, dtype=np.int64), len(counts))
        return np.repeat(ids, counts.ravel())


@dataclass(frozen=True)
class PartFolder:
    """A folder of parts with ``num_partitions`` partitions each (picklable: travels into tasks)."""

    url: str
    num_partitions: int

    def __post_init__(self):
        object.__setattr__(self, "url", str(self.url).rstrip("/"))
        if not 1 <= int(self.num_partitions) < 1 << 40:
            raise ShuffleError(f"{self.url}: {self.num_partitions} partitions; need at least 1")

    def path(self, name: str) -> str:
        return f"{self.url}/{name}{SUFFIX}"

    def _located(self, names) -> tuple:
        """The folder's filesystem (None: local) and the path of each named part on it."""
        fs, base = url_fs(self.url)
        return fs, [f"{base}/{name}{SUFFIX}" for name in names]

    def _offsets_at(self, p: int) -> int:
        return _HEAD.itemsize + 8 * p

    def _data_start(self, dtype_len: int) -> int:
        return self._offsets_at(self.num_partitions + 1) + -(-dtype_len // 8) * 8

    # ---- map side -------------------------------------------------------------------------------
    def write(self, name: str, keys: np.ndarray, data: np.ndarray) -> Part:
        """Write ``data`` (1-d, any non-object dtype; see :func:`pack`) partitioned by ``keys``, rows
        stably ordered within each partition; atomically. Returns the :class:`Part`."""
        data = np.asarray(data)
        keys = np.asarray(keys)
        if data.ndim != 1 or keys.shape != data.shape:
            raise ShuffleError(f"{self.path(name)}: need 1-d data and one key per row, got {data.shape} and {keys.shape}")
        if data.dtype.hasobject:
            raise ShuffleError(f"{self.path(name)}: dtype {data.dtype} holds Python objects; pass numeric arrays")
        if keys.size and (not np.issubdtype(keys.dtype, np.integer) or keys.min() < 0 or keys.max() >= self.num_partitions):
            raise ShuffleError(f"{self.path(name)}: partition keys must be integers in [0, {self.num_partitions})")
        descr = dtype_descr(data.dtype)
        empty = np.zeros(0, dtype=np.int64)
        if not len(data):
            return Part(name, 0, descr, empty, empty)
        narrow = keys.astype(np.uint8 if self.num_partitions <= 256 else np.uint16 if self.num_partitions <= 65536 else np.int64)
        order = None if self.num_partitions == 1 else np.argsort(narrow, kind="stable")  # radix on 8/16-bit keys
        counts = np.bincount(narrow, minlength=self.num_partitions).astype(np.int64)
        del narrow
        dtype_bytes = descr.encode()
        head = np.array([(MAGIC, self.num_partitions, len(data), data.dtype.itemsize, len(dtype_bytes), 0)], dtype=_HEAD).tobytes()
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype("<i8")
        pad = b"\0" * (-len(dtype_bytes) % 8)
        fs, path = url_fs(self.path(name))
        tmp = f"{os.path.dirname(path)}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        _makedirs(fs, os.path.dirname(path))
        try:
            with _open(fs, tmp, "wb") as fh:
                fh.write(head)
                fh.write(offsets.tobytes())
                fh.write(dtype_bytes + pad)
                for start in range(0, len(data), _WRITE_ROWS):
                    piece = data[start : start + _WRITE_ROWS] if order is None else data[order[start : start + _WRITE_ROWS]]
                    _write_piece(fh, piece)
            _rename(fs, tmp, path)
        except BaseException:
            _remove(fs, tmp)
            raise
        nz = np.flatnonzero(counts)
        return Part(name, int(len(data)), descr, nz.astype(np.int64), counts[nz])

    # ---- checks ---------------------------------------------------------------------------------
    def is_complete(self, name: str) -> bool:
        """True when the part exists, has this folder's layout and its full size."""
        fs, path = url_fs(self.path(name))
        try:
            head = _read_ranges(fs, [path], [0], [_HEAD.itemsize])[0]
            size = os.path.getsize(path) if fs is None else fs.size(path)
        except (OSError, ShuffleError):
            return False
        try:
            _, rows, itemsize, dtype_len = self._check_head(name, head)
        except ShuffleError:
            return False
        return size == self._data_start(dtype_len) + rows * itemsize

    def _check_head(self, name: str, head: bytes) -> tuple[int, int, int, int]:
        if len(head) < _HEAD.itemsize:
            raise ShuffleError(f"{self.path(name)}: incomplete part (short header); rerun the step that writes it")
        magic, partitions, rows, itemsize, dtype_len, _ = np.frombuffer(head[: _HEAD.itemsize], dtype=_HEAD)[0].item()
        if magic != MAGIC:
            raise ShuffleError(f"{self.path(name)}: not a clipsift part file; remove it and rerun the step")
        if partitions != self.num_partitions:
            raise ShuffleError(f"{self.path(name)}: has {partitions} partitions, expected {self.num_partitions}; "
                               "remove the folder and rerun the step")
        return partitions, rows, itemsize, dtype_len

    # ---- reduce side ----------------------------------------------------------------------------
    def index(self, names, lo: int, hi: int, dtype) -> RangeIndex:
        """Row counts of partitions ``[lo, hi)`` in every part (two small reads per part)."""
        names, dtype = tuple(names), np.dtype(dtype)
        if not 0 <= lo <= hi <= self.num_partitions:
            raise ShuffleError(f"{self.url}: partition range [{lo}, {hi}) outside [0, {self.num_partitions})")
        fs, paths = self._located(names)
        o_lo, o_hi = self._offsets_at(lo), self._offsets_at(hi + 1)
        got = _read_ranges(fs, [p for p in paths for _ in (0, 1)], [v for _ in paths for v in (0, o_lo)],
                           [v for _ in paths for v in (_HEAD.itemsize, o_hi)])
        heads = np.frombuffer(b"".join(got[0::2]), dtype=_HEAD)  # the reads are checked for length
        offs = np.frombuffer(b"".join(got[1::2]), dtype="<i8").reshape(len(names), hi - lo + 1)
        want = len(dtype_descr(dtype).encode())
        for i in np.flatnonzero((heads["magic"] != MAGIC) | (heads["partitions"] != self.num_partitions)):
            self._check_head(names[i], got[2 * i])  # raises, naming the part
        for i in np.flatnonzero((heads["itemsize"] != dtype.itemsize) | (heads["dtype_len"] != want)):
            raise ShuffleError(f"{self.path(names[i])}: rows of {heads['itemsize'][i]} bytes, expected {dtype} "
                               f"({dtype.itemsize} bytes); the parts come from different steps: remove the folder and rerun")
        counts = np.diff(offs, axis=1)
        for i in np.flatnonzero((counts < 0).any(axis=1) | (offs[:, -1] > heads["rows"].astype(np.int64))):
            raise ShuffleError(f"{self.path(names[i])}: damaged part index; remove it and rerun the step")
        starts = self._data_start(want) + offs[:, 0] * dtype.itemsize
        return RangeIndex(names, lo, hi, dtype, counts, starts)

    def read(self, index: RangeIndex, parts: slice = slice(None)) -> np.ndarray:
        """Rows of the index's partition range from ``parts`` (default all), one ranged read per part,
        concatenated in part order; within a part in partition order, then the order written."""
        names = index.names[parts]
        nbytes = index.rows[parts] * index.dtype.itemsize
        starts = index.starts[parts]
        out = np.empty(int(nbytes.sum()) // max(1, index.dtype.itemsize), dtype=index.dtype)
        if not len(out):
            return out
        fs, paths = self._located(names)
        view = memoryview(out.view(np.uint8))
        _read_ranges(fs, paths, starts.tolist(), (starts + nbytes).tolist(), into=view)
        return out

    def read_range(self, names, lo: int, hi: int, dtype) -> tuple[np.ndarray, RangeIndex]:
        """``read(index(...))``: the rows of partitions ``[lo, hi)`` from every part, and the index."""
        index = self.index(names, lo, hi, dtype)
        return self.read(index), index

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        fs, path = url_fs(self.url)
        if fs is None:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        elif fs.exists(path):
            fs.rm(path, recursive=True)


def group_by_partition(rows: np.ndarray, index: RangeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Rows read for all parts of ``index``, reordered partition by partition (within a partition:
    part order, then the order written), and the row count of every partition of the range."""
    if index.hi - index.lo > 1:
        pid = index.partition_of_rows() - index.lo
        pid = pid.astype(np.uint8 if index.hi - index.lo <= 256 else np.uint16 if index.hi - index.lo <= 65536 else np.int64)
        rows = rows[np.argsort(pid, kind="stable")]
    return rows, index.counts.sum(axis=0)


# ---- storage: local files directly, anything else through fsspec -------------------------------------
def put_atomic(url: str, pieces) -> None:
    """Write the byte ``pieces`` (buffers) as the file ``url``: under a temporary name, then renamed,
    so a killed task leaves nothing under ``url``."""
    fs, path = url_fs(url)
    _makedirs(fs, os.path.dirname(path))
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with _open(fs, tmp, "wb") as fh:
            for piece in pieces:
                fh.write(piece)
        _rename(fs, tmp, path)
    except BaseException:
        _remove(fs, tmp)
        raise


def read_pieces(url: str, piece_bytes: int):
    """The bytes of the file ``url`` in pieces of at most ``piece_bytes`` (bounded memory)."""
    fs, path = url_fs(url)
    try:
        fh = _open(fs, path, "rb")
    except FileNotFoundError:
        raise ShuffleError(f"{path}: missing; rerun the step that writes it") from None
    with fh:
        while piece := fh.read(piece_bytes):
            yield piece


def _makedirs(fs, path: str) -> None:
    if fs is None:
        os.makedirs(path, exist_ok=True)
    else:
        fs.makedirs(path, exist_ok=True)


def _open(fs, path: str, mode: str):
    return open(path, mode) if fs is None else fs.open(path, mode)


def _write_piece(fh, piece: np.ndarray) -> None:
    fh.write(memoryview(np.ascontiguousarray(piece).view(np.uint8)))


def _rename(fs, tmp: str, path: str) -> None:
    if fs is None:
        os.replace(tmp, path)
    else:
        fs.mv(tmp, path)


def _remove(fs, path: str) -> None:
    try:
        if fs is None:
            os.unlink(path)
        elif fs.exists(path):
            fs.rm(path)
    except OSError:
        pass


def _read_ranges(fs, paths, starts, ends, into: memoryview | None = None) -> list[bytes]:
    """Bytes ``[start, end)`` of each file; with ``into`` they are read back to back into that buffer.
    A missing file or a short read is a :class:`ShuffleError` naming the part."""
    out, pos = [], 0
    if fs is not None:
        try:
            blobs = fs.cat_ranges(list(paths), list(starts), list(ends), on_error="raise")
        except FileNotFoundError as exc:
            raise ShuffleError(f"{exc.filename or exc}: part missing; rerun the step that writes it") from None
        for path, start, end, blob in zip(paths, starts, ends, blobs):
            if isinstance(blob, BaseException):
                raise ShuffleError(f"{path}: part unreadable ({blob}); rerun the step that writes it")
            if len(blob) != end - start:
                raise ShuffleError(f"{path}: incomplete part (short read); rerun the step that writes it")
            if into is None:
                out.append(blob)
            else:
                into[pos : pos + len(blob)] = blob
                pos += len(blob)
        return out
    fd, open_path = None, None
    try:
        for path, start, end in zip(paths, starts, ends):
            if end == start and into is not None:  # nothing of this part in the range: no open, no read
                continue
            if path != open_path:  # consecutive ranges of one file share a descriptor
                if fd is not None:
                    os.close(fd)
                    fd = None
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise ShuffleError(f"{path}: part missing; rerun the step that writes it") from None
                open_path = path
            if into is None:
                buf = bytearray(end - start)
                _pread_into(fd, memoryview(buf), start, path)
                out.append(bytes(buf))
            else:
                _pread_into(fd, into[pos : pos + end - start], start, path)
                pos += end - start
    finally:
        if fd is not None:
            os.close(fd)
    return out


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (pwrite releases the GIL and may write less than asked)."""
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _pread_into(fd: int, view: memoryview, offset: int, path: str) -> None:
    pos = 0
    while pos < len(view):
        got = os.preadv(fd, [view[pos:]], offset + pos)
        if got == 0:
            raise ShuffleError(f"{path}: incomplete part (short read); rerun the step that writes it")
        pos += got

