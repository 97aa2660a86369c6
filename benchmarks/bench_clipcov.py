"""ClipCov benchmarks on synthetic pools (clipsift.synth.make_pool): scale and ground truth.

    # 1000 zero-shot classes from the synthetic teacher's text tower (prompts naming a concept,
    # or a concept and a colour), the synthetic stand-in for ImageNet-1k class prompts
    python benchmarks/bench_clipcov.py classes --pool POOL --classes 1000 --out ce.npz
    # scalable mode on several pools: time, peak memory (per phase), measured Σn_c², projection
    python benchmarks/bench_clipcov.py scale --pools P250K P1M P2M --classes 1000 --workdir W
    # ground truth at 10% / 30%: mismatched captions kept, concepts covered, vs clip_score, random
    python benchmarks/bench_clipcov.py truth --pool POOL --workdir W

Each scale phase runs in a fresh process so its peak memory is its own. Memory is sampled from
/proc/self/status: RssAnon (what the process allocated) and VmHWM (including mapped file pages).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

PROJECT = Path(__file__).resolve().parents[1]


# ---- synthetic class prompts ------------------------------------------------------------------
def synthetic_class_embeddings(world, k: int, arch: str = "b32") -> tuple[np.ndarray, list[str]]:
    """k class vectors from the synthetic teacher's text tower: all concepts, then concept+colour."""
    from clipsift.filters.clipcov.numeric import canonical

    nc = len(world.concept_names)
    pairs = [(c, None) for c in range(min(k, nc))]
    by_freq = np.argsort(-np.asarray(world.concept_freq), kind="stable")
    for c in by_freq:
        for col in range(len(world.colours)):
            if len(pairs) >= k:
                break
            pairs.append((int(c), col))
    lat = np.zeros(len(pairs), dtype=world.sample_latents(1, np.random.default_rng(0)).dtype)
    lat["concept"] = [c for c, _ in pairs]
    lat["colour"] = [0 if col is None else col for _, col in pairs]
    lat["count"] = 1
    emb = np.empty((len(pairs), 512 if arch == "b32" else 768), np.float16)
    solo = [i for i, (_, col) in enumerate(pairs) if col is None]
    duo = [i for i, (_, col) in enumerate(pairs) if col is not None]
    if solo:
        emb[solo] = world.embed(lat[solo], described=("concept",))[f"{arch}_txt"]
    if duo:
        emb[duo] = world.embed(lat[duo], described=("concept", "colour"))[f"{arch}_txt"]
    names = [world.concept_names[c] if col is None else f"{world.colours[col]} {world.concept_names[c]}" for c, col in pairs]
    return canonical(emb), names


def cmd_classes(args) -> None:
    from clipsift.synth import World

    world = World.from_json(Path(args.pool) / "world.json")
    emb, names = synthetic_class_embeddings(world, args.classes, args.arch)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, embeddings=emb, classnames=np.asarray(names), model=np.asarray(f"synthetic-teacher-{args.arch}"),
             pretrained=np.asarray("synthetic"), dataset=np.asarray(f"synthetic-{args.classes}"))
    print(f"{args.out}: {len(names)} classes")


# ---- memory sampling ---------------------------------------------------------------------------
class MemorySampler:
    """Peak RssAnon and VmHWM of this process, sampled every 50 ms."""

    def __init__(self):
        self.peak_anon = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _status() -> dict:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                if key in ("RssAnon", "VmHWM"):
                    out[key] = int(val.split()[0]) * 1024
        return out

    def _run(self):
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, self._status().get("RssAnon", 0))
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak_anon = max(self.peak_anon, self._status().get("RssAnon", 0))
        self.hwm = self._status().get("VmHWM", 0)


def _ctx(pool, workdir, workers):
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.pool import Pool

    return RunContext(Pool(pool), LocalExecutor(workers=workers, show_progress=False), workdir=Path(workdir))


def cmd_phase(args) -> None:
    """One phase in this process: ``group`` (label + group by class) or ``select`` (the rest)."""
    import resource

    from clipsift.filters.clipcov.filter import ClipCovFilter
    from clipsift.filters.clipcov.pipeline import build_partition, group_rows

    filt = ClipCovFilter(mode=args.mode, class_embeddings=args.ce, fraction=args.fraction, batch=args.batch)
    ctx = _ctx(args.pool, args.workdir, args.workers)
    t0 = time.perf_counter()
    with MemorySampler() as mem:
        if args.phase == "group":
            part = build_partition(filt, ctx, filt._run_dir(ctx))
            store = group_rows(ctx, part, filt.embeddings, filt.check_scores, filt._run_dir(ctx) / "grouped")
            extra = {"rows": store.num_rows, "largest_class": int(store.sizes.max()), "sum_nc2": int((store.sizes.astype(float) ** 2).sum()),
                     "nonempty_classes": int((store.sizes > 0).sum())}
        else:
            sel = filt.select(ctx)
            d = sel.details
            extra = {"kept": len(sel), "sum_nc2": d["sum_nc2"], "largest_class": d["largest_class"], "refreshes": sel.counters["refreshes"],
                     "resumed_classes": d["resumed_classes"]}
    wall = time.perf_counter() - t0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"phase": args.phase, "wall_s": round(wall, 1), "peak_anon_mb": round(mem.peak_anon / 2**20),
                      "peak_rss_incl_mapped_mb": round(mem.hwm / 2**20), "children_peak_rss_mb": round(kids / 2**20), **extra}))


def _phase(pool, ce, workdir, phase, args) -> dict:
    cmd = [sys.executable, __file__, "_phase", "--pool", str(pool), "--ce", str(ce), "--workdir", str(workdir), "--phase", phase,
           "--fraction", str(args.fraction), "--batch", str(args.batch), "--workers", str(args.workers), "--mode", "scalable"]
    env = {**os.environ, "CLIPSIFT_PROGRESS": "0"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=PROJECT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cmd_scale(args) -> None:
    rows = []
    for pool in args.pools:
        pool = Path(pool)
        ce = Path(args.workdir) / f"ce-{pool.name}-{args.classes}.npz"
        if not ce.is_file():
            subprocess.run([sys.executable, __file__, "classes", "--pool", str(pool), "--classes", str(args.classes), "--out", str(ce)], check=True, cwd=PROJECT)
        work = Path(args.workdir) / pool.name
        g = _phase(pool / "metadata", ce, work, "group", args)
        s = _phase(pool / "metadata", ce, work, "select", args)
        row = {"pool": pool.name, "rows": g["rows"], "classes": args.classes, "nonempty": g["nonempty_classes"], "largest_class": g["largest_class"],
               "sum_nc2": g["sum_nc2"], "balanced_sum_nc2": g["rows"] ** 2 / args.classes, "group_s": g["wall_s"], "select_s": s["wall_s"],
               "total_s": round(g["wall_s"] + s["wall_s"], 1), "group_peak_anon_mb": g["peak_anon_mb"], "group_workers_peak_mb": g["children_peak_rss_mb"],
               "group_peak_rss_incl_mapped_mb": g["peak_rss_incl_mapped_mb"], "select_peak_anon_mb": s["peak_anon_mb"],
               "select_peak_rss_incl_mapped_mb": s["peak_rss_incl_mapped_mb"], "kept": s["kept"], "refreshes": s["refreshes"], "resumed_classes": s["resumed_classes"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    _projection(rows, 12_800_000, args.classes)


def _projection(rows, n_target: int, k: int) -> None:
    """Least squares: group time ∝ n; select time = b·Σn_c² + c·n; Σn_c² scales as n² (same mix)."""
    n = np.array([r["rows"] for r in rows], float)
    s2 = np.array([r["sum_nc2"] for r in rows], float)
    tg = np.array([r["group_s"] for r in rows], float)
    ts = np.array([r["select_s"] for r in rows], float)
    a = float((tg @ n) / (n @ n))
    A = np.stack([s2, n], axis=1)
    (b, c), *_ = np.linalg.lstsq(A, ts, rcond=None)
    ratio = s2[-1] / n[-1] ** 2
    s2_t = ratio * n_target**2
    t = a * n_target + b * s2_t + c * n_target
    largest = max(r["largest_class"] / r["rows"] for r in rows[-1:]) * n_target
    print(json.dumps({"projection": f"{n_target} rows, {k} classes", "sum_nc2": f"{s2_t:.3g}", "sum_nc2_over_balanced": round(ratio * k, 2),
                      "group_s": round(a * n_target), "select_s": round(b * s2_t + c * n_target), "total_h": round(t / 3600, 2),
                      "largest_class": int(largest), "select_s_per_1e9_nc2": round(b * 1e9, 2), "group_s_per_1e6_rows": round(a * 1e6, 1)}))


# ---- ground truth -------------------------------------------------------------------------------
def cmd_truth(args) -> None:
    from clipsift.filters.clipcov.filter import ClipCovFilter
    from clipsift.filters.random_subset import RandomFilter
    from clipsift.synth import World
    from clipsift.uids import hex_to_records

    pool = Path(args.pool)
    world = World.from_json(pool / "world.json")
    ce = Path(args.workdir) / f"ce-{pool.name}-concepts.npz"
    ce.parent.mkdir(parents=True, exist_ok=True)
    emb, names = synthetic_class_embeddings(world, len(world.concept_names))
    np.savez(ce, embeddings=emb, classnames=np.asarray(names))
    truth = pq.read_table(pool / "truth.parquet", columns=["uid", "concept", "is_mismatched"])
    t_uid = hex_to_records(truth.column("uid"))
    key = t_uid.view("V16").ravel()
    order = np.argsort(key)
    concept = truth.column("concept").to_numpy()[order]
    mism = truth.column("is_mismatched").to_numpy()[order]
    key = key[order]
    n = len(key)
    total_concepts = len(np.unique(concept))
    ctx = _ctx(pool / "metadata", args.workdir, args.workers)
    scores = np.concatenate([b.numpy("clip_b32_similarity_score") for b in ctx.map_shards(_identity, columns=("clip_b32_similarity_score",))])
    uids = np.concatenate([b.uids for b in ctx.map_shards(_identity)])

    def stats(name, frac, sel_uids):
        pos = np.searchsorted(key, sel_uids.view("V16").ravel())
        kept_m = int(mism[pos].sum())
        return {"method": name, "fraction": frac, "kept": len(pos), "mismatched_share_of_kept": round(kept_m / len(pos), 4),
                "mismatched_pairs_kept": round(kept_m / max(int(mism.sum()), 1), 4), "concepts_covered": int(len(np.unique(concept[pos]))),
                "concepts_with_5_plus": int((np.bincount(concept[pos]) >= 5).sum()),
                "concepts_in_pool": total_concepts}

    print(json.dumps({"pool": str(pool), "rows": n, "mismatched_rate": round(float(mism.mean()), 4), "classes": len(names)}))
    for frac in args.fractions:
        k = int(n * frac)
        for mode in ("scalable", "fixed"):
            sel = ClipCovFilter(mode=mode, class_embeddings=str(ce), fraction=frac).select(ctx)
            print(json.dumps(stats(f"clipcov-{mode}", frac, sel.uids)), flush=True)
        top = np.lexsort((uids["f1"], uids["f0"], -scores))[:k]
        print(json.dumps(stats("clip_score (top-k b32)", frac, uids[top])), flush=True)
        print(json.dumps(stats("random", frac, RandomFilter(fraction=frac).select(ctx).uids)), flush=True)


def _identity(batch):
    return batch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("classes")
    c.add_argument("--pool", required=True)
    c.add_argument("--classes", type=int, default=1000)
    c.add_argument("--arch", default="b32")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_classes)
    s = sub.add_parser("scale")
    s.add_argument("--pools", nargs="+", required=True, help="make_pool output folders (with metadata/ and world.json)")
    s.add_argument("--classes", type=int, default=1000)
    s.add_argument("--workdir", required=True)
    s.add_argument("--fraction", type=float, default=0.1)
    s.add_argument("--batch", type=int, default=200)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_scale)
    t = sub.add_parser("truth")
    t.add_argument("--pool", required=True)
    t.add_argument("--workdir", required=True)
    t.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    t.add_argument("--workers", type=int, default=2)
    t.set_defaults(func=cmd_truth)
    ph = sub.add_parser("_phase")
    for name in ("--pool", "--ce", "--workdir", "--phase", "--mode"):
        ph.add_argument(name, required=True)
    ph.add_argument("--fraction", type=float, default=0.1)
    ph.add_argument("--batch", type=int, default=200)
    ph.add_argument("--workers", type=int, default=2)
    ph.set_defaults(func=cmd_phase)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
