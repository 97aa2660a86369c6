"""DataComp uids: 32 hex chars <-> numpy ``u8,u8`` records (hi, lo), fully vectorised.

A uid's numeric value is ``int(uid, 16)``; ``hi = int(uid[:16], 16)`` and ``lo = int(uid[16:], 16)``.
Sorting records by (hi, lo) equals the numeric order and the order of lowercase hex strings.
"""

from __future__ import annotations

import binascii
import hashlib

import numpy as np
import pyarrow as pa

from clipsift.errors import SubsetError

UID_DTYPE = np.dtype("u8,u8")
UID_HEX_LEN = 32

_HEX_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i
_HEX_CHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


class UidFormatError(ValueError):
    """Raised with the row of the first malformed uid; callers add the file name."""

    def __init__(self, row: int, value: str, reason: str):
        super().__init__(f"row {row}: uid {value!r} {reason}")
        self.row = row
        self.value = value
        self.reason = reason


def _fixed_width_bytes(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, 32) uint8 view of a string column whose values are all 32 bytes long."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if len(arr) == 0:
        return np.empty((0, UID_HEX_LEN), dtype=np.uint8)
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    if not pa.types.is_string(arr.type):
        raise UidFormatError(0, str(arr.type), "is not a string column")
    n = len(arr)
    if n == 0:
        return np.empty((0, UID_HEX_LEN), dtype=np.uint8)
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise UidFormatError(row, "None", "is null")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    bad = np.flatnonzero(np.diff(offsets) != UID_HEX_LEN)
    if bad.size:
        row = int(bad[0])
        raise UidFormatError(row, arr[row].as_py(), f"must be {UID_HEX_LEN} hex characters")
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    start = int(offsets[0])
    return data[start : start + n * UID_HEX_LEN].reshape(n, UID_HEX_LEN)


def hex_to_records(uids) -> np.ndarray:
    """Convert hex uid strings (pyarrow array, numpy or list) to a ``u8,u8`` record array.

    Raises ``UidFormatError`` naming the first bad row (null, wrong length, non-hex).
    """
    if not isinstance(uids, (pa.Array, pa.ChunkedArray)):
        uids = pa.array(np.asarray(uids, dtype=object), type=pa.string())
    raw = _fixed_width_bytes(uids)
    try:  # C-speed decoding of the whole fixed-width buffer; it rejects any non-hex byte
        packed = binascii.unhexlify(raw)
    except binascii.Error:
        _raise_first_non_hex(raw)
    return np.frombuffer(packed, dtype=">u8").astype("<u8").view(UID_DTYPE)


def _raise_first_non_hex(raw: np.ndarray) -> None:
    bad = np.flatnonzero((_HEX_LUT[raw] == 255).any(axis=1))
    row = int(bad[0])
    raise UidFormatError(row, bytes(raw[row]).decode("utf-8", "replace"), "is not hexadecimal")


def records_to_hex(records: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hex_to_records`: lowercase 32-char strings as a numpy ``U32`` array."""
    records = as_records(records)
    be = np.empty((len(records), 2), dtype=">u8")
    be[:, 0] = records["f0"]
    be[:, 1] = records["f1"]
    b = be.view(np.uint8).reshape(len(records), 16)
    chars = np.empty((len(records), 32), dtype=np.uint8)
    chars[:, 0::2] = _HEX_CHARS[b >> 4]
    chars[:, 1::2] = _HEX_CHARS[b & 15]
    return chars.view("S32").reshape(-1).astype("U32")


def uids_digest(records: np.ndarray) -> str:
    """sha256 of the record bytes: the manifest's ``uids_sha256`` (what the .npy holds after its header)."""
    return hashlib.sha256(np.ascontiguousarray(records).tobytes()).hexdigest()


def as_records(arr: np.ndarray) -> np.ndarray:
    """Check that ``arr`` has DataComp's exact dtype ``u8,u8`` (fields f0, f1, little-endian)."""
    arr = np.asarray(arr)
    if arr.dtype != UID_DTYPE:
        raise SubsetError(f"uid array has dtype {arr.dtype}, expected {UID_DTYPE} (fields f0, f1)")
    return arr


def sort_order(records: np.ndarray) -> np.ndarray:
    """Stable argsort by (hi, lo).

    Uids are hashes, so two stable 16-bit radix passes on bits 32..63 of ``hi`` order almost every
    row; the few rows that share those 32 bits are then ordered exactly by (hi, lo). This beats a
    comparison sort and is exact for any input (skewed uids only make the fix-up larger).
    """
    hi, lo = records["f0"], records["f1"]
    if len(records) < 4096:
        return np.lexsort((lo, hi))
    top = (hi >> np.uint64(32)).astype(np.uint32)
    first = np.argsort(top.astype(np.uint16), kind="stable")
    order = first[np.argsort((top >> np.uint32(16)).astype(np.uint16)[first], kind="stable")]
    top = top[order]
    tied = np.flatnonzero(top[1:] == top[:-1])
    if tied.size:
        mark = np.zeros(len(order), dtype=bool)
        mark[tied] = True
        mark[tied + 1] = True
        pos = np.flatnonzero(mark)
        sub = order[pos]
        order[pos] = sub[np.lexsort((lo[sub], hi[sub]))]
    return order


def sort_records(records: np.ndarray) -> np.ndarray:
    """Records sorted ascending by (hi, lo), duplicates kept (as DataComp's resharder needs)."""
    records = as_records(records)
    if is_sorted(records):
        return np.ascontiguousarray(records)
    return records[sort_order(records)]


def is_sorted(records: np.ndarray) -> bool:
    """True when records are in non-decreasing (hi, lo) order."""
    if len(records) < 2:
        return True
    hi, lo = records["f0"], records["f1"]
    lt = hi[1:] > hi[:-1]
    eq = hi[1:] == hi[:-1]
    return bool(np.all(lt | (eq & (lo[1:] >= lo[:-1]))))


def first_unsorted(records: np.ndarray) -> int:
    """Index i of the first record smaller than record i-1, or -1 when sorted."""
    if len(records) < 2:
        return -1
    hi, lo = records["f0"], records["f1"]
    bad = (hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))
    idx = np.flatnonzero(bad)
    return int(idx[0]) + 1 if idx.size else -1


def count_duplicates(sorted_records: np.ndarray) -> int:
    """Number of records equal to their predecessor in a sorted array."""
    if len(sorted_records) < 2:
        return 0
    hi, lo = sorted_records["f0"], sorted_records["f1"]
    return int(np.count_nonzero((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])))


def unique_sorted(sorted_records: np.ndarray) -> np.ndarray:
    """Drop repeats from a sorted record array."""
    if len(sorted_records) < 2:
        return sorted_records
    hi, lo = sorted_records["f0"], sorted_records["f1"]
    keep = np.ones(len(sorted_records), dtype=bool)
    keep[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    return sorted_records[keep]


def _keys(records: np.ndarray) -> np.ndarray:
    """Records as a 1-d array of 16-byte big-endian strings: same order, fast comparisons."""
    be = np.empty((len(records), 2), dtype=">u8")
    be[:, 0] = records["f0"]
    be[:, 1] = records["f1"]
    return be.view("S16").reshape(-1)


def isin_sorted(query: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``query`` records occur in the sorted record array ``sorted_ref``."""
    if len(sorted_ref) == 0 or len(query) == 0:
        return np.zeros(len(query), dtype=bool)
    ref = _keys(sorted_ref)
    q = _keys(query)
    pos = np.searchsorted(ref, q, side="left")
    pos_c = np.minimum(pos, len(ref) - 1)
    return (pos < len(ref)) & (ref[pos_c] == q)


def count_in_sorted(query: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    """How many times each ``query`` record occurs in ``sorted_ref`` (resharder semantics)."""
    if len(sorted_ref) == 0:
        return np.zeros(len(query), dtype=np.int64)
    ref = _keys(sorted_ref)
    q = _keys(query)
    return np.searchsorted(ref, q, side="right") - np.searchsorted(ref, q, side="left")
