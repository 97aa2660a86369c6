"""NormSim passes over a pool: target preparation, the per-shard scorer, embedding collection.

The target is prepared once in the parent: for p = 2 the D x D matrix A = G^T G (small, shipped
with the task), for p = inf the concatenated G written as a float32 .npy in the work folder that
each worker memory-maps once (kept on the device when it fits).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from clipsift.devices import task_resources
from clipsift.filters.negclip.loss import shard_rng
from clipsift.filters.negclip.normsim_math import (
    normalize_rows,
    normsim2,
    normsim_inf,
    quad_form,
    second_moment,
)
from clipsift.filters.negclip.normsim_targets import (
    iter_target_blocks,
    load_covariance,
    target_files,
    write_target_matrix,
)
from clipsift.uids import UID_DTYPE

MOMENT_REPEAT = 2**32 - 1  # stream of the moment subsample draw, disjoint from the batchings (0..K-1)
_RESIDENT: dict = {}  # per-process cache of p = inf targets: (path, device) -> tensor or memmap


@dataclass(frozen=True)
class Target:
    """What a NormSim scorer needs: ``matrix`` (A or Sigma, p = 2) or ``path`` of G (p = inf)."""

    norm: str
    rows: int
    matrix: np.ndarray | None = None
    path: str | None = None
    covariance: bool = False


def prepare_target(spec: str, norm: str, dim: int, workdir: Path, key: str | None = None, covariance: bool = False) -> Target:
    if norm == "2" and covariance:
        return Target("2", 0, matrix=load_covariance(spec, dim, key), covariance=True)
    if norm == "2":
        gram, rows = None, 0
        for block in iter_target_blocks(spec, dim, key):
            part = second_moment(block).numpy()
            gram = part if gram is None else gram + part
            rows += len(block)
        return Target("2", rows, matrix=gram)
    path, rows = cached_target_matrix(spec, dim, Path(workdir), key)
    return Target("inf", rows, path=str(path))


def cached_target_matrix(spec: str, dim: int, workdir: Path, key: str | None = None) -> tuple[Path, int]:
    """G as one float32 .npy in ``workdir``, named by a fingerprint of what it is made of (each
    target file's resolved path, size and mtime, the key and the dimension): a reused workdir never
    serves another target set's matrix (nor does the per-process ``_RESIDENT`` cache, keyed by the
    path), and the same targets are not written twice. Written under a temporary name, then renamed."""
    files = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in target_files(spec)]
    body = json.dumps({"files": files, "key": key, "dim": int(dim), "layout": 1}, sort_keys=True).encode()
    out = Path(workdir) / f"normsim_targets-{hashlib.sha256(body).hexdigest()[:20]}.npy"
    if out.exists():
        return out, int(np.load(out, mmap_mode="r").shape[0])
    tmp = out.with_name(f".{out.stem}-{uuid.uuid4().hex[:8]}.tmp.npy")
    try:
        _, rows = write_target_matrix(spec, dim, tmp, key)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, rows


def _resident_targets(path: str, device: str):
    if (path, device) not in _RESIDENT:
        mm = np.load(path, mmap_mode="r")
        free = torch.cuda.mem_get_info()[0] // 2 if device.startswith("cuda") else 1 << 30
        _RESIDENT.clear()
        _RESIDENT[(path, device)] = torch.from_numpy(np.array(mm)).to(device) if mm.nbytes <= free else mm
    return _RESIDENT[(path, device)]


def normsim_values(emb: np.ndarray, target: Target, device: str = "cpu") -> np.ndarray:
    """NormSim (or VAS = f^T Sigma f for a covariance target) of every row, float64."""
    if len(emb) == 0:
        return np.empty(0, np.float64)
    if target.norm == "2":
        matrix = torch.from_numpy(target.matrix).to(device=device, dtype=torch.float64)
        vals = quad_form(emb, matrix) if target.covariance else normsim2(emb, matrix)
        return vals.cpu().numpy()
    return normsim_inf(emb, _resident_targets(target.path, device), device).double().cpu().numpy()


@dataclass(frozen=True)
class NormSimScorer:
    """Picklable map step: (uids, NormSim) of one shard's (candidate) rows."""

    key: str
    target: Target
    device: str = "cpu"
    renormalize: bool = False

    def __call__(self, batch):
        emb = batch.embeddings[self.key]
        if self.renormalize:
            emb = normalize_rows(emb)
        return batch.uids, normsim_values(emb, self.target, self.device)


def shard_moment(emb: np.ndarray, renormalize: bool, subsample: float | None, seed: int, shard_name: str) -> tuple[np.ndarray, int]:
    """sum f f^T (float64) over a shard's rows, or over a seeded int(n * subsample) of them."""
    f = normalize_rows(emb) if renormalize else emb
    if subsample is not None:
        k = int(len(f) * subsample)
        f = f[np.sort(shard_rng(seed, shard_name, MOMENT_REPEAT).choice(len(f), k, replace=False))]
    return second_moment(f).numpy(), len(f)


def _moment_step(key, renormalize, subsample, seed, batch):
    return shard_moment(batch.embeddings[key], renormalize, subsample, seed, batch.shard.name)


def pool_moment(ctx, key: str, renormalize: bool, subsample: float | None, seed: int) -> tuple[np.ndarray, int]:
    """sum f f^T over the rows of ``ctx`` (every pool row when it has no candidates)."""
    total, rows = None, 0
    for m, n in ctx.map_shards(partial(_moment_step, key, renormalize, subsample, seed), keys=(key,), desc="normsim target"):
        total = m if total is None else total + m
        rows += n
    return total, rows


def _collect_step(key, batch):
    return batch.uids, batch.embeddings[key]


def collect_embeddings(ctx, key: str, renormalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uids, embeddings as stored) of every candidate row, in pool order: NormSim_2-D keeps S_0 resident."""
    uids, embs = [], []
    for u, e in ctx.map_shards(partial(_collect_step, key), keys=(key,), desc="normsim collect"):
        uids.append(u)
        embs.append(normalize_rows(e) if renormalize else e)
    if not uids:
        return np.empty(0, UID_DTYPE), np.empty((0, 0), np.float32)
    return np.concatenate(uids), np.concatenate(embs)


def score_candidates(ctx, key: str, target: Target, renormalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uids, NormSim) of every candidate row, computed per shard in the map step."""
    scorer = NormSimScorer(key, target, ctx.torch_device(), renormalize)
    uids, vals = [], []
    for u, v in ctx.map_shards(scorer, keys=(key,), desc="normsim", resources=task_resources(scorer.device)):
        uids.append(u)
        vals.append(v)
    if not uids:
        return np.empty(0, UID_DTYPE), np.empty(0, np.float64)
    return np.concatenate(uids), np.concatenate(vals)
