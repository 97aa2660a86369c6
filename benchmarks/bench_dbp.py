"""Time and peak memory of ``semdedup`` and ``dbp`` on synthetic pools (768-d ``l14_img``), the
log-log scaling slopes, and the ground-truth figures (planted duplicates, rare concepts).

    .venv/bin/python benchmarks/bench_dbp.py                       # 250k, 1M, 2M rows, both filters
    .venv/bin/python benchmarks/bench_dbp.py --rows 250000 --filters dbp --set niter=20
    .venv/bin/python benchmarks/bench_dbp.py --truth 100000 --rows  # ground truth only

Each run is a fresh interpreter. Memory: ``peak_mb`` is the kernel's peak RSS (parent or largest
worker), which includes file-backed pages of memory-mapped store files; ``anon_mb`` is the peak
anonymous memory of the whole process tree, sampled every 0.2 s (what can actually run out).
Pools are cached under $CLIPSIFT_BENCH_DIR (default /tmp/clipsift-bench).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import isolated, synthetic_pool, table  # noqa: E402

RUN = """
import os, threading, time, numpy as np

def _tree_anon_mb():
    # anonymous resident memory (heap, arrays) of this process and its workers; file-backed pages
    # (memory-mapped store files, page cache) are left out because the kernel can drop them
    pids, total = [os.getpid()], 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{{tid}}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    for pid in pids:
        try:
            with open(f"/proc/{{pid}}/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024

_peak = [0.0]
_stop = threading.Event()

def _sample():
    while not _stop.is_set():
        _peak[0] = max(_peak[0], _tree_anon_mb())
        _stop.wait(0.2)

threading.Thread(target=_sample, daemon=True).start()
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.pool import Pool
from clipsift.registry import create_filter
filt = create_filter({name!r}, {params!r})
ctx = RunContext(Pool({pool!r}), LocalExecutor(workers={workers}, show_progress=False))
t0 = time.perf_counter()
sel = filt.select(ctx)
wall = time.perf_counter() - t0
np.save({out!r}, sel.uids)
import resource
ru_s, ru_c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = ru_s.ru_utime + ru_s.ru_stime + ru_c.ru_utime + ru_c.ru_stime
_stop.set()
result = {{"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_anon_mb": round(_peak[0], 1), "kept": len(sel), "counters": sel.counters, "details": sel.details}}
"""


def run_filter(pool: Path, name: str, params: dict, workers: int, out: Path) -> dict:
    res = isolated(RUN.format(name=name, params=params, pool=str(pool), workers=workers, out=str(out)))
    res["peak_mb"] = max(res["peak_rss_mb"], res["peak_children_rss_mb"])
    return res


def stage_seconds(name: str, details: dict, field: str = "seconds") -> str:
    """Per-stage seconds (``seconds``: wall; ``cpu_seconds``: CPU of the process tree)."""
    if name == "semdedup":
        return json.dumps(details.get(field, {}))
    parts = {}
    if "dedup" in details:
        parts.update({f"dedup_{k}": v for k, v in details["dedup"].get(field, {}).items()})
    if "clip_score" in details:
        parts["clip"] = details["clip_score"].get(field)
    parts.update({f"dbp_{k}": v for k, v in details["density"].get(field, {}).items()})
    return json.dumps(parts)


def slope(x, y) -> float:
    """Exponent b of y ∝ x^b (least squares in log-log)."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def scaling(rows_list, filters, params, workers) -> None:
    results = []
    for rows in rows_list:
        pool = synthetic_pool(rows)
        for name in filters:
            res = run_filter(pool, name, params.get(name, {}), workers, pool.parent / f"bench-{name}.npy")
            row = {"filter": name, "rows": rows, "kept": res["kept"], "wall_s": res["wall_s"], "cpu_s": res["cpu_s"],
                   "peak_mb": res["peak_mb"], "anon_mb": res["peak_anon_mb"], "stages_s": stage_seconds(name, res["details"]),
                   "stages_cpu_s": stage_seconds(name, res["details"], "cpu_seconds")}
            if name == "semdedup":
                row["largest_cluster"] = res["details"]["largest_cluster"]
                row["k"] = res["details"]["kmeans"]["k"]
            else:
                row["counts"] = json.dumps({k: v for k, v in res["counters"].items() if k != "dropped"})
            results.append(row)
            print(json.dumps(row), flush=True)
    print(table(results, ["filter", "rows", "kept", "wall_s", "cpu_s", "peak_mb", "anon_mb", "stages_cpu_s"]))
    for name in filters:
        rs = [r for r in results if r["filter"] == name]
        n = [r["rows"] for r in rs]
        print(json.dumps({"filter": name, "time_slope": round(slope(n, [r["wall_s"] for r in rs]), 3),
                          "cpu_slope": round(slope(n, [r["cpu_s"] for r in rs]), 3),
                          "rss_slope": round(slope(n, [r["peak_mb"] for r in rs]), 3),
                          "anon_slope": round(slope(n, [r["anon_mb"] for r in rs]), 3),
                          "s_per_million_rows": [round(r["wall_s"] / r["rows"] * 1e6, 1) for r in rs]}))


TRUTH = """
import numpy as np, pandas as pd
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.pool import Pool
from clipsift.registry import create_filter
from clipsift.uids import hex_to_records, isin_sorted, sort_records
t = pd.read_parquet({truth!r})
rec = hex_to_records(t.uid.values)
ctx = RunContext(Pool({pool!r}), LocalExecutor(workers={workers}, show_progress=False))
def kept(name, params):
    return isin_sorted(rec, sort_records(create_filter(name, params).select(ctx).uids))
result = {{"rows": len(t)}}
sd = kept("semdedup", {sd!r})
copies = t.is_dup_copy.to_numpy()
exact, near = (t.dup_kind == "exact").to_numpy(), (t.dup_kind == "near").to_numpy()
groups = t[t.dup_group >= 0].assign(k=sd[t.dup_group.to_numpy() >= 0]).groupby("dup_group").k.sum()
result["semdedup"] = {{
    "kept": int(sd.sum()),
    "unique_items_kept": round(float(sd[t.dup_group.to_numpy() < 0].mean()), 4),
    "planted_copies_removed": round(float(1 - sd[copies].mean()), 4),
    "exact_copies_removed": round(float(1 - sd[copies & exact].mean()), 4),
    "near_copies_removed": round(float(1 - sd[copies & near].mean()), 4),
    "redundant_copies_removed": round(float(1 - (groups.sum() - (groups > 0).sum()) / max(int(copies.sum()), 1)), 4),
    "dup_groups_with_exactly_one_kept": round(float((groups == 1).mean()), 4),
    "dup_groups_with_none_kept": round(float((groups == 0).mean()), 4),
}}
freq = t.concept.value_counts()
rare_ids = freq[freq <= freq.quantile(0.1)].index
rare = t.concept.isin(rare_ids).to_numpy()
for label, params in {dbp!r}.items():
    d = kept("dbp", params)
    r = kept("random", {{"count": int(d.sum()), "seed": 0}})
    out = {{}}
    for who, m in (("dbp", d), ("random", r)):
        per = t[rare].assign(k=m[rare]).groupby("concept").k.sum()
        out[who] = {{"kept": int(m.sum()), "rare_rows_kept": round(float(m[rare].mean()), 4),
                     "rare_concepts_lost": int((per == 0).sum()), "rare_concepts": len(rare_ids),
                     "rare_concept_min_rows": int(freq.min()), "concepts_covered": int(t.concept[m].nunique()),
                     "dup_copies_kept": round(float(m[copies].mean()), 4)}}
    result[label] = out
"""


def truth(rows: int, workers: int, sd_params: dict, dbp_params: dict) -> None:
    pool = synthetic_pool(rows)
    res = isolated(TRUTH.format(truth=str(pool.parent / "truth.parquet"), pool=str(pool), workers=workers,
                                sd=sd_params, dbp=dbp_params))
    print(json.dumps(res, indent=1))


def parse_sets(items):
    out = {}
    for item in items or []:
        key, value = item.split("=", 1)
        out[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[250_000, 1_000_000, 2_000_000])
    ap.add_argument("--filters", nargs="+", default=["semdedup", "dbp"], choices=["semdedup", "dbp"])
    ap.add_argument("--set", action="append", help="extra param for both filters, key=value (e.g. niter=20)")
    ap.add_argument("--fraction", type=float, default=0.3, help="dbp keep fraction")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--truth", type=int, default=0, help="also report ground-truth figures on a pool of this size")
    args = ap.parse_args()
    extra = parse_sets(args.set)
    params = {"semdedup": dict(extra), "dbp": {"fraction": args.fraction, **extra}}
    if args.rows:
        scaling(args.rows, args.filters, params, args.workers)
    if args.truth:
        dbp_runs = {"dbp_30pct_no_clip_stage": {"fraction": 0.3, "clip_filter": False, **extra},
                    "dbp_30pct_full_pipeline": {"fraction": 0.3, **extra}}
        truth(args.truth, args.workers, dict(extra), dbp_runs)


if __name__ == "__main__":
    main()
