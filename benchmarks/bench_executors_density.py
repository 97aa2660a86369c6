"""Local vs Ray executor for ``semdedup`` and ``dbp`` (issue 12, part b): same bytes, time ratio,
peak memory per process, and wall seconds per stage (the filters' StageClock details).

    .venv/bin/python benchmarks/bench_executors_density.py                 # 1M rows, both filters
    .venv/bin/python benchmarks/bench_executors_density.py --rows 100000 --filters semdedup

Synthetic pools (768-d ``l14_img``) are cached under $CLIPSIFT_BENCH_DIR (default
/tmp/clipsift-bench, about 5 GB at 1M rows). Parameters as in bench_dbp.py (``niter=20
train_rows=65536``, dbp ``fraction=0.3``). Columns as in bench_executors.py; ``worker MB`` on
Ray is read from /proc of the ``ray::`` workers below the driver, on local from RUSAGE_CHILDREN.
Per-cluster work (pairwise similarities, budgets, selection) runs in the driver with both
executors; only the per-shard steps (sampling, assignment to clusters, CLIP-score reads) go
through the executor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import synthetic_pool, table  # noqa: E402
from bench_executors import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--filters", nargs="+", default=["semdedup", "dbp"], choices=["semdedup", "dbp"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--train-rows", type=int, default=65536)
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args()
    pool = synthetic_pool(args.rows)
    common = {"niter": args.niter, "train_rows": args.train_rows}
    params = {"semdedup": common, "dbp": {"fraction": 0.3, **common}}
    rows_out = []
    for name in args.filters:
        res = {}
        for kind in ("local", "ray"):
            r = res[kind] = run(pool, kind, name, params[name], args.workers, args.timeout, passes=1)
            print(json.dumps({"rows": args.rows, "job": name, "executor": kind, **r}), flush=True)
        loc, ray = res["local"], res["ray"]
        for kind, r in res.items():
            rows_out.append({
                "rows": args.rows, "job": name, "executor": kind, "kept": r["kept"], "start s": r["start_s"],
                "total s": r["total_s"], "map s": r["map_s"], "ray/local": f"{ray['total_s'] / loc['total_s']:.2f}" if kind == "ray" else "",
                "driver cpu s": r["driver_cpu_s"], "worker cpu s": r["worker_cpu_s"], "driver MB": r["peak_rss_mb"],
                "worker MB": r["worker_mb"], "ray sys MB": r.get("ray_sys_mb", ""),
                "same bytes": "yes" if loc["sha256"] == ray["sha256"] else f"NO {loc['sha256']} {ray['sha256']}",
                "stages s": json.dumps({k: round(v, 1) for k, v in r["stages"].items() if isinstance(v, int | float)}),
            })
    print(table(rows_out, list(rows_out[0])))


if __name__ == "__main__":
    main()
