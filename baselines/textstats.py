"""Caption counts computed on the UTF-8 bytes of a whole Arrow column at once.

The rules are Python's and fastText's, reproduced byte-for-byte:

* ``len(t.split())`` — runs separated by Unicode whitespace (``str.isspace``);
* ``len(t)`` — code points;
* ``len(fasttext.tokenize(t))`` — runs of bytes other than space, ``\\n``, ``\\r``, ``\\t``, ``\\v``,
  ``\\f``, ``\\0``, plus one ``</s>`` token per ``\\n``;
* :func:`split_tokens` — the ``t.split()`` words of every row as one Arrow array (for WordNet lookups).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Code points with str.isspace() True, by UTF-8 length (checked against Python in the tests).
ASCII_SPACE = (9, 10, 11, 12, 13, 28, 29, 30, 31, 32)
UNICODE_SPACE = (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
FASTTEXT_SEP = (32, 10, 13, 9, 11, 12, 0)

_MULTI = [tuple(chr(c).encode("utf-8")) for c in UNICODE_SPACE]
_LEAD_LUT = np.zeros(256, dtype=bool)
_LEAD_LUT[[seq[0] for seq in _MULTI]] = True


def string_buffers(texts) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [n+1] starting at 0, data uint8) of a string column without nulls."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.string())
    if pa.types.is_string_view(texts.type) or pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.large_string())
        otype = np.int64
    elif pa.types.is_string(texts.type):
        otype = np.int32
    else:
        raise TypeError(f"expected a string column, got {texts.type}")
    if texts.null_count:
        raise ValueError("null caption")
    n = len(texts)
    if n == 0:
        return np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.uint8)
    offsets = np.frombuffer(texts.buffers()[1], dtype=otype)[texts.offset : texts.offset + n + 1].astype(np.int64)
    buf = texts.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.empty(0, dtype=np.uint8)
    data = data[offsets[0] : offsets[-1]]
    return offsets - offsets[0], data


def python_space_mask(data: np.ndarray) -> np.ndarray:
    """True on every byte that belongs to a ``str.isspace`` character.

    ASCII spaces (ASCII_SPACE) by comparisons, which beat a table lookup per byte; multi-byte
    spaces only where one of their lead bytes occurs, as non-ASCII text is the minority."""
    mask = (data == 32) | (data - np.uint8(9) <= 4) | (data - np.uint8(28) <= 3)  # uint8 wraps: 9-13, 28-31
    cand = np.flatnonzero(data >= 0xC2)  # lead bytes of non-ASCII characters, a superset of _MULTI's
    cand = cand[_LEAD_LUT[data[cand]]]
    if len(cand):
        for seq in _MULTI:
            k = len(seq)
            pos = cand[(data[cand] == seq[0]) & (cand + k <= len(data))]
            for j in range(1, k):
                pos = pos[data[pos + j] == seq[j]]
            for j in range(k):
                mask[pos + j] = True
    return mask


def _run_starts(sep: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """True on each byte that starts a run of non-separator bytes inside its own row."""
    starts = ~sep
    if len(sep) > 1:
        starts[1:] &= sep[:-1]
    row_start = offsets[:-1][offsets[1:] > offsets[:-1]]
    starts[row_start] = ~sep[row_start]
    return starts


def _per_row(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Number of True flags in each row; for sparse flags (positions, then one binary search per row)."""
    return np.diff(np.searchsorted(np.flatnonzero(flags), offsets))


def split_word_counts(texts) -> np.ndarray:
    """``len(t.split())`` for every row."""
    offsets, data = string_buffers(texts)
    return _per_row(_run_starts(python_space_mask(data), offsets), offsets)


def char_counts(texts) -> np.ndarray:
    """``len(t)`` (code points) for every row."""
    offsets, data = string_buffers(texts)
    return np.diff(offsets) - _per_row((data & 0xC0) == 0x80, offsets)  # bytes minus continuation bytes


def fasttext_token_counts(texts) -> np.ndarray:
    """``len(fasttext.tokenize(t))`` for every row: byte runs between fastText's 7 separators + LFs."""
    offsets, data = string_buffers(texts)
    sep = (data == 32) | (data - np.uint8(9) <= 4) | (data == 0)  # FASTTEXT_SEP: 9-13, 32, 0
    return _per_row(_run_starts(sep, offsets), offsets) + _per_row(data == 10, offsets)


def split_tokens(texts) -> tuple[pa.Array, np.ndarray]:
    """Every ``t.split()`` word of every row: (words as an Arrow string array, row of each word)."""
    offsets, data = string_buffers(texts)
    sep = python_space_mask(data)
    starts = _run_starts(sep, offsets)
    keep = ~sep
    token_id = np.cumsum(starts) - 1  # token of each byte (valid on non-separator bytes)
    lengths = np.bincount(token_id[keep], minlength=int(starts.sum())) if keep.any() else np.zeros(0, dtype=np.int64)
    tok_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=tok_offsets[1:])
    words = pa.LargeStringArray.from_buffers(
        len(lengths), pa.py_buffer(tok_offsets), pa.py_buffer(np.ascontiguousarray(data[keep]))
    )
    rows = np.searchsorted(offsets, np.flatnonzero(starts), side="right") - 1
    return words, rows


def any_per_row(flags: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Row-level OR of per-item flags."""
    return np.bincount(rows[flags], minlength=n)[:n] > 0

