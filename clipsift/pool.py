"""DataComp pool reader: pairs ``<stem>.parquet`` with ``<stem>.npz`` and streams shards.

Follows DataComp's discovery rule (a path is a shard if ``.parquet`` occurs in it; its npz is the
text before ``.parquet`` plus ``.npz``), orders shards by path, and gives every row a global index
``offset(shard) + row``. Reads only the columns and embedding keys asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsift.embcheck import screen_embeddings
from clipsift.errors import PoolError
from clipsift.log import get_logger
from clipsift.uids import UidFormatError, hex_to_records, isin_sorted

log = get_logger("pool")

EMBEDDING_DIMS = {"b32_img": 512, "b32_txt": 512, "l14_img": 768, "l14_txt": 768}

# DataComp's columns by kind (datacomp-format.md §1); other columns are not checked
COLUMN_KINDS = {
    "uid": "string", "url": "string", "text": "string", "sha256": "string",
    "original_width": "number", "original_height": "number",
}


def column_kind(name: str) -> str | None:
    """The kind DataComp's format gives a column ("string" or "number"), None when not fixed."""
    if name in COLUMN_KINDS:
        return COLUMN_KINDS[name]
    return "number" if name.endswith("_similarity_score") else None


def type_kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return type_kind(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t):
        return "string"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_null(t):
        return "null"
    return str(t)


@dataclass(frozen=True)
class ShardInfo:
    """One parquet/npz pair; ``offset`` is the global index of its first row."""

    rank: int
    stem: str
    parquet: str
    npz: str
    num_rows: int
    offset: int
    has_npz: bool = True  # its npz file was listed beside it when the pool was opened

    @property
    def name(self) -> str:
        return self.stem.rsplit("/", 1)[-1]


@dataclass
class ShardBatch:
    """Rows of one shard (optionally restricted to candidate uids), with the requested inputs."""

    shard: ShardInfo
    uids: np.ndarray | None  # u8,u8 records (None when the step asked not to read them)
    row_mask: np.ndarray | None  # which shard rows these are (None: all of them, in order)
    table: pa.Table  # requested parquet columns, row-aligned with ``uids``
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: np.ndarray | None = None  # shard rows left out for unusable embeddings (bad_embeddings="drop")

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def rows(self) -> np.ndarray:
        """int64 positions inside the shard (built on demand: most filters never ask)."""
        rows = np.arange(self.shard.num_rows, dtype=np.int64)
        return rows if self.row_mask is None else rows[self.row_mask]

    @property
    def global_index(self) -> np.ndarray:
        return self.rows + self.shard.offset

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)

    def numpy(self, name: str, dtype=None) -> np.ndarray:
        """A column as numpy (nulls become NaN for floating columns)."""
        col = self.table.column(name)
        arr = col.to_numpy() if col.null_count == 0 else col.to_pandas().to_numpy()
        return arr.astype(dtype, copy=False) if dtype is not None else arr


def _arrow_mask(mask: np.ndarray) -> pa.Array:
    """A numpy bool mask as an Arrow boolean array, from its bits (``pa.array`` imports pandas,
    about 0.3 s in every worker process)."""
    bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def _open_folder(root: str, storage_options: dict):
    """(fsspec filesystem or None, is local, folder path, paths in it) for a pool folder.

    Local folders are listed with ``os`` (importing fsspec costs ~40 ms on every command); URLs go
    through fsspec.
    """
    if "://" not in root or root.startswith("file://"):
        path = os.path.abspath(root.removeprefix("file://") or "/")
        if not os.path.isdir(path):
            raise PoolError(f"{root}: pool directory not found; pass the DataComp metadata folder")
        try:
            with os.scandir(path) as entries:
                return None, True, path, {os.path.join(path, e.name) for e in entries}
        except OSError as exc:
            raise PoolError(f"{root}: cannot list the pool folder ({exc.strerror}); check its permissions") from exc
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **storage_options)
    if not fs.exists(path) or not fs.isdir(path):
        raise PoolError(f"{root}: pool directory not found; pass the DataComp metadata folder")
    return fs, False, path, set(fs.ls(path, detail=False))


class Pool:
    """A DataComp metadata directory (local path or any fsspec URL)."""

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = str(root).rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self._local, self._root_path, names = _open_folder(self.root, self.storage_options)
        listing = sorted(p for p in names if ".parquet" in p.rsplit("/", 1)[-1])
        if not listing:
            raise PoolError(f"{self.root}: no .parquet files; pass the DataComp metadata folder")
        _warn_strays(listing, names)
        self.schema, counts = self._footers(listing)
        shards, offset = [], 0
        for rank, (path, n) in enumerate(zip(listing, counts)):
            stem = path.split(".parquet")[0]
            shards.append(ShardInfo(rank, stem, path, stem + ".npz", n, offset, stem + ".npz" in names))
            offset += n
        self.shards: list[ShardInfo] = shards
        self.num_rows = offset
        self.reader = ShardReader(self.fs, self._local, self.schema)

    def _footers(self, paths: list[str]) -> tuple[pa.Schema, list[int]]:
        """The first shard's schema and every shard's row count, from the parquet footers.

        Remote footers are latency-bound, so they are fetched by a few threads.
        """

        def footer(path):
            if self._local and os.path.isdir(path):
                raise PoolError(f"{path}: a folder named like a shard; move it out of the pool folder")
            try:
                if self._local:  # pyarrow's native reader skips the Python file object
                    return pq.read_metadata(path)
                with self.fs.open(path, "rb") as fh:
                    return pq.ParquetFile(fh).metadata
            except Exception as exc:
                raise PoolError(f"{path}: unreadable parquet ({exc}); re-download this shard") from exc

        first = footer(paths[0])  # read once: its schema and its row count
        rest = paths[1:]
        if self._local or len(rest) < 8:
            counts = [footer(p).num_rows for p in rest]
        else:
            with ThreadPoolExecutor(8) as pool:
                counts = [m.num_rows for m in pool.map(footer, rest)]
        counts = [first.num_rows, *counts]
        if first.num_rows == 0:  # an empty shard's column types say nothing (pandas writes double)
            full = next((p for p, n in zip(paths, counts) if n), None)
            if full is not None:
                first = footer(full)
        return first.schema.to_arrow_schema(), counts

    # ---- description -------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def has_npz(self, shard: ShardInfo) -> bool:
        return shard.has_npz

    def embedding_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Keys of the first shard's npz with (shape, dtype), read from array headers only."""
        shard = self.shards[0]
        if not self.has_npz(shard):
            return {}
        out = {}
        try:
            with (open(shard.npz, "rb") if self._local else self.fs.open(shard.npz, "rb")) as fh, zipfile.ZipFile(fh) as zf:
                for name in zf.namelist():
                    with zf.open(name) as member:
                        version = np.lib.format.read_magic(member)
                        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                        shape, _, dtype = read_header(member)
                    out[name.removesuffix(".npy")] = (shape, str(dtype))
        except Exception as exc:
            raise PoolError(f"{shard.npz}: unreadable npz ({_one_line(exc)}); re-download this shard") from exc
        return out

    def fingerprint(self) -> dict:
        """Shard names and row counts plus a digest of them: identifies the pool in manifests."""
        shards = [[s.name, s.num_rows] for s in self.shards]
        digest = hashlib.sha256(repr(shards).encode()).hexdigest()[:16]
        return {"root": self.root, "num_shards": len(shards), "num_rows": self.num_rows, "digest": digest, "shards": shards}

    # ---- validation --------------------------------------------------------------------------
    def require(self, columns=(), keys=()) -> None:
        """Fail early, with one line, if a needed column or npz file is absent."""
        columns = ["uid", *[c for c in columns if c != "uid"]]
        missing = [c for c in columns if c not in self.schema.names]
        if missing:
            raise PoolError(
                f"{self.shards[0].parquet}: missing column(s) {', '.join(missing)}; "
                f"this pool has {', '.join(self.schema.names)}"
            )
        for name in columns:
            kind, actual = column_kind(name), self.schema.field(name).type
            if kind is not None and type_kind(actual) not in (kind, "null"):
                raise PoolError(
                    f"{self.shards[0].parquet}: column {name} has type {actual}, DataComp's is a {kind} column; "
                    "rewrite the pool with the column's original type"
                )
        if keys:
            for shard in self.shards:
                if not self.has_npz(shard):
                    raise PoolError(
                        f"{shard.npz}: missing embeddings file for {shard.parquet}; "
                        "download the pool with --download_npz"
                    )

    # ---- reading -----------------------------------------------------------------------------
    def read(
        self, shard: ShardInfo, columns=(), keys=(), candidates=None, bad_embeddings: str = "error",
        uids: bool = True,
    ) -> ShardBatch:
        """Read one shard's ``uid`` plus ``columns`` and npz ``keys``, restricted to ``candidates``."""
        return self.reader.read(shard, columns, keys, candidates, bad_embeddings, uids)


class ShardReader:
    """Reads one shard: what a worker process needs of a pool (the filesystem and the pool's column
    types, not the shard list), so that a task pickles to a few hundred bytes whatever the pool's size."""

    def __init__(self, fs, local: bool, schema: pa.Schema | None = None):
        self.fs = fs
        self._local = local
        self.schema = schema

    def read(
        self, shard: ShardInfo, columns=(), keys=(), candidates=None, bad_embeddings: str = "error",
        uids: bool = True,
    ) -> ShardBatch:
        """Read one shard's ``uid`` plus ``columns`` and npz ``keys``, restricted to ``candidates``
        (sorted uid records, or a :class:`~clipsift.candidates.CandidateRows` of per-shard masks).

        ``uids=False`` skips the uid column when no candidates restrict the rows (``batch.uids``
        is then None): a pass that only needs a score column reads a quarter of the bytes.
        Rows whose embeddings are non-finite or zero are an error, or left out and counted in
        ``batch.dropped`` with ``bad_embeddings="drop"`` (:mod:`clipsift.embcheck`).
        """
        by_rows = hasattr(candidates, "mask")  # CandidateRows: a mask file per shard, no uid lookup
        with_uids = uids or (candidates is not None and not by_rows) or not columns or "uid" in columns
        cols = (["uid"] if with_uids else []) + [c for c in columns if c != "uid"]
        try:
            if self._local:  # pyarrow's native reader is ~2x faster than a Python file object
                table = pq.ParquetFile(shard.parquet, pre_buffer=False).read(columns=cols, use_threads=False)
            else:
                with self.fs.open(shard.parquet, "rb") as fh:
                    table = pq.ParquetFile(fh).read(columns=cols)
        except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
            raise PoolError(f"{shard.parquet}: cannot read columns {cols} ({_one_line(exc)}); re-download this shard") from exc
        if table.num_rows != shard.num_rows:
            raise PoolError(f"{shard.parquet}: changed while reading; re-run")
        absent = [c for c in cols if c not in table.column_names]  # pyarrow skips unknown names silently
        if absent:
            raise PoolError(
                f"{shard.parquet}: missing column(s) {', '.join(absent)} that the pool's first shard has; "
                "re-download this shard (all shards share one schema)"
            )
        table = self._conform(shard, table)
        try:
            uids = hex_to_records(table.column("uid")) if with_uids else None
        except UidFormatError as exc:
            raise PoolError(f"{shard.parquet}: {exc}; uids must be 32 hex characters") from exc
        mask = None
        if candidates is not None:
            mask = candidates.mask(shard) if by_rows else isin_sorted(uids, candidates)
            uids = uids[mask] if uids is not None else None
            table = table.filter(_arrow_mask(mask))
        embeddings = {k: self._read_key(shard, k, mask) for k in keys}
        batch = ShardBatch(shard, uids, mask, table, embeddings)
        return _screen(batch, bad_embeddings) if embeddings else batch

    def _conform(self, shard: ShardInfo, table: pa.Table) -> pa.Table:
        """Give every column the pool's type where the shard's says nothing (0 rows, or all null),
        refuse a column of another kind, and refuse text that is not UTF-8 (one line each)."""
        for i, name in enumerate(table.column_names):
            col = table.column(i)
            if pa.types.is_dictionary(col.type):  # pandas categoricals: the values are what counts
                col = col.cast(col.type.value_type)
                table = table.set_column(i, name, col)
            want = self.schema.field(name).type if self.schema is not None and name in self.schema.names else col.type
            if col.type != want and (table.num_rows == 0 or pa.types.is_null(col.type)):
                table = table.set_column(i, name, pa.nulls(table.num_rows, want) if table.num_rows else pa.array([], want))
                continue
            kind = column_kind(name) or type_kind(want)
            if kind in ("string", "number") and type_kind(col.type) not in (kind, "null"):
                raise PoolError(
                    f"{shard.parquet}: column {name} has type {col.type}, expected a {kind} column "
                    f"(the pool's is {want}); rewrite this shard with the pool's column types"
                )
            if name != "uid" and type_kind(col.type) == "string":
                try:
                    col.validate(full=True)
                except pa.ArrowInvalid as exc:
                    raise PoolError(
                        f"{shard.parquet}: column {name} {_utf8_where(col, exc)} is not valid UTF-8; "
                        "re-encode the captions as UTF-8"
                    ) from exc
        return table

    def _read_key(self, shard: ShardInfo, key: str, mask: np.ndarray | None) -> np.ndarray:
        if not shard.has_npz:
            raise PoolError(f"{shard.npz}: missing embeddings file for {shard.parquet}; download the pool with --download_npz")
        try:
            with contextlib.ExitStack() as stack:
                src = shard.npz if self._local else stack.enter_context(self.fs.open(shard.npz, "rb"))
                npz = stack.enter_context(np.load(src, allow_pickle=False))
                if key not in npz.files:
                    raise PoolError(f"{shard.npz}: no key {key!r} (has {', '.join(npz.files)}); choose another embedding key")
                arr = npz[key]
        except PoolError:
            raise
        except Exception as exc:
            raise PoolError(f"{shard.npz}: unreadable npz ({_one_line(exc)}); re-download this shard") from exc
        if arr.ndim != 2:
            raise PoolError(f"{shard.npz}: {key} has shape {arr.shape}, expected (rows, width); re-download this shard")
        if arr.shape[0] != shard.num_rows:
            raise PoolError(
                f"{shard.npz}: {key} has shape {arr.shape} but {shard.parquet} has {shard.num_rows} rows; "
                "the npz is not row-aligned with its parquet, re-download the pair"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise PoolError(f"{shard.npz}: {key} has dtype {arr.dtype}, expected float16/float32")
        width = EMBEDDING_DIMS.get(key)
        if width is not None and arr.shape[1] != width:
            raise PoolError(f"{shard.npz}: {key} has width {arr.shape[1]}, DataComp's {key} has {width}; re-download this shard")
        return arr[mask] if mask is not None else arr


def _screen(batch: ShardBatch, policy: str) -> ShardBatch:
    """Apply the embedding rule to every key read; with ``drop``, restrict the batch to good rows."""
    rows = None
    keep = None
    for key, emb in batch.embeddings.items():
        if rows is None and policy == "error":
            rows = batch.rows
        ok = screen_embeddings(emb, source=batch.shard.npz, key=key, policy=policy, rows=rows)
        if ok is not None:
            keep = ok if keep is None else keep & ok
    if keep is None:
        return batch
    shard_mask = np.zeros(batch.shard.num_rows, dtype=bool)
    shard_mask[batch.rows[keep]] = True
    return ShardBatch(
        batch.shard, batch.uids[keep] if batch.uids is not None else None, shard_mask, batch.table.filter(_arrow_mask(keep)),
        {k: v[keep] for k, v in batch.embeddings.items()}, batch.rows[~keep],
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _utf8_where(col: pa.ChunkedArray, exc: BaseException) -> str:
    """'row N' from Arrow's 'Invalid UTF8 sequence at string index N' (chunk-relative), else ''."""
    import re

    m = re.search(r"string index (\d+)", str(exc))
    if not m:
        return ""
    for chunk_start, chunk in zip(np.cumsum([0, *[len(c) for c in col.chunks]]), col.chunks):
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid as e:
            m = re.search(r"string index (\d+)", str(e))
            return f"row {int(chunk_start) + int(m.group(1))}" if m else ""
    return ""


def _warn_strays(listing: list[str], names: set[str]) -> None:
    """Warn about files DataComp's discovery rule treats oddly: a name holding ``.parquet`` that
    does not end in it (``X.parquet.bak`` is read as a shard sharing ``X.npz``), and an npz
    without its parquet (never read)."""
    for path in listing:
        if not path.endswith(".parquet"):
            log.warning(
                "%s: read as a shard (DataComp's rule: the name holds '.parquet'); if it is a stray copy, "
                "move it out of the pool folder", path,
            )
    stems = {p.split(".parquet")[0] for p in listing}
    for path in sorted(names):
        if path.endswith(".npz") and path[: -len(".npz")] not in stems:
            log.warning("%s: npz without its parquet, ignored; move it out of the pool folder", path)
