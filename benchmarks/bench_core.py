"""Foundation benchmark: no_filter and random against the floor of reading the uid column.

Floor = pyarrow reading only the ``uid`` column of every shard (no conversion, no output).
Goal: each filter within 1.3x the floor; peak memory flat between 250k and 1M rows.
Usage: python benchmarks/bench_core.py [--rows 250000 1000000] [--workers 1]
"""

from __future__ import annotations

import argparse

from _harness import isolated, synthetic_pool, table

FLOOR = """
import time, glob, pyarrow.parquet as pq
t = time.perf_counter()
n = 0
for p in sorted(glob.glob({pool!r} + "/*.parquet")):
    n += pq.ParquetFile(p).read(columns=["uid"]).num_rows
result = {{"seconds": time.perf_counter() - t, "rows": n}}
"""

FILTER = """
import time, tempfile, os
from clipsift.pool import Pool
from clipsift.filter import RunContext
from clipsift.executor import LocalExecutor
from clipsift.registry import create_filter
from clipsift.runner import run_to_subset
t = time.perf_counter()
pool = Pool({pool!r})
ctx = RunContext(pool, LocalExecutor({workers}, show_progress=False))
out = os.path.join(tempfile.mkdtemp(), "s.npy")
path, manifest = run_to_subset(create_filter({name!r}, {params!r}), ctx, out)
result = {{"seconds": time.perf_counter() - t, "rows": manifest["output_count"]}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    args = ap.parse_args()
    rows_out = []
    for rows in args.rows:
        pool = str(synthetic_pool(rows))
        floor = min((isolated(FLOOR.format(pool=pool)) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        rows_out.append({"rows": rows, "job": "floor: read uid column", "workers": 1, "s": f"{floor['seconds']:.3f}", "ratio": "1.00", "peak MB": floor["peak_rss_mb"]})
        for name, params in (("no_filter", {}), ("random", {"fraction": 0.3, "seed": 0})):
            for w in args.workers:
                best = min((isolated(FILTER.format(pool=pool, workers=w, name=name, params=params)) for _ in range(args.repeat)), key=lambda r: r["seconds"])
                peak = max(best["peak_rss_mb"], best["peak_children_rss_mb"])
                rows_out.append({"rows": rows, "job": name, "workers": w, "s": f"{best['seconds']:.3f}", "ratio": f"{best['seconds'] / floor['seconds']:.2f}", "peak MB": peak})
    print(table(rows_out, ["rows", "job", "workers", "s", "ratio", "peak MB"]))


if __name__ == "__main__":
    main()
