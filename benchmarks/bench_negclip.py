"""negCLIPLoss / NormSim speed and peak memory on synthetic pools (CPU unless CUDA is present).

Jobs per pool size: ``negclip`` (fraction 0.3, K=10, B=32768, tau=0.01: the paper's settings; a
10k-row synthetic shard is one batch, so K does not multiply the work), ``negclip_b2048_k1`` (B=2048,
K=1: 5x less arithmetic, for scaling runs on a CPU), ``normsim`` p=2 and p=inf
against 5,000 target rows, and the two-stage ``negclip_normsim`` NormSim_2-D (0.3 -> 0.2). Each job
runs in a fresh interpreter; peak memory is its resident peak (parent and workers); ``cpu s`` is
the CPU time of the job (parent and workers), the figure to trust on a shared, loaded machine.
``--lse-demo`` also shows the row-chunked log-sum-exp: one batch of B rows with the automatic chunk
versus the whole B x B logits at once (D = 64: memory is what this shows).
Usage: python benchmarks/bench_negclip.py [--rows 250000 1000000] [--workers 1] [--jobs negclip normsim_2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _harness import CACHE, isolated, synthetic_pool, table

FILTER = """
import time, tempfile, atexit, shutil
from clipsift.pool import Pool
from clipsift.filter import RunContext
from clipsift.executor import LocalExecutor
from clipsift.registry import create_filter
t = time.perf_counter()
ctx = RunContext(Pool({pool!r}), LocalExecutor({workers}, show_progress=False), workdir=tempfile.mkdtemp())
atexit.register(shutil.rmtree, ctx.workdir, True)
sel = create_filter({name!r}, {params!r}).select(ctx)
import resource
cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
result = {{"seconds": time.perf_counter() - t, "cpu_s": cpu, "kept": len(sel), "device": ctx.torch_device()}}
"""

LSE = """
import time, numpy as np, torch
from clipsift.filters.negclip.loss import batch_gaps
rng = np.random.default_rng(0)
x = torch.from_numpy(rng.standard_normal(({b}, 64)).astype(np.float32))
y = torch.from_numpy(rng.standard_normal(({b}, 64)).astype(np.float32))
x /= x.norm(dim=1, keepdim=True); y /= y.norm(dim=1, keepdim=True)
t = time.perf_counter()
batch_gaps(x, y, 0.01, chunk_rows={chunk})
result = {{"seconds": time.perf_counter() - t}}
"""


def target_file(pool: Path, rows: int = 5000) -> str:
    """Image embeddings of 5,000 pool rows (first shard) as a stand-in NormSim target."""
    out = CACHE / f"normsim-target-{pool.parent.name}.npy"
    if not out.exists():
        npz = sorted(pool.glob("*.npz"))[0]
        with np.load(npz) as z:
            np.save(out, z["l14_img"][:rows].astype(np.float32))
    return str(out)


def jobs(pool: Path, selected: list[str]) -> list[tuple[str, str, dict]]:
    target = target_file(pool)
    every = {
        "negclip": ("negclip", {"fraction": 0.3}),
        "negclip_b2048_k1": ("negclip", {"fraction": 0.3, "batch_size": 2048, "repeats": 1}),
        "normsim_2": ("normsim", {"fraction": 0.3, "norm": "2", "target": target}),
        "normsim_inf": ("normsim", {"fraction": 0.3, "norm": "inf", "target": target}),
        "negclip_normsim_dynamic": ("negclip_normsim", {"preset": "dynamic", "iterations": 50}),
    }
    return [(label, *every[label]) for label in selected]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--jobs", nargs="+", default=["negclip", "normsim_2", "normsim_inf", "negclip_normsim_dynamic"])
    ap.add_argument("--lse-demo", type=int, default=0, metavar="B", help="also time one batch of B rows, chunked vs whole")
    args = ap.parse_args()
    out = []
    for rows in args.rows:
        pool = synthetic_pool(rows)
        for label, name, params in jobs(pool, args.jobs):
            for w in args.workers:
                r = isolated(FILTER.format(pool=str(pool), workers=w, name=name, params=params))
                peak = max(r["peak_rss_mb"], r["peak_children_rss_mb"])
                out.append({"rows": rows, "job": label, "workers": w, "device": r["device"], "s": f"{r['seconds']:.1f}", "cpu s": f"{r['cpu_s']:.0f}",
                            "rows/s": f"{rows / r['seconds']:.0f}", "kept": r["kept"], "peak MB": peak})
                print(table(out[-1:], list(out[-1])), flush=True)
    if args.lse_demo:
        for chunk in (0, args.lse_demo):
            r = isolated(LSE.format(b=args.lse_demo, chunk=chunk))
            out.append({"rows": args.lse_demo, "job": f"one batch, chunk_rows={chunk or 'auto'}", "workers": 1, "device": "cpu",
                        "s": f"{r['seconds']:.1f}", "peak MB": r["peak_rss_mb"]})
    print(table(out, ["rows", "job", "workers", "device", "s", "cpu s", "rows/s", "kept", "peak MB"]))


if __name__ == "__main__":
    main()
