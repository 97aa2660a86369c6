"""Per-class ClipCov quantities (spec §3) and the kernels that give cross-similarity sums.

A class is a :class:`ClassProblem`: global row indices (ascending), start scores u⁰, coverage r,
label similarity l, and a kernel that returns Σ_{j∈T}(S_ij + S_ji) for any set T. The dense kernel
holds S (tests, reference mode); the embedding kernel recomputes blocks of S from the class's
canonical fp16 embeddings with exact fp64 products, so memory is O(n_c·d) plus one block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clipsift.filters.clipcov.numeric import q_np, q_torch, rowdot_exact, thr_torch, unit_canonical

__all__ = [
    "ClassProblem",
    "DenseKernel",
    "EmbeddingKernel",
    "initial_scores",
    "dense_problem",
    "embedding_problem",
]


def initial_scores(r, e, lsim, centre) -> np.ndarray:
    """u = ((r + 2·e) + 0.5·l) − (tic + itc), fp64 in exactly this order (spec §4)."""
    r, e, lsim, centre = (np.asarray(v, dtype=np.float64) for v in (r, e, lsim, centre))
    return ((r + 2.0 * e) + 0.5 * lsim) - centre


class DenseKernel:
    """S held as a dense fp64 matrix of q-values (already thresholded)."""

    def __init__(self, S: np.ndarray):
        self.S = np.asarray(S, dtype=np.float64)

    def pair_sums(self, T) -> np.ndarray:
        T = np.asarray(T, dtype=np.int64)
        return self.S[:, T].sum(axis=1) + self.S[T, :].sum(axis=0)

    def coverage_sums(self) -> np.ndarray:
        return self.S.sum(axis=1) + self.S.sum(axis=0)

    def diag(self) -> np.ndarray:
        return self.S.diagonal().copy()

    def dense(self) -> np.ndarray:
        return self.S


class EmbeddingKernel:
    """S_ij = thr(q(a_i·t_j)) from a class's canonical fp16 image/text rows, block by block.

    CPU: numpy throughout (torch's CPU ops pay an OpenMP wake-up per call: 20-40 ms per small
    fp64 GEMM and ~10x slower element-wise work on a busy 2-core machine, measured). CUDA: torch.
    Products are exact (N2) and sums of q-values are exact (N4), so neither the backend nor the
    block size changes a bit.
    ``fast`` uses fp32 (TF32 on CUDA) products: about 10× faster on GPUs, not parity-exact.
    """

    def __init__(self, img, txt, tau: float = 0.0, device: str = "cpu", block: int = 4096, fast: bool = False, backend: str | None = None):
        self.tau, self.device, self.block, self.fast = float(tau), str(device), int(block), bool(fast)
        self.n = len(img)
        # backend: "torch" or "numpy"; default torch on accelerators, numpy on CPU
        self.on_gpu = (backend or ("numpy" if self.device == "cpu" else "torch")) == "torch"
        img = np.ascontiguousarray(img, dtype=np.float16)
        txt = np.ascontiguousarray(txt, dtype=np.float16)
        if self.on_gpu:
            import torch

            dt = torch.float32 if fast else torch.float64
            if fast:
                torch.backends.cuda.matmul.allow_tf32 = True
            self.img = torch.from_numpy(img.copy()).to(self.device).to(dt)
            self.txt = torch.from_numpy(txt.copy()).to(self.device).to(dt)
        else:
            dt = np.float32 if fast else np.float64
            self.img, self.txt = img.astype(dt), txt.astype(dt)

    def _mm(self, a, b):
        return a @ b.T

    def _take(self, x, idx):
        if self.on_gpu:
            import torch

            return x[torch.as_tensor(idx, device=self.device)]
        return x[idx]

    def _s(self, g):
        if self.on_gpu:
            return thr_torch(q_torch(g), self.tau)
        s = q_np(g)
        s[s <= self.tau] = 0.0
        return s

    def _zeros(self):
        if self.on_gpu:
            import torch

            return torch.zeros(self.n, dtype=torch.float64, device=self.device)
        return np.zeros(self.n, dtype=np.float64)

    def _numpy(self, x) -> np.ndarray:
        return x.cpu().numpy() if self.on_gpu else x

    def coverage_sums(self) -> np.ndarray:
        """Row sums + column sums of S, one GEMM per block pair (P3 coverage)."""
        R, C = self._zeros(), self._zeros()
        b = self.block
        for i in range(0, self.n, b):
            a = self.img[i : i + b]
            for j in range(0, self.n, b):
                s = self._s(self._mm(a, self.txt[j : j + b]))
                R[i : i + b] += s.sum(1)
                C[j : j + b] += s.sum(0)
        return self._numpy(R + C)

    def pair_sums(self, T) -> np.ndarray:
        """Σ_{j∈T} S_ij + Σ_{j∈T} S_ji for every i: G₁ = IMG·TXT_Tᵀ, G₂ = TXT·IMG_Tᵀ."""
        T = np.asarray(T, dtype=np.int64)
        out = self._zeros()
        b = self.block
        for s in range(0, len(T), b):
            t = T[s : s + b]
            out += self._s(self._mm(self.img, self._take(self.txt, t))).sum(1)
            out += self._s(self._mm(self.txt, self._take(self.img, t))).sum(1)
        return self._numpy(out)

    def diag(self) -> np.ndarray:
        return self._numpy(self._s((self.img * self.txt).sum(1)))

    def dense(self) -> np.ndarray:
        return self._numpy(self._s(self._mm(self.img, self.txt)))


@dataclass
class ClassProblem:
    """One class: everything the selection needs, indexed locally 0..n_c−1 (ascending global index)."""

    gidx: np.ndarray
    u0: np.ndarray
    r: np.ndarray
    lsim: np.ndarray
    kernel: object
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.gidx)


def dense_problem(gidx, S, lsim, centre, e=None) -> ClassProblem:
    """Core-level class from an injected S (thresholded q-values): r from S, e = S_ii unless given."""
    kern = DenseKernel(S)
    n = len(gidx)
    r = kern.coverage_sums() / n
    e = kern.diag() if e is None else np.asarray(e, dtype=np.float64)
    return ClassProblem(np.asarray(gidx, dtype=np.int64), initial_scores(r, e, lsim, centre), r, np.asarray(lsim, dtype=np.float64), kern)


def embedding_problem(
    gidx, img, txt, label_vec, *, tau=0.0, device="cpu", block=4096, fast=False, dense=False
) -> ClassProblem:
    """Spec §3 for one class from canonical fp16 rows and its canonical label vector e_c."""
    img = np.asarray(img, dtype=np.float16)
    txt = np.asarray(txt, dtype=np.float16)
    n = len(img)
    kern = EmbeddingKernel(img, txt, tau, device, block, fast)
    if dense:
        kern = DenseKernel(kern.dense())
    r = kern.coverage_sums() / n
    e = q_np(rowdot_exact(img, txt))
    lsim = q_np(np.asarray(txt, dtype=np.float64) @ np.asarray(label_vec, dtype=np.float64))
    m_txt = unit_canonical(np.asarray(txt, dtype=np.float64).sum(axis=0)[None])[0]
    m_img = unit_canonical(np.asarray(img, dtype=np.float64).sum(axis=0)[None])[0]
    itc = q_np(np.asarray(img, dtype=np.float64) @ m_txt.astype(np.float64))
    tic = q_np(np.asarray(txt, dtype=np.float64) @ m_img.astype(np.float64))
    u0 = initial_scores(r, e, lsim, tic + itc)
    return ClassProblem(np.asarray(gidx, dtype=np.int64), u0, r, lsim, kern, {"e": e, "itc": itc, "tic": tic})
