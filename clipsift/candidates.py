"""Candidate rows as one mask per shard on shared storage: what a chain hands its next step.

A step's kept uids become, for every shard, the mask of its rows whose uid was kept (a uid kept once
makes every row that carries it a candidate, exactly as when candidates were one uid array). The
masks come from a shuffle join (:mod:`clipsift.shuffle`), so no process holds a pool-sized array:

1. the driver streams the kept uids (sorted) into parts partitioned by the uid's top bits;
2. one task per shard writes its ``(uid, row)`` records partitioned the same way;
3. one task per range of buckets joins the two (a search in sorted uids) and writes the rows it
   found partitioned by shard;
4. one task per shard gathers its rows into a bit mask file.

A later map step reads one small mask file per shard (``CandidateRows.mask``). Everything lives in
one folder (a local path or an fsspec URL every task can reach: the run folder when there is one).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Iterator
from functools import partial

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.log import get_logger
from clipsift.shuffle import PartFolder, ShuffleError, put_atomic, ranges_by_size, read_pieces
from clipsift.uids import UID_DTYPE, isin_sorted, unique_sorted
from clipsift.uidsort import bucket_bits, bucket_keys

log = get_logger("candidates")

ROW_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8"), ("row", "<u4")])
JOIN_ROWS = 1 << 22  # pool rows per join task (about 80 MB of records)
KEPT_CHUNK = 1 << 20  # kept uids per part the driver writes


class CandidateRows:
    """Which rows of every shard are candidates: a bit mask file per shard under ``url``.

    ``len()`` is the number of distinct candidate uids, as it was for a uid array (filters size
    their budgets by it); ``num_rows`` counts the rows they mark (a uid may sit on several rows).
    Picklable and small (tasks carry it): the per-shard counts stay in the driver.
    """

    def __init__(self, url: str, num_rows: int, digest: str, counts: np.ndarray | None = None, num_uids: int = 0):
        self.url = str(url).rstrip("/")
        self.num_rows = int(num_rows)
        self.num_uids = int(num_uids)
        self.digest = digest  # sha256 of the distinct kept uids (the candidates' identity)
        self.counts = counts

    def __len__(self) -> int:
        return self.num_uids

    def __getstate__(self):
        return {**self.__dict__, "counts": None}

    def release(self, ctx) -> None:
        """Delete the masks once the steps that read them are done, unless they live in a run
        folder (a rerun reuses them there)."""
        if ctx.run_dir is None:
            PartFolder(self.url, 1).remove()

    def _mask_url(self, rank: int) -> str:
        return f"{self.url}/masks/{rank:06d}.bits"

    def mask(self, shard) -> np.ndarray:
        """Boolean mask over the shard's rows: True for a candidate."""
        data = b"".join(read_pieces(self._mask_url(shard.rank), 1 << 20))
        bits = np.frombuffer(data, dtype=np.uint8)
        if len(bits) != (shard.num_rows + 7) // 8:
            raise ClipsiftError(f"{self._mask_url(shard.rank)}: mask of {len(bits)} bytes for {shard.num_rows} rows; rerun")
        return np.unpackbits(bits, count=shard.num_rows, bitorder="little").astype(bool)

    @classmethod
    def from_sorted_uids(cls, ctx, chunks: Iterable[np.ndarray], base_url: str, expected: int | None = None) -> CandidateRows:
        """The rows of ``ctx.pool`` whose uid occurs in ``chunks`` (sorted uid records, repeats
        allowed), as masks in the folder ``base_url-<key>`` (key: the uids and the pool), so a rerun
        (a killed chain) finds them done. Runs on ``ctx.executor``; the driver streams ``chunks`` once."""
        from clipsift.executor import _pool_identity, map_shards

        pool = ctx.pool
        bits = bucket_bits(max(pool.num_rows, int(expected or 0)))
        buckets = 1 << bits
        tmp = f"{base_url.rstrip('/')}-tmp-{uuid.uuid4().hex[:12]}"
        kept_folder = PartFolder(f"{tmp}/kept", buckets)
        try:
            names, digest, total = _write_kept(kept_folder, chunks, bits)
            key = hashlib.sha256(f"{digest}:{_pool_identity(pool)}".encode()).hexdigest()[:16]
            url = f"{base_url.rstrip('/')}-{key}"
            done = _read_done(url)
            if done is not None:
                log.info("candidates: %d rows reused from %s", done["num_rows"], url)
                return cls(url, done["num_rows"], digest, np.asarray(done["counts"], dtype=np.int64), total)
            rows = cls._join(ctx, map_shards, bits, kept_folder, names, digest, url, tmp, total)
            log.info("candidates: %d rows of %d (%d distinct uids) at %s", rows.num_rows, pool.num_rows, total, url)
            return rows
        finally:
            PartFolder(tmp, 1).remove()

    @classmethod
    def _join(cls, ctx, map_shards, bits, kept_folder, names, digest, url, tmp, num_uids) -> CandidateRows:
        pool, buckets = ctx.pool, 1 << bits
        pool_folder = PartFolder(f"{tmp}/pool", buckets)
        parts = list(map_shards(pool, partial(_write_pool_part, pool_folder, bits), executor=ctx.executor,
                                desc="candidates: bucket pool uids", bad_embeddings=ctx.bad_embeddings))
        ranks = [s.rank for s in pool.shards]
        sizes = np.zeros(buckets, dtype=np.int64)
        for p in parts:
            sizes[p.partitions] += p.counts
        pool_names = tuple(p.name for p in parts if p.rows)
        hit_folder = PartFolder(f"{tmp}/hits", max(ranks, default=0) + 1)
        ranges = ranges_by_size(sizes, JOIN_ROWS)
        join = partial(_join_range, pool_folder, pool_names, kept_folder, tuple(names), hit_folder)
        hit_names = [h for h in ctx.executor.map(join, ranges, desc="candidates: join", unit="range") if h]
        rows = cls(url, 0, digest, num_uids=num_uids)
        counts = np.zeros(len(ranks), dtype=np.int64)
        gather = partial(_write_mask, hit_folder, tuple(hit_names), rows)
        for i, n in enumerate(ctx.executor.map(gather, pool.shards, desc="candidates: masks")):
            counts[i] = n
        rows.num_rows, rows.counts = int(counts.sum()), counts
        done = {"num_rows": rows.num_rows, "digest": digest, "counts": counts.tolist()}
        put_atomic(f"{url}/done.json", [json.dumps(done).encode()])  # last: the folder is complete
        return rows


def _read_done(url: str) -> dict | None:
    """The completion marker of a finished candidates folder, or None."""
    try:
        return json.loads(b"".join(read_pieces(f"{url}/done.json", 1 << 20)))
    except (ShuffleError, ValueError):
        return None


def sorted_chunks_of(selection_or_array) -> Iterator[np.ndarray]:
    """Sorted uid records in chunks: from a Selection (streamed from disk when it has a sorter) or
    an array."""
    chunks = getattr(selection_or_array, "sorted_chunks", None)
    if chunks is not None:
        yield from chunks()
        return
    arr = np.asarray(selection_or_array)
    for start in range(0, len(arr), KEPT_CHUNK):
        yield np.ascontiguousarray(arr[start : start + KEPT_CHUNK])


def _write_kept(folder: PartFolder, chunks: Iterable[np.ndarray], bits: int) -> tuple[list[str], str, int]:
    """Distinct kept uids into parts by bucket; returns the part names, their sha256 and count."""
    h, names, total, last = hashlib.sha256(), [], 0, None
    for chunk in chunks:
        chunk = unique_sorted(np.asarray(chunk, dtype=UID_DTYPE))
        if last is not None and len(chunk) and chunk["f0"][0] == last["f0"] and chunk["f1"][0] == last["f1"]:
            chunk = chunk[1:]
        if not len(chunk):
            continue
        last = chunk[-1]
        h.update(np.ascontiguousarray(chunk).tobytes())
        name = f"kept-{len(names):06d}"
        folder.write(name, bucket_keys(chunk, bits), chunk)
        names.append(name)
        total += len(chunk)
    return names, h.hexdigest(), total


def _write_pool_part(folder: PartFolder, bits: int, batch):
    """Map step: one shard's (uid, row) records by bucket."""
    recs = np.empty(len(batch), dtype=ROW_DTYPE)
    recs["f0"], recs["f1"] = batch.uids["f0"], batch.uids["f1"]
    recs["row"] = np.arange(len(batch), dtype=np.uint32)
    return folder.write(f"{batch.shard.rank:06d}", bucket_keys(batch.uids, bits), recs)


def _as_uids(recs: np.ndarray) -> np.ndarray:
    out = np.empty(len(recs), dtype=UID_DTYPE)
    out["f0"], out["f1"] = recs["f0"], recs["f1"]
    return out


def _join_range(pool_folder: PartFolder, pool_names, kept_folder: PartFolder, kept_names, hit_folder: PartFolder,
                bucket_range) -> str | None:
    """Reduce step: pool rows of buckets ``[lo, hi)`` whose uid is kept, written by shard."""
    lo, hi = bucket_range
    recs, index = pool_folder.read_range(pool_names, lo, hi, ROW_DTYPE)
    kept = kept_folder.read_range(kept_names, lo, hi, UID_DTYPE)[0] if kept_names else np.empty(0, UID_DTYPE)
    if not len(recs) or not len(kept):
        return None
    hit = isin_sorted(_as_uids(recs), kept)  # kept parts arrive in uid order: the range is sorted
    if not hit.any():
        return None
    ranks = np.repeat(np.array([int(n) for n in pool_names], dtype=np.int64), index.rows)
    name = f"hits-{lo:06d}"
    hit_folder.write(name, ranks[hit], recs["row"][hit])
    return name


def _write_mask(hit_folder: PartFolder, hit_names, rows: CandidateRows, shard) -> int:
    """Per shard: its candidate rows as a bit mask file; returns how many."""
    found = hit_folder.read_range(hit_names, shard.rank, shard.rank + 1, np.uint32)[0] if hit_names else np.empty(0, np.uint32)
    mask = np.zeros(shard.num_rows, dtype=bool)
    mask[found] = True
    buf = io.BytesIO(np.packbits(mask, bitorder="little").tobytes())
    put_atomic(rows._mask_url(shard.rank), [buf.getbuffer()])
    return int(mask.sum())
