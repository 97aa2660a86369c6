"""Centroid assignment and k-means for the image-based baselines.

``assign`` is DataComp's rule: the centroid with the largest float32 inner product (not the
smallest L2 distance; centroids are not normalised), ties to the lowest index, computed in row
blocks on CPU or CUDA. ``train_kmeans`` runs faiss k-means with DataComp's settings.
"""

from __future__ import annotations

import numpy as np

from clipsift.io import atomic_path
from clipsift.log import get_logger

log = get_logger("baselines.centroids")


def assign(features: np.ndarray, centroids: np.ndarray, device: str = "cpu", batch_size: int = 1024) -> np.ndarray:
    """``argmax_j <float32(x_i), c_j>`` for every row, as int64.

    The same torch einsum over the same row blocks as DataComp (default 1024 rows), so rounding
    on near-ties matches its GEMM calls. TF32 is off on CUDA. On CPU, torch runs single-threaded
    here (callers parallelise over shards), because an OpenMP pool started in a parent process hangs
    in forked workers.
    """
    import torch

    if len(features) == 0:
        return np.empty(0, dtype=np.int64)
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)
    out = np.empty(len(features), dtype=np.int64)
    on_cpu = not str(device).startswith("cuda")
    threads = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            for i in range(0, len(features), batch_size):
                block = torch.from_numpy(np.ascontiguousarray(features[i : i + batch_size])).float().to(device)
                out[i : i + batch_size] = torch.argmax(torch.einsum("ik, jk -> ij", block, c), dim=1).cpu().numpy()
    finally:
        if on_cpu:
            torch.set_num_threads(threads)
    return out


def train_kmeans(embeddings: np.ndarray, num_clusters: int, niter: int = 20, seed: int = 0, gpu: bool | None = None) -> np.ndarray:
    """faiss ``Clustering(d, K)`` with niter=20, seed=0, max_points_per_centroid=10^7, flat L2 index
    (GPU fp32 when faiss has GPU support and a GPU is present, as DataComp; CPU otherwise)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if n < num_clusters:
        from clipsift.errors import ParamError

        raise ParamError(f"k-means needs at least num_clusters={num_clusters} embeddings, got {n}; lower --num-clusters")
    cluster = faiss.Clustering(d, num_clusters)
    cluster.niter = niter
    cluster.seed = seed
    cluster.max_points_per_centroid = 10_000_000
    use_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 if gpu is None else gpu
    if use_gpu:
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = False
        cfg.device = 0
        index = faiss.GpuIndexFlatL2(res, d, cfg)
    else:
        index = faiss.IndexFlatL2(d)
    log.info("k-means: %d points, d=%d, K=%d, niter=%d on %s", n, d, num_clusters, niter, "GPU" if use_gpu else "CPU")
    cluster.train(x, index)
    return faiss.vector_float_to_array(cluster.centroids).reshape(num_clusters, d)


def save_centroids(path, centroids: np.ndarray) -> None:
    """DataComp's format: the numpy array pickled by ``torch.save(..., pickle_protocol=4)``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(np.ascontiguousarray(centroids, dtype=np.float32), tmp, pickle_protocol=4)
