"""NormSim_2-D (the reference's VAS-D): NormSim_2 against the current selection itself, no target data.

From the start set S_0 (n_0 rows) down to n_f rows in T iterations with chunk c = ceil((n_0 - n_f)/T):
iteration t scores every f in S_t by f^T Sigma_t f and keeps the top max(n_f, |S_t| - c) (exactly n_f
at the last iteration; never fewer). Sigma_0 is the initial target (the pool or S_0); later Sigma_t is
the second moment of S_t. The exact Sigma is kept incrementally (M -= R^T R for the removed rows R,
float64), and while c < D the scores themselves are updated by the low-rank identity
f^T M' f = f^T M f - ||R f||^2, so an iteration costs O(|S_t| c D) instead of O(|S_t| D^2).
``subsample`` instead draws Sigma_t from a seeded share of S_t, as the reference does (unseeded, 10 %).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clipsift.filters.negclip.normsim_math import as_tensor, quad_form, second_moment
from clipsift.filters.negclip.rank import top_n


def _removed_projection(rows: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """||R f||^2 for every row f (float64), chunked so a block stays near 2^24 numbers."""
    out = torch.empty(len(rows), dtype=torch.float64, device=rows.device)
    step = max(1, (1 << 24) // max(1, len(removed)))
    for a in range(0, len(rows), step):
        p = as_tensor(rows[a : a + step], rows.device, torch.float64) @ removed.T
        out[a : a + len(p)] = (p * p).sum(dim=1)
    return out


def dynamic_select(
    emb: np.ndarray,
    uids: np.ndarray,
    n_final: int,
    iterations: int,
    *,
    initial: np.ndarray | None = None,
    subsample: float | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[np.ndarray, list[int]]:
    """Indices (ascending) of the n_final rows NormSim_2-D keeps, and |S_t| after every iteration.

    ``initial`` is Sigma_0 (any positive scale; None: S_0 itself). Ties are broken by uid.
    """
    n0 = len(emb)
    n_final = max(0, min(int(n_final), n0))
    sizes = [n0]
    if n_final == n0:
        return np.arange(n0, dtype=np.int64), sizes
    chunk = math.ceil((n0 - n_final) / iterations)
    rows = torch.from_numpy(np.ascontiguousarray(emb)).to(device)
    alive = np.arange(n0, dtype=np.int64)
    exact = subsample is None
    moment = second_moment(rows, device) if exact else None
    sigma0 = None if initial is None else torch.from_numpy(np.asarray(initial, dtype=np.float64)).to(device)
    q = None  # f^T M f of the alive rows, valid for the current exact moment M
    for t in range(iterations):
        if len(alive) <= n_final:
            break
        if t == 0 and sigma0 is not None:
            scores = quad_form(rows, sigma0)
        elif exact:
            q = quad_form(rows, moment) if q is None else q
            scores = q
        else:
            rng = np.random.default_rng([seed, t])
            pick = np.sort(rng.choice(len(alive), max(1, int(len(alive) * subsample)), replace=False))
            scores = quad_form(rows, second_moment(rows[torch.from_numpy(pick).to(device)], device))
        keep_n = n_final if t == iterations - 1 else max(n_final, len(alive) - chunk)
        mask = np.zeros(len(alive), dtype=bool)
        mask[top_n(scores.cpu().numpy(), uids[alive], keep_n)] = True
        keep_t = torch.from_numpy(mask).to(device)
        if exact:
            removed = as_tensor(rows[~keep_t], device, torch.float64)
            moment -= removed.T @ removed
            low_rank = q is not None and len(removed) < rows.shape[1]
            rows = rows[keep_t]
            q = q[keep_t] - _removed_projection(rows, removed) if low_rank else None
        else:
            rows = rows[keep_t]
        alive = alive[mask]
        sizes.append(len(alive))
    return alive, sizes
