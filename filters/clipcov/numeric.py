"""ClipCov's numeric contract (spec §2, N1–N6): why results are bit-reproducible.

Canonical vectors are fp16 near unit norm. Every fp16 is a multiple of 2⁻²⁴, so a product of two
is a multiple of 2⁻⁴⁸ and a dot product of two canonical vectors fits in 53 bits: computed in
fp64 it is exact for any blocking, order, BLAS or device (N2). ``q`` rounds fp64 → fp32 → fp16
like the authors' saved cosines (N3); sums of q-values are exact in fp64 (N4).
"""

from __future__ import annotations

import math

import numpy as np

from clipsift.errors import ClipsiftError

NORM_TOL = 1e-2


def q_np(x: np.ndarray) -> np.ndarray:
    """N3: fp16(fp32(x)), returned as fp64."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float16).astype(np.float64)


def q_torch(x):
    """N3 on a torch tensor, returned as fp64 on the same device."""
    import torch

    return x.to(torch.float32).to(torch.float16).to(torch.float64)


def thr_torch(s, tau: float):
    """Keep values strictly above the threshold (τ = 0 is a ReLU)."""
    import torch

    return torch.where(s > tau, s, torch.zeros((), dtype=s.dtype, device=s.device))


def canonical(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """N1: fp16 rows with |‖x‖−1| ≤ 1e-2; other rows are renormalised in fp32 and rounded once."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ClipsiftError(f"{what}: expected a 2-D array, got shape {x.shape}")
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise ClipsiftError(f"{what}: non-finite values; recompute these embeddings")
    norms = np.sqrt(np.einsum("ij,ij->i", x32, x32, dtype=np.float32))
    if len(x) and norms.min() == 0:
        raise ClipsiftError(f"{what}: an all-zero embedding cannot be normalised; drop or recompute that row")
    if x.dtype == np.float16:
        bad = np.abs(norms - 1) > NORM_TOL
        if not bad.any():
            return x
        out = x.copy()
        out[bad] = (x32[bad] / norms[bad, None]).astype(np.float16)
        return out
    return (x32 / norms[:, None]).astype(np.float16)


def unit_canonical(sums: np.ndarray) -> np.ndarray:
    """N5: rows of exact fp64 sums → fp64 normalisation (correctly rounded norm) → q per component.

    The norm uses ``math.fsum`` so it does not depend on the BLAS or summation order. All-zero rows
    (empty classes) stay zero.
    """
    sums = np.asarray(sums, dtype=np.float64)
    out = np.zeros(sums.shape, dtype=np.float16)
    for c in range(len(sums)):
        sq = sums[c] * sums[c]
        norm = math.sqrt(math.fsum(sq.tolist()))
        if norm > 0:
            out[c] = q_np(sums[c] / norm).astype(np.float16)
    return out


def exact_sum(x: np.ndarray) -> np.ndarray:
    """Column sums of canonical fp16 rows in fp64: exact below 2²⁹ rows (N4), so order-free."""
    return np.asarray(x, dtype=np.float64).sum(axis=0)


def rowdot_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise a_i·b_i in fp64 (exact for canonical inputs)."""
    return np.einsum("ij,ij->i", np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def matvec_exact(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """x·v for canonical rows and a canonical vector, fp64, exact."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(v, dtype=np.float64)


def argmax_exact(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """argmax_c x_i·centre_c with exact fp64 products; ties go to the smallest c (numpy argmax)."""
    x = np.asarray(x)
    c64 = np.ascontiguousarray(np.asarray(centres, dtype=np.float64).T)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk):
        out[s : s + chunk] = np.argmax(x[s : s + chunk].astype(np.float64) @ c64, axis=1)
    return out
