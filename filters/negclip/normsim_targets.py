"""Target embeddings for NormSim, supplied by the user (nothing is downloaded).

``target`` is a comma-separated list of files, folders (every .npy/.npz/.pt/.pth inside, sorted) or
glob patterns; the matrices are concatenated (row order is irrelevant to NormSim). Examples: the
DataComp ImageNet-1k assets ``in1k_clip_vit_l14_{0..4}.pt`` (key ``image_features``) or the
training-split image features of the downstream tasks. With ``target_format = covariance`` the one
file holds a D x D matrix (the reference's ``variance_<name>.pt``, Sigma = G^T G / |T|).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clipsift.errors import ParamError
from clipsift.safeload import UnsafeFileError, load_array_file

SUFFIXES = (".npy", ".npz", ".pt", ".pth")
KEYS = ("image_features", "features", "embeddings", "emb", "variance", "covariance")


def target_files(spec: str) -> list[Path]:
    """Expand the comma-separated ``target`` parameter into existing files."""
    files: list[Path] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
            if not found:
                raise ParamError(f"{path}: no .npy/.npz/.pt target files in this folder; point target= at the embedding files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix in SUFFIXES)
            if not found:
                raise ParamError(f"{item}: target file not found; give target= existing .npy/.npz/.pt files, folders or globs")
            files += found
    if not files:
        raise ParamError("normsim: target= is empty; give the target embedding files")
    return files


def _pick(mapping, path: Path, key: str | None):
    names = list(mapping.keys())
    if key is not None:
        if key not in names:
            raise ParamError(f"{path}: no key {key!r} (has {', '.join(map(str, names))}); set target_key= to one of them")
        return mapping[key]
    if len(names) == 1:
        return mapping[names[0]]
    for k in KEYS:
        if k in names:
            return mapping[k]
    raise ParamError(f"{path}: several arrays ({', '.join(map(str, names))}); set target_key= to the image features")


def read_matrix(path: Path, key: str | None = None) -> np.ndarray:
    """One target file as a 2-D array (float16/32 as stored; npy memory-mapped).

    Read by :func:`clipsift.safeload.load_array_file`: ``.npy``/``.npz`` without pickles, torch
    files through the restricted unpickler (numpy arrays) or torch's weights-only loader (tensors).
    """
    hint = "give a .npy, .npz or torch .pt float array"
    try:
        obj = load_array_file(path, "target file", hint, mmap=True)
    except UnsafeFileError as exc:
        raise ParamError(str(exc)) from None
    if isinstance(obj, dict):
        obj = _pick(obj, path, key)
    try:
        arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
    except (ValueError, TypeError) as exc:
        raise ParamError(f"{path}: unreadable target file ({exc}); {hint}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ParamError(f"{path}: target must be a 2-D float array, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def iter_target_blocks(spec: str, dim: int, key: str | None = None) -> Iterator[np.ndarray]:
    """Target matrices one file at a time, checked against the pool's embedding dimension."""
    for path in target_files(spec):
        arr = read_matrix(path, key)
        if arr.shape[1] != dim:
            raise ParamError(
                f"{path}: target embeddings have dimension {arr.shape[1]} but the pool's image key has {dim}; "
                "use targets from the same CLIP encoder as arch= (ImageNet assets are L/14: arch=l14)"
            )
        yield arr


def load_covariance(spec: str, dim: int, key: str | None = None) -> np.ndarray:
    """A single D x D target covariance (VAS's Sigma)."""
    files = target_files(spec)
    if len(files) != 1:
        raise ParamError(f"{spec}: target_format=covariance takes exactly one D x D file, got {len(files)}")
    arr = np.asarray(read_matrix(files[0], key), dtype=np.float64)
    if arr.shape != (dim, dim):
        raise ParamError(f"{files[0]}: covariance must be {dim} x {dim} for this pool's image key, got {arr.shape}")
    return arr


def write_target_matrix(spec: str, dim: int, out: Path, key: str | None = None) -> tuple[Path, int]:
    """Concatenate the targets into one float32 .npy (memory-mapped by workers); returns path and |T|."""
    blocks = list(iter_target_blocks(spec, dim, key))
    rows = sum(len(b) for b in blocks)
    if rows == 0:
        raise ParamError(f"{spec}: the target files hold no rows; give non-empty target embeddings")
    mm = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(rows, dim))
    start = 0
    for b in blocks:
        mm[start : start + len(b)] = b
        start += len(b)
    mm.flush()
    del mm
    return out, rows
