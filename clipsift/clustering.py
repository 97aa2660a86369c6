"""Spherical k-means over pool embeddings, in bounded memory: the engine behind SemDeDup, SSP and DBP.

Four steps, each usable alone (another filter can reuse them for a k-means partition):

1. :func:`training_sample` streams the pool once and keeps the ``m`` rows with the smallest uids
   (uids are hashes, so this is a uniform, seed-free, layout-independent sample) — memory ``m·d``.
2. :func:`train_centroids` runs ``faiss.Kmeans`` (spherical, seeded, ``niter`` iterations) on it and
   returns unit-norm float32 centroids. Everything downstream is a deterministic function of them,
   so tests can inject centroids.
3. :func:`assign_to_store` streams the pool once more, assigns every row to its nearest centroid by
   inner product (:func:`assign`) and writes the rows grouped by cluster on disk
   (:class:`clipsift.grouped.GroupedStore`): ``gidx``, ``uid_hi``, ``uid_lo``, ``sim`` (cosine to
   the centroid), optionally the raw embedding ``emb`` and numeric parquet columns.
4. :func:`map_groups` runs per-cluster work as executor tasks over batches of clusters, each
   reopening the store from its path and reading only its clusters (ClipCov uses it for classes).

Vectors come from an :class:`EmbeddingSource`: an npz key of the pool (default ``l14_img``) or an
external uid-aligned set (:class:`ExternalEmbeddings`). Rows are cast to float32 and L2-normalised
(:func:`normalize`) row by row, so the result of a row never depends on the batch it was read in.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from clipsift.embcheck import BAD_EMBEDDING_POLICIES, bad_embedding_rows, screen_embeddings
from clipsift.errors import ClipsiftError, ParamError, PoolError
from clipsift.log import get_logger
from clipsift.params import Param
from clipsift.uids import UID_DTYPE, hex_to_records

log = get_logger("filters.clustering")

FAISS_MAX_POINTS_PER_CENTROID = 256  # faiss ClusteringParameters default: training is capped at 256·k rows


# parameters every filter built on this engine exposes (SemDeDup, SSP, DBP)
EMBEDDING_PARAMS = (
    Param("key", str, "l14_img", "pool npz embedding key that drives the clustering"),
    Param("embeddings", str, None, "external uid-aligned embeddings (.npz uids+emb or .parquet uid+emb, or a folder); overrides key"),
    Param("missing", str, "error", "pool rows absent from the external embeddings: error or drop", choices=("error", "drop")),
)
KMEANS_PARAMS = (
    Param("niter", int, 100, "k-means iterations (faiss)", min=1, max=2**31 - 1),
    Param("kmeans_seed", int, 1234, "faiss k-means seed (reference 1234)", min=-(2**31), max=2**31 - 1),
    Param("train_rows", int, None, "cap on k-means training rows (default 256·k, faiss' own cap)", min=1, max=2**62),
)

# ---- vectors ---------------------------------------------------------------------------------
def normalize(x: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """float32 unit-L2 rows: cast to float64, normalised in float64, rounded once to float32
    (spec §7.2); all-zero rows stay zero. Per row, so a row's result never depends on its batch;
    float64 temporaries are bounded by ``chunk`` rows."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"normalize expects a 2-d array, got shape {x.shape}")
    out = np.empty(x.shape, np.float32)
    for start in range(0, len(x), chunk):
        b = x[start : start + chunk].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", b, b))
        norms[norms == 0] = 1.0
        np.divide(b, norms[:, None], out=b)
        out[start : start + chunk] = b
    return out


def uid_keys(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(hi, lo) as 16-byte big-endian strings: sortable and searchable in uid order."""
    be = np.empty((len(hi), 2), dtype=">u8")
    be[:, 0] = hi
    be[:, 1] = lo
    return be.view("S16").reshape(-1)


def records(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    out = np.empty(len(hi), dtype=UID_DTYPE)
    out["f0"], out["f1"] = hi, lo
    return out


class ExternalEmbeddings:
    """An embedding set aligned with the pool by uid, e.g. DINOv2 image features.

    Accepted layouts (``path`` is a file or a folder of such files, read in name order):

    - ``.npz`` with ``uids`` (32-char hex strings) and ``emb`` (n, d) float16/float32;
    - ``.parquet`` with a ``uid`` string column and an ``emb`` column (list or fixed-size list of floats).

    :meth:`prepare` copies them once into ``workdir`` as uid-sorted ``.npy`` files that every
    worker memory-maps; lookups are binary searches. The copy is a cache keyed by a fingerprint of
    the input files (resolved path, size, modification time of each) and of the layout: another
    file, or the same file changed, gets a fresh copy, never a stale one.

    Rows that are non-finite or have zero norm (:mod:`clipsift.embcheck`) are an error naming the
    file, key ``emb`` and row (``bad_embeddings="error"``), or are left out of the pool rows they
    belong to and counted (``"drop"``); a pool row without any vector follows ``missing``.
    """

    LAYOUT = 2  # bump when the cache layout changes: old caches are then rebuilt
    DONE = "source.json"

    def __init__(self, path: str | Path, missing: str = "error", bad_embeddings: str = "error"):
        self.path = Path(path)
        if missing not in ("error", "drop"):
            raise ParamError(f"missing={missing!r}: use error or drop")
        if bad_embeddings not in BAD_EMBEDDING_POLICIES:
            raise ParamError(f"bad_embeddings={bad_embeddings!r}: use {' or '.join(BAD_EMBEDDING_POLICIES)}")
        self.missing = missing
        self.bad_embeddings = bad_embeddings
        self._dir: Path | None = None
        self._keys = self._emb = self._bad = None

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix in (".npz", ".parquet"))
            if files:
                return files
        raise ClipsiftError(f"{self.path}: no external embeddings found; give an .npz (uids, emb) or .parquet (uid, emb) file or a folder of them")

    def fingerprint(self) -> dict:
        """What the prepared copy depends on: every input file's resolved path, size and mtime, and the layout."""
        files = []
        for f in self._files():
            st = f.stat()
            files.append([str(f.resolve()), int(st.st_size), int(st.st_mtime_ns)])
        body = {"layout": self.LAYOUT, "files": files}
        body["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
        return body

    @staticmethod
    def _read(path: Path, what: str) -> np.ndarray:
        """One file's ``uids`` (as records) or ``emb`` (float (n, d)); only that part is loaded."""
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    if what == "uids":
                        return hex_to_records(z["uids"])
                    emb = z["emb"]
            else:
                import pyarrow.parquet as pq

                if what == "uids":
                    return hex_to_records(pq.read_table(path, columns=["uid"]).column("uid"))
                col = pq.read_table(path, columns=["emb"]).column("emb").combine_chunks()
                emb = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), -1)
        except ClipsiftError:
            raise
        except Exception as exc:
            raise ClipsiftError(f"{path}: unreadable external embeddings ({exc}); it needs uids/uid and emb") from exc
        emb = np.asarray(emb)
        if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
            raise ClipsiftError(f"{path}: emb must be a float (n, d) array row-aligned with the uids")
        return emb

    def prepare(self, workdir: Path) -> ExternalEmbeddings:
        """Make (or find) the uid-sorted copy under ``workdir/external-embeddings/<fingerprint>``.

        Built in a temporary folder and renamed when complete, so an interrupted build is never
        taken for a cache; copies of other fingerprints in the same folder are removed (one cache
        per slot, so a reused workdir does not grow).
        """
        fp = self.fingerprint()
        slot = Path(workdir) / "external-embeddings"
        out = slot / fp["digest"]
        if not (out / self.DONE).exists():
            slot.mkdir(parents=True, exist_ok=True)
            tmp = slot / f".build-{uuid.uuid4().hex[:12]}"
            try:
                tmp.mkdir()
                info = self._build(tmp)
                (tmp / self.DONE).write_text(json.dumps({**fp, **info}, indent=1))
                try:
                    tmp.rename(out)
                except OSError:  # another run finished the same copy first
                    if not (out / self.DONE).exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            for other in slot.iterdir():
                if other.name != out.name and not other.name.startswith(".build-"):
                    log.info("%s: removing the stale external-embeddings copy %s", self.path, other.name)
                    shutil.rmtree(other, ignore_errors=True)
        meta = json.loads((out / self.DONE).read_text())
        if meta.get("bad_rows") and self.bad_embeddings == "error":
            raise PoolError(meta["bad_message"])
        self._dir = out
        return self

    def _build(self, out: Path) -> dict:
        """Two passes, one file in memory at a time: uids first (16 B/row, sorted), then each file's
        vectors are scattered to their sorted rows of a memory-mapped output; bad rows are flagged."""
        files = self._files()
        recs = [self._read(f, "uids") for f in files]
        sizes = [len(r) for r in recs]
        keys = np.concatenate([uid_keys(r["f0"], r["f1"]) for r in recs])
        del recs
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if len(keys) > 1 and np.any(keys[1:] == keys[:-1]):
            raise ClipsiftError(f"{self.path}: a uid occurs twice in the external embeddings; deduplicate them")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        del order
        emb_out, start = None, 0
        bad_all = np.zeros(len(keys), bool)
        first_bad = None
        for f, n in zip(files, sizes):
            emb = self._read(f, "emb")
            if len(emb) != n:
                raise ClipsiftError(f"{f}: {len(emb)} vectors for {n} uids; they must be row-aligned")
            if emb_out is None:
                emb_out = np.lib.format.open_memmap(out / "emb.npy", mode="w+", dtype=emb.dtype, shape=(len(keys), emb.shape[1]))
            if emb.shape[1] != emb_out.shape[1]:
                raise ClipsiftError(f"{f}: dimension {emb.shape[1]}, other files have {emb_out.shape[1]}")
            bad = bad_embedding_rows(emb)
            dest = rank[start : start + n]
            if bad.any():
                bad_all[dest[bad]] = True
                if first_bad is None:
                    try:
                        screen_embeddings(emb, source=str(f), key="emb", policy="error")
                    except PoolError as exc:
                        first_bad = str(exc)
            srt = np.argsort(dest, kind="stable")
            emb_out[dest[srt]] = emb[srt]
            start += n
        if emb_out is None:
            raise ClipsiftError(f"{self.path}: the external embeddings hold no rows")
        emb_out.flush()
        del emb_out
        np.save(out / "keys.npy", keys)
        np.save(out / "bad.npy", bad_all)
        return {"rows": int(len(keys)), "bad_rows": int(bad_all.sum()), "bad_message": first_bad}

    def lookup(self, hi: np.ndarray, lo: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(usable mask, vectors of the usable rows, rows left out for bad vectors) for the given uids."""
        if self._dir is None:
            raise RuntimeError("ExternalEmbeddings.prepare() must run first")
        if self._keys is None:
            self._keys = np.load(self._dir / "keys.npy", mmap_mode="r")
            self._emb = np.load(self._dir / "emb.npy", mmap_mode="r")
            self._bad = np.load(self._dir / "bad.npy", mmap_mode="r")
        q = uid_keys(hi, lo)
        pos = np.searchsorted(self._keys, q)
        pos_c = np.minimum(pos, max(len(self._keys) - 1, 0))
        found = (pos < len(self._keys)) & (self._keys[pos_c] == q) if len(self._keys) else np.zeros(len(q), bool)
        if not found.all() and self.missing == "error":
            raise ClipsiftError(
                f"{self.path}: {int((~found).sum())} uid(s) of {where} have no external embedding; add them or set missing=drop"
            )
        bad = np.zeros(len(q), bool)
        bad[found] = self._bad[pos_c[found]]
        n_bad = int(bad.sum())
        if n_bad and self.bad_embeddings == "error":  # prepare() refuses such files; kept as a guard
            raise PoolError(f"{self.path}: {n_bad} uid(s) of {where} have non-finite or zero-norm embeddings; pass --bad-embeddings drop")
        found &= ~bad
        idx = pos_c[found]
        order = np.argsort(idx, kind="stable")  # read the memmap in ascending order
        vec = np.empty((len(idx), self._emb.shape[1]), dtype=self._emb.dtype)
        vec[order] = self._emb[idx[order]]
        return found, vec, n_bad

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_keys"] = state["_emb"] = state["_bad"] = None
        return state


@dataclass
class EmbeddingSource:
    """Where the clustering vectors come from: a pool npz ``key`` or an :class:`ExternalEmbeddings`."""

    key: str = "l14_img"
    external: ExternalEmbeddings | None = None

    @classmethod
    def create(cls, key: str, external: str | None, missing: str, workdir: Path, bad_embeddings: str = "error") -> EmbeddingSource:
        ext = ExternalEmbeddings(external, missing, bad_embeddings).prepare(workdir) if external else None
        return cls(key, ext)

    def keys(self) -> tuple[str, ...]:
        return () if self.external is not None else (self.key,)

    def describe(self) -> str:
        return f"external:{self.external.path}" if self.external is not None else self.key

    def read(self, batch) -> tuple[np.ndarray | None, np.ndarray, int]:
        """(row mask or None for all rows, raw vectors of the kept rows as stored, rows left out for
        bad external vectors). Pool keys arrive screened by the pool reader."""
        if self.external is None:
            return None, batch.embeddings[self.key], 0
        found, vec, n_bad = self.external.lookup(batch.uids["f0"], batch.uids["f1"], batch.shard.parquet)
        return (None if found.all() else found), vec, n_bad

    def vectors(self, batch) -> tuple[np.ndarray | None, np.ndarray]:
        """(row mask or None for all rows, raw vectors of the kept rows as stored)."""
        mask, vec, _ = self.read(batch)
        return mask, vec


# ---- training --------------------------------------------------------------------------------
def _smallest(hi: np.ndarray, lo: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` smallest uids, in ascending uid order."""
    keys = uid_keys(hi, lo)
    if len(keys) > m:
        part = np.argpartition(keys, m - 1)[:m] if m > 0 else np.empty(0, np.int64)
        return part[np.argsort(keys[part], kind="stable")]
    return np.argsort(keys, kind="stable")


def _sample_shard(source: EmbeddingSource, m: int, batch):
    mask, vec, n_bad = source.read(batch)
    hi, lo = batch.uids["f0"], batch.uids["f1"]
    if mask is not None:
        hi, lo = hi[mask], lo[mask]
    pos = _smallest(hi, lo, m)
    return hi[pos], lo[pos], np.ascontiguousarray(vec[pos]), len(hi), n_bad


def training_sample(ctx, source: EmbeddingSource, m: int, desc: str = "k-means sample",
                    counts: dict | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The ``m`` candidate rows with the smallest uids: (uid records, raw vectors, rows seen).

    One streaming pass; at most ``2m`` rows are held at any time. The rows come out in ascending
    (hi, lo) uid order whether m is below the number of rows or not (spec §7.1). Rows left out for
    bad external vectors are added to ``counts["bad_embeddings"]``.
    """
    hi = np.empty(0, np.uint64)
    lo = np.empty(0, np.uint64)
    vec, seen = None, 0
    for h, l_, v, n, n_bad in ctx.map_shards(partial(_sample_shard, source, m), keys=source.keys(), desc=desc):
        seen += n
        if n_bad and counts is not None:
            counts["bad_embeddings"] = counts.get("bad_embeddings", 0) + n_bad
        if vec is None:
            hi, lo, vec = h, l_, v
        else:
            hi, lo, vec = np.concatenate([hi, h]), np.concatenate([lo, l_]), np.concatenate([vec, v])
        if len(hi) > m:
            pos = _smallest(hi, lo, m)
            hi, lo, vec = hi[pos], lo[pos], vec[pos]
    if vec is None:
        vec = np.empty((0, 0), np.float32)
    pos = _smallest(hi, lo, len(hi))
    return records(hi[pos], lo[pos]), vec[pos], seen


def sample_size(n: int, k: int, train_rows: int | None = None) -> int:
    """faiss trains on at most 256·k rows; ``train_rows`` lowers that cap further."""
    m = min(n, FAISS_MAX_POINTS_PER_CENTROID * k)
    return m if train_rows is None else min(m, train_rows)


def train_centroids(x: np.ndarray, k: int, niter: int = 100, seed: int = 1234) -> np.ndarray:
    """Spherical k-means (faiss, seeded) on ``x`` (raw or unit rows): unit float32 centroids (k, d).

    The rows reach faiss exactly as given (after :func:`normalize`), in the given order, as one
    C-contiguous float32 array; with at most 256·k rows faiss trains on all of them. ``k`` is
    lowered to ``len(x)`` when the sample is smaller (faiss needs n ≥ k; callers warn).
    """
    import faiss

    x = normalize(x)
    n, d = x.shape
    if n == 0:
        raise ParamError("k-means: no rows to train on; the input selection is empty")
    k = min(int(k), n)
    if k == 1:
        c = x.astype(np.float64).sum(0)
        return normalize(c[None, :])
    km = faiss.Kmeans(d, k, niter=int(niter), seed=int(seed), spherical=True, verbose=False,
                      max_points_per_centroid=FAISS_MAX_POINTS_PER_CENTROID)
    km.cp.min_points_per_centroid = 1  # only silences faiss' warning; it never changes the result
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return normalize(km.centroids)


def fit_centroids(ctx, source: EmbeddingSource, k: int, *, niter: int = 100, seed: int = 1234,
                  train_rows: int | None = None, n: int | None = None, desc: str = "k-means") -> tuple[np.ndarray, dict]:
    """Sample (smallest uids) and train: (centroids, info for the manifest).

    One code path whatever m = min(n, 256·k, train_rows) is, m < n or m = n (spec §7.1): the rows
    are the m smallest uids, handed to faiss in ascending uid order. Fewer rows than ``k``
    (n < k, spec §7.4) lower k to the number of rows, with a warning; ``k_requested`` keeps the ask.
    """
    n = ctx.num_candidates if n is None else n
    if train_rows is not None and train_rows < min(int(k), n):
        raise ParamError(f"{desc}: train_rows={train_rows} is below k={k}; faiss needs at least k training rows, raise train_rows or lower k")
    m = sample_size(n, k, train_rows)
    counts: dict = {}
    _, x, seen = training_sample(ctx, source, max(m, 1), desc=f"{desc}: sample", counts=counts)
    if counts:  # external vectors left out (bad_embeddings=drop): counted once, in this first pass over the rows
        dropped = getattr(ctx, "dropped", None)
        if dropped is not None:
            for reason, c in counts.items():
                dropped[reason] = dropped.get(reason, 0) + c
        log.warning("%s: %d row(s) left out for non-finite or zero-norm external embeddings", desc, counts["bad_embeddings"])
    if 0 < len(x) < k:
        log.warning("%s: only %d row(s) for k=%d clusters; using k=%d (k_requested in the manifest)", desc, len(x), k, len(x))
    log.info("%s: training k=%d on %d rows (niter=%d, seed=%d)", desc, min(k, len(x)), len(x), niter, seed)
    centroids = train_centroids(x, k, niter=niter, seed=seed)
    return centroids, {"k": int(len(centroids)), "k_requested": int(k), "train_rows": int(len(x)),
                       "niter": int(niter), "seed": int(seed), "embeddings": source.describe(), "rows_seen": int(seen),
                       **({"bad_embeddings_dropped": counts["bad_embeddings"]} if counts else {})}


# ---- assignment ------------------------------------------------------------------------------
def _f32_dot_tolerance(d: int) -> float:
    """Twice the worst-case error of a float32 dot product of two unit d-vectors (γ_d = d·u/(1 − d·u),
    u = 2⁻²⁴), with a safety margin: a float32 score this far below the row's float32 maximum can
    still belong to the exact maximum."""
    u = 2.0**-24
    return 2.0 * 1.01 * (d + 2) * u / (1.0 - (d + 2) * u)


def assign(x_unit: np.ndarray, centroids: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by inner product and its cosine s (spec §7.2).

    The label is the exact argmax of the float64 dot products of the float32 row and the float32
    unit centroids, ties to the smallest cluster id; s = float32(that float64 dot). Plain BLAS
    float32 products in row chunks find it (what faiss' IndexFlatIP does, but safe in forked
    workers, where an OpenMP runtime used by the parent can deadlock); rows whose runner-up is
    within float32 rounding of the best are re-decided in float64 over those candidates only.
    So the result does not depend on how rows were batched or on the BLAS kernel.
    """
    x_unit = np.asarray(x_unit, dtype=np.float32)
    n, d = x_unit.shape
    labels = np.empty(n, np.int32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    c64 = c.astype(np.float64)
    tol = np.float32(_f32_dot_tolerance(d))
    for start in range(0, n, chunk):
        xb = x_unit[start : start + chunk]
        s = xb @ c.T
        lab = np.argmax(s, axis=1)
        top = s[np.arange(len(lab)), lab]
        near = s >= (top - tol)[:, None]
        amb = np.flatnonzero(near.sum(axis=1) > 1)
        if len(amb):
            rr, cc = np.nonzero(near[amb])
            v = np.empty(len(rr), np.float64)
            step = max(1, (1 << 20) // d)  # candidate pairs per float64 batch (8 MB a side)
            for p in range(0, len(rr), step):
                v[p : p + step] = np.einsum("ij,ij->i", xb[amb[rr[p : p + step]]].astype(np.float64), c64[cc[p : p + step]])
            o = np.lexsort((cc, -v, rr))  # per row: largest float64 dot, then smallest id
            first = np.ones(len(o), bool)
            first[1:] = rr[o][1:] != rr[o][:-1]
            lab[amb[rr[o][first]]] = cc[o][first]
        labels[start : start + chunk] = lab
    sim = np.einsum("ij,ij->i", x_unit.astype(np.float64), c64[labels]).astype(np.float32)
    return labels, sim


@dataclass
class _AssignShard:
    """Picklable per-shard step of :func:`assign_to_store`."""

    source: EmbeddingSource
    centroids: np.ndarray
    columns: tuple[str, ...]
    store_embeddings: bool

    def __call__(self, batch):
        mask, raw, _ = self.source.read(batch)  # bad external rows were counted by the sample pass
        n = len(batch)
        labels, sim = assign(normalize(raw), self.centroids)
        if mask is not None:  # rows without an external embedding get group -1 (dropped by the store)
            full_labels, full_sim = np.full(n, -1, np.int32), np.zeros(n, np.float32)
            full_labels[mask], full_sim[mask] = labels, sim
            labels, sim = full_labels, full_sim
        uids = batch.uids
        arrays = {"gidx": batch.global_index.astype(np.int64), "uid_hi": uids["f0"].copy(), "uid_lo": uids["f1"].copy(), "sim": sim}
        for c in self.columns:
            arrays[c] = batch.numpy(c, np.float64)
        if self.store_embeddings:
            if mask is not None:
                full = np.zeros((n, raw.shape[1]), raw.dtype)
                full[mask] = raw
                raw = full
            arrays["emb"] = np.ascontiguousarray(raw)
        return labels, arrays


def assign_to_store(ctx, source: EmbeddingSource, centroids: np.ndarray, path: Path, *, store_embeddings: bool = False,
                    columns: tuple[str, ...] = (), desc: str = "assign"):
    """One streaming pass: rows grouped by nearest centroid into a GroupedStore at ``path``.

    Each group holds ``gidx`` (int64), ``uid_hi``/``uid_lo`` (uint64), ``sim`` (float32 cosine to
    the centroid), the requested numeric ``columns`` (float64) and, with ``store_embeddings``, the
    raw vectors ``emb`` as stored in the pool, all in ascending global index. Rows with unusable
    embeddings that the k-means sample pass already counted are not counted again (``ctx.dropped``
    counts each shard row once).
    """
    from clipsift.grouped import GroupedStore

    fn = _AssignShard(source, np.ascontiguousarray(centroids, dtype=np.float32), tuple(columns), store_embeddings)
    return GroupedStore.build(ctx, fn, columns=tuple(columns), keys=source.keys(),
                              num_groups=len(centroids), path=Path(path), desc=desc)


def cluster_uids(group: dict) -> np.ndarray:
    """uid records of one group read from the store."""
    return records(np.asarray(group["uid_hi"]), np.asarray(group["uid_lo"]))


def distance_order(dist: np.ndarray, gidx: np.ndarray) -> np.ndarray:
    """Positions sorted by distance descending, ties by ascending global index (the base order)."""
    return np.lexsort((gidx, -dist.astype(np.float64)))


def cosine_distance(sim: np.ndarray) -> np.ndarray:
    """d = 1 − s in float32, as the reference stores it."""
    return (np.float32(1.0) - np.asarray(sim, dtype=np.float32)).astype(np.float32)


class StageClock:
    """Wall and CPU seconds per stage (CPU of this process plus its finished workers), for manifests:
    on a shared machine CPU time is the figure that does not depend on other load."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t, self._c = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def lap(self, name: str) -> None:
        t, c = time.perf_counter(), self._cpu()
        self.wall[name], self.cpu[name] = round(t - self._t, 3), round(c - self._c, 3)
        self._t, self._c = t, c


def auto_clusters(n: int, mean_size: int = 2500) -> int:
    """SemDeDup's engineering preset: about ``mean_size`` rows per cluster."""
    return max(1, math.ceil(n / mean_size))


# ---- per-group work as executor tasks ----------------------------------------------------------
GROUP_TASK_BYTES = 8 << 20  # bytes of rows a task reads: small clusters share a task, so k = 500+ costs tens of tasks


def group_batches(sizes: np.ndarray, groups: np.ndarray, row_bytes: int, target_bytes: int | None = None) -> list[np.ndarray]:
    """``groups`` (in order) cut into consecutive batches of about ``target_bytes`` of rows each; a
    group of ``target_bytes`` or more is a batch of its own. Batching keeps per-task overhead from
    dominating when clusters are small and many."""
    groups = np.asarray(groups, np.int64)
    if not len(groups):
        return []
    target = max(int(GROUP_TASK_BYTES if target_bytes is None else target_bytes), 1)
    nbytes = np.asarray(sizes, np.int64)[groups] * max(int(row_bytes), 1)
    big = nbytes >= target
    bucket = (np.cumsum(nbytes) - nbytes) // target  # which target-sized slice each group starts in
    new = np.ones(len(groups), bool)
    new[1:] = (bucket[1:] != bucket[:-1]) | big[1:] | big[:-1]
    return np.split(groups, np.flatnonzero(new)[1:])


def store_row_bytes(store, names) -> int:
    """Bytes per row of the named arrays of a grouped store (to size tasks); 1 for an empty store."""
    if not store.sizes.any():
        return 1
    first = int(np.argmax(store.sizes > 0))
    rows = store.read_rows(first, 0, 1, list(names))
    return max(1, sum(int(a.dtype.itemsize * np.prod(a.shape[1:], dtype=np.int64)) for a in rows.values()))


def _group_batch(fn, store_path: str, batch: tuple[np.ndarray, np.ndarray | None]) -> list:
    """Task body: open the store from its path (tasks never carry the driver's objects) and apply
    ``fn(store, group, arg)`` to each group of the batch."""
    from clipsift.grouped import GroupedStore

    groups, args = batch
    store = GroupedStore.open(store_path)  # dropped on return, with its maps: a task holds one batch's rows
    return [fn(store, int(g), None if args is None else args[i]) for i, g in enumerate(groups)]


def map_groups(ctx, fn, store_path, groups, sizes, *, args=None, row_bytes: int, desc: str, device: str = "cpu",
               target_bytes: int | None = None):
    """Yield ``fn(store, g, arg)`` for each of ``groups`` in order, run by ``ctx.executor`` as tasks
    over batches of groups (:func:`group_batches`), each reading only its groups from the store at
    ``store_path`` (shared storage). ``args`` (optional, a sequence aligned with ``groups``) are
    per-group values that travel with their batch. ``fn`` must be picklable; a CUDA ``device`` asks
    for one GPU per task. Results come back small and in group order, so the driver combines them
    exactly as a loop over the groups would.
    """
    groups = np.asarray(groups, np.int64)
    batches = group_batches(sizes, groups, row_bytes, target_bytes)
    ends = np.cumsum([len(b) for b in batches]).tolist()
    items = [(b, None if args is None else args[end - len(b) : end]) for b, end in zip(batches, ends, strict=True)]
    resources = {"num_gpus": 1} if str(device).startswith("cuda") else None
    task = partial(_group_batch, fn, str(store_path))
    for results in ctx.executor.map(task, items, desc=desc, unit="task", resources=resources):
        yield from results
