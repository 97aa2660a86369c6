"""NormSim arithmetic: NormSim_p(f) = ||G f||_p over target image embeddings G (Wang et al. 2024).

p = 2 uses the exact Gram shortcut NormSim_2(f)^2 = f^T A f with A = G^T G (D x D, float64), so each
candidate costs O(D^2) whatever |T|. p = inf is max_t |g_t . f| (absolute value, as the reference's
torch.norm), tiled over candidates x targets with a running max, float32.
"""

from __future__ import annotations

import numpy as np
import torch

ROW_CHUNK = 65536
TARGET_TILE = 16384


def as_tensor(x, device: str, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:  # memory-mapped targets: copy the tile (torch wants writable memory)
        x = np.array(x)
    return torch.from_numpy(x).to(device=device, dtype=dtype)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def second_moment(rows, device: str = "cpu", chunk: int = ROW_CHUNK) -> torch.Tensor:
    """sum_t g_t g_t^T in float64 (D x D), streamed over row chunks."""
    total = None
    for a in range(0, len(rows), chunk):
        g = as_tensor(rows[a : a + chunk], device, torch.float64)
        part = g.T @ g
        total = part if total is None else total + part
    if total is None:
        d = rows.shape[1]
        total = torch.zeros((d, d), dtype=torch.float64, device=device)
    return total


def quad_form(rows, matrix: torch.Tensor, chunk: int = ROW_CHUNK) -> torch.Tensor:
    """f^T M f for every row (float64), chunked."""
    out = torch.empty(len(rows), dtype=torch.float64, device=matrix.device)
    for a in range(0, len(rows), chunk):
        f = as_tensor(rows[a : a + chunk], matrix.device, torch.float64)
        out[a : a + len(f)] = ((f @ matrix) * f).sum(dim=1)
    return out


def normsim2(rows, gram: torch.Tensor) -> torch.Tensor:
    """NormSim_2 = sqrt(f^T A f), A = G^T G."""
    return torch.sqrt(torch.clamp(quad_form(rows, gram), min=0.0))


def normsim_inf(rows, targets, device: str = "cpu", row_chunk: int = 8192, target_tile: int = TARGET_TILE) -> torch.Tensor:
    """max_t |g_t . f| per row; memory O(row_chunk * target_tile). ``targets``: tensor or memmap."""
    out = torch.full((len(rows),), -torch.inf, dtype=torch.float32, device=device)
    for a in range(0, len(rows), row_chunk):
        f = as_tensor(rows[a : a + row_chunk], device)
        best = out[a : a + len(f)]
        for t in range(0, len(targets), target_tile):
            g = as_tensor(targets[t : t + target_tile], device)
            torch.maximum(best, (f @ g.T).abs_().amax(dim=1), out=best)
    return out
