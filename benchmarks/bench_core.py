"""Foundation benchmark: no_filter and random against the floor of reading the uid column.

Floor = pyarrow reading only the ``uid`` column of every shard in a loop (no conversion, no
output); a second floor reads the shards with two threads. ``cpu s`` is user+system time of all
threads, which is steadier than wall time on a shared machine.
Goal: each filter within 1.3x the floor; peak memory flat between 250k and 1M rows.
Usage: python benchmarks/bench_core.py [--rows 250000 1000000] [--workers 1] [--uid-only 10000000]
"""

from __future__ import annotations

import argparse

from _harness import isolated, synthetic_pool, table, uid_only_pool

FLOOR = """
import time, glob, resource, pyarrow.parquet as pq
from concurrent.futures import ThreadPoolExecutor
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
files = sorted(glob.glob({pool!r} + "/*.parquet"))
def read(p):
    return pq.ParquetFile(p).read(columns=["uid"]).num_rows
c, t = cpu(), time.perf_counter()
if {threads} == 1:
    n = sum(read(p) for p in files)
else:
    with ThreadPoolExecutor({threads}) as ex:
        n = sum(ex.map(read, files))
result = {{"seconds": time.perf_counter() - t, "cpu": cpu() - c, "rows": n}}
"""

FILTER = """
import time, tempfile, os, resource
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
from clipsift.pool import Pool
from clipsift.filter import RunContext
from clipsift.executor import LocalExecutor
from clipsift.registry import create_filter
from clipsift.runner import run_to_subset
c, t = cpu(), time.perf_counter()
pool = Pool({pool!r})
ctx = RunContext(pool, LocalExecutor({workers}, show_progress=False))
with tempfile.TemporaryDirectory() as tmp:  # timed up to the written subset, not its removal
    path, manifest = run_to_subset(create_filter({name!r}, {params!r}), ctx, os.path.join(tmp, "s.npy"))
    result = {{"seconds": time.perf_counter() - t, "cpu": cpu() - c, "rows": manifest["output_count"]}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--uid-only", type=int, nargs="*", default=[], metavar="ROWS",
                    help="also pools of this many rows holding only a uid column (e.g. 10000000)")
    ap.add_argument("--repeat", type=int, default=7, help="best of N")
    args = ap.parse_args()
    rows_out = []
    pools = [(rows, synthetic_pool) for rows in args.rows] + [(rows, uid_only_pool) for rows in args.uid_only]
    for rows, make in pools:
        pool = str(make(rows))
        shown = rows if make is synthetic_pool else f"{rows} (uid only)"
        floor = min((isolated(FLOOR.format(pool=pool, threads=1)) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        floor2 = min((isolated(FLOOR.format(pool=pool, threads=2)) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        for label, f, w in (("floor: read uid column", floor, 1), ("floor: read uid column, 2 threads", floor2, 2)):
            rows_out.append({"rows": shown, "job": label, "workers": w, "s": f"{f['seconds']:.3f}", "cpu s": f"{f['cpu']:.3f}", "ratio": f"{f['seconds'] / floor['seconds']:.2f}", "peak MB": f["peak_rss_mb"]})
        for name, params in (("no_filter", {}), ("random", {"fraction": 0.3, "seed": 0})):
            for w in args.workers:
                best = min((isolated(FILTER.format(pool=pool, workers=w, name=name, params=params)) for _ in range(args.repeat)), key=lambda r: r["seconds"])
                peak = max(best["peak_rss_mb"], best["peak_children_rss_mb"])
                rows_out.append({"rows": shown, "job": name, "workers": w, "s": f"{best['seconds']:.3f}", "cpu s": f"{best['cpu']:.3f}", "ratio": f"{best['seconds'] / floor['seconds']:.2f}", "peak MB": peak})
    print(table(rows_out, ["rows", "job", "workers", "s", "cpu s", "ratio", "peak MB"]))


if __name__ == "__main__":
    main()
