"""What negCLIPLoss / NormSim keep on a synthetic pool, against the ground truth, at equal size.

Methods at 30 % of the pool: random; CLIP score (l14) above the threshold that keeps 30 %;
negCLIPLoss (K=10, B=32768, tau=0.01); negCLIPLoss 44 % -> NormSim_2-D 30 % (the small-scale
dynamic recipe, T iterations). Figures from out/truth.parquet: share of kept pairs that are
mismatched (caption of another concept), share of all mismatched pairs that survive, share of
generic captions kept, concepts covered, and the effective number of concepts exp(entropy).
Usage: python benchmarks/quality_negclip.py [--rows 250000] [--iterations 50] [--workers 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq
from _harness import synthetic_pool, table

from clipsift.budget import fraction_count as count_for
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.negclip.rank import top_n
from clipsift.pool import Pool
from clipsift.registry import create_filter
from clipsift.uids import hex_to_records, isin_sorted, sort_records


def clip_score_top(pool: Pool, fraction: float) -> tuple[np.ndarray, float]:
    """Top fraction by the parquet CLIP score, i.e. the threshold that keeps that many rows."""
    parts = [pool.read(s, columns=["clip_l14_similarity_score"]) for s in pool.shards]
    uids = np.concatenate([p.uids for p in parts])
    score = np.concatenate([p.numpy("clip_l14_similarity_score", np.float64) for p in parts])
    keep = top_n(score, uids, count_for(len(uids), fraction))
    return sort_records(uids[keep]), float(score[keep].min())


def metrics(kept: np.ndarray, truth: dict) -> dict:
    mask = isin_sorted(truth["uids"], kept)
    mism, concept = truth["is_mismatched"], truth["concept"]
    counts = np.bincount(concept[mask], minlength=truth["num_concepts"])
    p = counts[counts > 0] / counts.sum()
    return {
        "kept": int(mask.sum()),
        "mismatched in kept %": f"{100 * mism[mask].mean():.2f}",
        "mismatched surviving %": f"{100 * mism[mask].sum() / max(1, mism.sum()):.1f}",
        "generic captions in kept %": f"{100 * truth['is_generic_caption'][mask].mean():.2f}",
        "concepts covered": f"{int((counts > 0).sum())}/{truth['num_concepts']}",
        "effective concepts": f"{np.exp(-(p * np.log(p)).sum()):.1f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--iterations", type=int, default=50, help="NormSim_2-D iterations T (paper: 500)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    meta = synthetic_pool(args.rows)
    t = pq.read_table(meta.parent / "truth.parquet", columns=["uid", "is_mismatched", "concept", "is_generic_caption"])
    truth = {
        "uids": hex_to_records(t.column("uid")),
        "is_mismatched": t.column("is_mismatched").to_numpy(),
        "concept": t.column("concept").to_numpy(),
        "is_generic_caption": t.column("is_generic_caption").to_numpy(),
    }
    truth["num_concepts"] = int(len(np.unique(truth["concept"])))
    pool = Pool(str(meta))
    ctx = RunContext(pool, LocalExecutor(args.workers, show_progress=False))
    rows = [{"method": "whole pool", **metrics(sort_records(truth["uids"].copy()), truth)}]
    f = args.fraction
    small = {"preset": "dynamic", "fraction": min(1.0, f + 0.14), "fraction_normsim": f, "iterations": args.iterations}
    runs = [
        ("random", lambda: create_filter("random", {"fraction": f, "seed": 0}).select(ctx).uids),
        ("clip_score (l14) top by threshold", lambda: clip_score_top(pool, f)[0]),
        ("negclip (K=10, B=32768)", lambda: create_filter("negclip", {"fraction": f}).select(ctx).uids),
        (f"negclip {small['fraction']:.2f} -> NormSim_2-D {f:.2f} (T={args.iterations})",
         lambda: create_filter("negclip_normsim", small).select(ctx).uids),
    ]
    for label, fn in runs:
        t0 = time.perf_counter()
        kept = fn()
        rows.append({"method": label, **metrics(kept, truth), "s": f"{time.perf_counter() - t0:.0f}"})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print(f"\npool: {args.rows} rows, {truth['num_concepts']} concepts, device {ctx.torch_device()}")
    print(table(rows, list(rows[1])))


if __name__ == "__main__":
    main()
