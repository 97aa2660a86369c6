"""Pseudo-class partitions for ClipCov (spec §2): zero-shot, spherical k-means, or a label file.

Every row gets exactly one class by an exact fp64 argmax (ties → smallest id) against canonical
class vectors, so labels do not depend on blocking or device. The per-shard functions here run
inside ``GroupedStore.build`` workers and must stay module-level (picklable).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from clipsift.errors import ParamError, PoolError
from clipsift.filters.clipcov.numeric import (
    argmax_exact,
    canonical,
    q_np,
    rowdot_exact,
    unit_canonical,
)
from clipsift.log import get_logger
from clipsift.uids import UidFormatError, hex_to_records, isin_sorted, sort_order

log = get_logger("filters.clipcov")

SCORE_TOL = 1e-2


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ---- class-prompt embeddings file ----------------------------------------------------------------
def load_class_embeddings(path) -> tuple[np.ndarray, list[str], dict]:
    """A class-embeddings file written by ``clipsift clipcov class-embeddings`` (npz)."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: class embeddings file not found; create it with `clipsift clipcov class-embeddings`")
    try:
        with np.load(path, allow_pickle=False) as z:
            emb = z["embeddings"]
            names = [str(s) for s in z["classnames"]] if "classnames" in z.files else []
            meta = {k: str(z[k]) for k in ("model", "pretrained", "dataset") if k in z.files}
    except (OSError, KeyError, ValueError) as exc:
        raise ParamError(f"{path}: not a class embeddings npz ({exc}); recreate it with `clipsift clipcov class-embeddings`") from exc
    return canonical(emb, str(path)), names, meta


def kmeans_centres(x: np.ndarray, k: int, iters: int = 20, device: str = "cpu", chunk: int = 65536) -> np.ndarray:
    """Spherical k-means (spec §2 ii) on canonical rows; returns canonical centres (N5).

    Init: the first k distinct rows. Lloyd steps use fp32 cosine assignment and normalised means;
    an empty cluster keeps its centre. Only the final exact assignment decides labels.

    Deliberately not :mod:`clipsift.clustering`'s faiss engine (smallest-uid sample, faiss' seeded
    init) used by SemDeDup, SSP and DBP: ClipCov's reference specifies this init, sample and fp16
    canonical centres, and its outputs are compared with that reference.
    """
    import torch

    x = np.asarray(x, dtype=np.float16)
    _, first = np.unique(x.view(np.dtype((np.void, x.shape[1] * 2))), return_index=True)
    first = np.sort(first)[:k]
    if len(first) < k:
        log.warning("k-means: only %d distinct rows for %d clusters; %d clusters stay empty", len(first), k, k - len(first))
    xt = torch.from_numpy(x.astype(np.float32)).to(device)
    cent = xt[torch.as_tensor(first, device=device)].clone()
    for _ in range(iters):
        sums = torch.zeros_like(cent)
        for s in range(0, len(xt), chunk):
            blk = xt[s : s + chunk]
            a = torch.argmax(blk @ cent.T, dim=1)
            sums.index_add_(0, a, blk)
        norms = sums.norm(dim=1, keepdim=True)
        cent = torch.where(norms > 0, sums / norms.clamp_min(1e-30), cent)
    out = np.zeros((k, x.shape[1]), dtype=np.float16)
    out[: len(first)] = unit_canonical(cent.cpu().numpy().astype(np.float64))
    return out


def kmeans_sample_step(n: int, k: int) -> int:
    """Every ⌈n/M⌉-th row, M = min(n, 1000·k)."""
    m = min(n, 1000 * k)
    return max(1, -(-n // max(m, 1)))


def split_class(img: np.ndarray, cap: int, device: str = "cpu", iters: int = 20) -> list[np.ndarray]:
    """Optional cap (§5.4): recursive spherical k-means into parts of ≤ cap rows (local indices)."""
    todo, parts = [np.arange(len(img))], []
    while todo:
        rows = todo.pop()
        if len(rows) <= cap:
            parts.append(rows)
            continue
        p = -(-len(rows) // cap)
        sample = img[rows][:: kmeans_sample_step(len(rows), p)]
        cent = kmeans_centres(sample, p, iters, device)
        lab = argmax_exact(img[rows], cent)
        groups = [rows[lab == g] for g in range(p) if (lab == g).any()]
        if len(groups) == 1:  # identical rows cannot be split by similarity: cut in index order
            groups = [rows[s : s + cap] for s in range(0, len(rows), cap)]
        todo.extend(groups[::-1])
    parts.sort(key=lambda r: int(r[0]))
    return parts


# ---- label file ----------------------------------------------------------------------------------
def prepare_label_file(path, out_dir: Path) -> tuple[str, int]:
    """Read a parquet of uid + label, check it, save sorted lookup arrays; returns (npz path, K)."""
    path = Path(path)
    try:
        table = pq.read_table(path, columns=["uid", "label"])
    except Exception as exc:
        raise ParamError(f"{path}: cannot read uid and label columns ({exc}); write a parquet with uid (hex) and integer label") from exc
    try:
        uids = hex_to_records(table.column("uid"))
    except UidFormatError as exc:
        raise ParamError(f"{path}: {exc}; uids must be 32 hex characters") from exc
    labels = table.column("label").to_numpy(zero_copy_only=False)
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise ParamError(f"{path}: label must be a non-negative integer column")
    order = sort_order(uids)
    uids, labels = uids[order], labels[order].astype(np.int64)
    if len(uids) > 1 and np.any(uids[1:] == uids[:-1]):
        raise ParamError(f"{path}: duplicate uids; give each uid one label")
    out = Path(out_dir) / "labels.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, uids=uids, labels=labels)
    return str(out), int(labels.max(initial=-1)) + 1


def _lookup_labels(label_file: str, batch) -> np.ndarray:
    with np.load(label_file) as z:
        ref, lab = z["uids"], z["labels"]
    found = isin_sorted(batch.uids, ref)
    if not found.all():
        row = int(np.flatnonzero(~found)[0])
        raise PoolError(f"{label_file}: no label for uid of row {int(batch.rows[row])} of {batch.shard.parquet}; label every row")
    return lab[np.searchsorted(_be_keys(ref), _be_keys(batch.uids))]


def _be_keys(records: np.ndarray) -> np.ndarray:
    """Records as 16-byte big-endian strings: same order as (hi, lo), one searchsorted."""
    be = np.empty((len(records), 2), dtype=">u8")
    be[:, 0] = records["f0"]
    be[:, 1] = records["f1"]
    return be.view("S16").reshape(-1)


# ---- the per-shard ingest step (P0 + P1 labelling) -------------------------------------------------
def ingest_shard(arch: str, centres_file: str | None, label_file: str | None, check_scores: bool, batch):
    """Canonical embeddings, row-alignment check and class of every row of one shard."""
    img = canonical(batch.embeddings[f"{arch}_img"], f"{batch.shard.npz}:{arch}_img")
    txt = canonical(batch.embeddings[f"{arch}_txt"], f"{batch.shard.npz}:{arch}_txt")
    col = f"clip_{arch}_similarity_score"
    if check_scores and col in batch.table.column_names and len(batch):
        e = q_np(rowdot_exact(img, txt))
        score = batch.numpy(col, np.float64)
        # a NaN score says nothing about alignment (real pools hold some): only present scores are checked
        bad = ~(np.abs(e - score) < SCORE_TOL) & ~np.isnan(score)
        if bad.any():
            row = int(batch.rows[np.flatnonzero(bad)[0]])
            raise PoolError(
                f"{batch.shard.npz}: row {row} image·text = {e[bad][0]:.4f} but {col} = {score[bad][0]:.4f}; "
                "the npz is not row-aligned with its parquet (re-download the pair) or set check_scores=false"
            )
    if label_file is not None:
        labels = _lookup_labels(label_file, batch)
    else:
        labels = argmax_exact(img, np.load(centres_file))
    arrays = {"gidx": batch.global_index.astype(np.int64), "uid": batch.uids, "img": img, "txt": txt}
    return labels, arrays


def sample_shard(arch: str, step: int, start: int, batch) -> np.ndarray:
    """k-means training rows of one shard: candidate positions start, start+1, … that are ≡ 0 mod step."""
    pos = start + np.arange(len(batch))
    img = canonical(batch.embeddings[f"{arch}_img"][pos % step == 0], f"{batch.shard.npz}:{arch}_img")
    return img


def count_rows(batch) -> int:
    return len(batch)


def check_class_file_dims(E: np.ndarray, arch: str, path) -> None:
    d = {"b32": 512, "l14": 768}[arch]
    if E.shape[1] != d:
        raise ParamError(f"{path}: class embeddings have dimension {E.shape[1]} but {arch} pool embeddings have {d}; use the text tower of the model that made the pool's {arch} embeddings")


__all__ = [
    "load_class_embeddings",
    "kmeans_centres",
    "kmeans_sample_step",
    "split_class",
    "prepare_label_file",
    "ingest_shard",
    "sample_shard",
    "count_rows",
    "file_digest",
    "check_class_file_dims",
]
