"""negCLIPLoss arithmetic for one shard (Wang et al. 2024): seeded batching and a stable batch loss.

score_i = css_i - (tau/2) * mean_r [LSE_row_i + LSE_col_i] (logits S/tau), i.e. -tau times the mean
symmetric CLIP loss of row i over K random batchings of its shard. We compute it as
-(tau/2) * mean_r [(LSE_row_i - L_ii) + (LSE_col_i - L_ii)] so a singleton batch gives exactly 0 and
scores are never positive. The column LSE is merged over row chunks (running max and rescaled sum), so
a batch of B rows needs O(chunk * B) memory, never B x B.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

AUTO_CHUNK_ELEMENTS = 1 << 25  # logits per row chunk when chunk_rows = 0 (128 MiB of float32)


def shard_rng(seed: int, shard_name: str, repeat: int) -> np.random.Generator:
    """The generator of (seed, shard, repeat): independent of worker count and processing order."""
    words = np.frombuffer(hashlib.sha256(shard_name.encode("utf-8")).digest()[:16], dtype="<u4")
    return np.random.default_rng([int(seed), *(int(w) for w in words), int(repeat)])


def batch_bounds(n: int, batch_size: int, balanced: bool = False) -> list[tuple[int, int]]:
    """Consecutive (start, stop) slices: length B with a short last one, or near-equal when balanced."""
    if n <= 0:
        return []
    num = math.ceil(n / batch_size)
    if not balanced:
        return [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    sizes = np.full(num, n // num, dtype=np.int64)
    sizes[: n % num] += 1
    stops = np.cumsum(sizes)
    return [(int(b - s), int(b)) for s, b in zip(sizes, stops)]


def auto_chunk(batch_rows: int, chunk_rows: int = 0) -> int:
    if chunk_rows > 0:
        return min(chunk_rows, max(batch_rows, 1))
    return max(1, min(batch_rows, AUTO_CHUNK_ELEMENTS // max(batch_rows, 1)))


def batch_gaps(img: torch.Tensor, txt: torch.Tensor, tau: float, chunk_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(LSE_row - L_ii, LSE_col - L_ii) in float64 for one batch, logits L = img @ txt.T / tau.

    Rows are processed ``chunk_rows`` at a time; each column keeps a running (max, sum) merged as
    m' = max(m, chunk max), s' = s * exp(m - m') + sum exp(x - m'). Exponentials and in-chunk sums
    are float32 (terms <= 1, pairwise-summed), merged in float64. ``amax``, not ``max``: the
    latter also computes indices and is ~10x slower on CPU.
    """
    b = img.shape[0]
    dev = img.device
    chunk = auto_chunk(b, chunk_rows)
    inv_tau = 1.0 / tau
    diag = torch.empty(b, dtype=torch.float32, device=dev)
    row_gap = torch.empty(b, dtype=torch.float64, device=dev)
    col_max = torch.full((b,), -math.inf, dtype=torch.float32, device=dev)
    col_sum = torch.zeros(b, dtype=torch.float64, device=dev)
    for a in range(0, b, chunk):
        z = min(a + chunk, b)
        logits = img[a:z] @ txt.T
        logits.mul_(inv_tau)
        d = logits.diagonal(offset=a)
        diag[a:z] = d
        rmax = logits.amax(dim=1)
        rsum = torch.exp(logits - rmax[:, None]).sum(dim=1)
        row_gap[a:z] = (rmax - d).double() + torch.log(rsum.double())
        cmax = torch.maximum(col_max, logits.amax(dim=0))
        logits.sub_(cmax[None, :]).exp_()
        col_sum = col_sum * torch.exp((col_max - cmax).double()) + logits.sum(dim=0).double()
        col_max = cmax
    col_gap = (col_max - diag).double() + torch.log(col_sum)
    return row_gap, col_gap


def shard_scores(
    img: np.ndarray,
    txt: np.ndarray,
    *,
    tau: float = 0.01,
    batch_size: int = 32768,
    repeats: int = 10,
    seed: int = 0,
    shard_name: str = "",
    balanced: bool = False,
    chunk_rows: int = 0,
    renormalize: bool = False,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """negCLIPLoss scores (float32, <= 0) and diagonal CLIP scores css for one shard's rows.

    When the shard fits in one batch the permutation cannot matter, so it is scored once (scores are
    then independent of seed and K).
    """
    n = len(img)
    if n == 0:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(img)).to(device=device, dtype=torch.float32)
    y = torch.from_numpy(np.ascontiguousarray(txt)).to(device=device, dtype=torch.float32)
    if renormalize:
        x = torch.nn.functional.normalize(x, dim=1)
        y = torch.nn.functional.normalize(y, dim=1)
    css = (x * y).sum(dim=1)
    if n <= batch_size:
        row, col = batch_gaps(x, y, tau, chunk_rows)
        total, reps = row + col, 1
    else:
        total, reps = torch.zeros(n, dtype=torch.float64, device=device), repeats
        for r in range(repeats):
            perm = torch.from_numpy(shard_rng(seed, shard_name, r).permutation(n)).to(device)
            for a, z in batch_bounds(n, batch_size, balanced):
                idx = perm[a:z]
                row, col = batch_gaps(x[idx], y[idx], tau, chunk_rows)
                total[idx] += row + col
    score = total * (-0.5 * tau / reps)
    return score.float().cpu().numpy(), css.cpu().numpy()
