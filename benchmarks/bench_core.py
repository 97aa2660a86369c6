"""Foundation benchmark: no_filter and random against the floor of reading the uid column.

Floor = pyarrow reading only the ``uid`` column of every shard in a loop (no conversion, no
output); a second floor reads the shards with two threads. ``cpu s`` is user+system time of all
threads, which is steadier than wall time on a shared machine.
Goal: each filter within 1.3x the floor; peak memory flat between 250k and 1M rows.
Usage: python benchmarks/bench_core.py [--rows 250000 1000000] [--workers 1] [--uid-only 10000000]

``--sort 1000000 10000000`` instead times the sorted uid writers on uniform random records made
by map tasks (shards of ``--shard-rows``; ``--executor local ray``): ``UidSorter`` (tasks return their records, the driver
spills and sorts them) against ``SortedUidParts`` (tasks write parts, sort tasks per bucket range,
the driver concatenates); ``write s`` is the sort + ``.npy`` write after the map, ``workers cpu s``
the local worker processes' CPU time (Ray's workers are not counted), ``driver MB`` the driver's
VmHWM, ``workers MB`` the largest local worker's; both must write the same bytes.
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


SORT = """
import time, tempfile, os, resource, hashlib
import numpy as np
from functools import partial
from clipsift.executor import make_executor
from clipsift.uids import UID_DTYPE
from clipsift.uidsort import UidSorter, SortedUidParts
def cpu(who=resource.RUSAGE_SELF):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
def shard(i):
    rng = np.random.default_rng(i)
    r = np.empty(min({shard_rows}, {rows} - i * {shard_rows}), dtype=UID_DTYPE)
    r["f0"] = rng.integers(0, 2**64 - 1, len(r), dtype=np.uint64, endpoint=True)
    r["f1"] = rng.integers(0, 2**64 - 1, len(r), dtype=np.uint64, endpoint=True)
    return r
def write_part(writer, i):
    return writer.write(f"{{i:06d}}", shard(i))
shards = range(-(-{rows} // {shard_rows}))
ex = make_executor({executor!r}, workers={workers}, show_progress=False)
if {executor!r} == "ray":  # the map function lives in __main__: ship it by value
    import sys, ray
    ray.cloudpickle.register_pickle_by_value(sys.modules["__main__"])
    ray.get(ray.remote(lambda: 0).remote())  # start-up is not timed
with tempfile.TemporaryDirectory(dir={tmp!r}) as tmp:
    c, ck, t = cpu(), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    if {job!r} == "UidSorter":
        out = UidSorter({rows}, tmp, threads={workers})
        for r in ex.map(shard, shards):
            out.add(r)
    else:
        out = SortedUidParts(os.path.join(tmp, "uids"), {rows}, ex)
        for part in ex.map(partial(write_part, out.writer), shards):
            out.add_part(part)
    t_map = time.perf_counter()
    path, digest = out.write_npy(os.path.join(tmp, "s.npy"))
    t_end = time.perf_counter()
    out.close()
    result = {{"seconds": t_end - t, "write": t_end - t_map, "cpu": cpu() - c,
              "workers_cpu": cpu(resource.RUSAGE_CHILDREN) - ck, "rows": out.count, "file_sha256": out.file_sha256}}
"""


def sort_benchmark(args) -> None:
    """The two sorted uid writers at each size; same bytes asserted through the file sha256."""
    out = []
    for rows in args.sort:
        for executor, workers in [(e, w) for e in args.executor for w in args.workers]:
            runs = {}
            for job in ("UidSorter", "SortedUidParts"):
                code = SORT.format(rows=rows, shard_rows=args.shard_rows, workers=workers, job=job, tmp=args.tmp, executor=executor)
                best = min((isolated(code) for _ in range(args.repeat)), key=lambda r: r["seconds"])
                runs[job] = best
                out.append({"rows": rows, "job": job, "executor": executor, "workers": workers, "s": f"{best['seconds']:.2f}",
                            "write s": f"{best['write']:.2f}", "driver cpu s": f"{best['cpu']:.2f}",
                            "workers cpu s": f"{best['workers_cpu']:.2f}",
                            "driver MB": best["peak_rss_mb"], "workers MB": best["peak_children_rss_mb"]})
            same = runs["UidSorter"]["file_sha256"] == runs["SortedUidParts"]["file_sha256"]
            out[-1]["same bytes"] = out[-2]["same bytes"] = "yes" if same else "NO"
    print(table(out, ["rows", "job", "executor", "workers", "s", "write s", "driver cpu s", "workers cpu s", "driver MB", "workers MB", "same bytes"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--uid-only", type=int, nargs="*", default=[], metavar="ROWS",
                    help="also pools of this many rows holding only a uid column (e.g. 10000000)")
    ap.add_argument("--repeat", type=int, default=7, help="best of N")
    ap.add_argument("--sort", type=int, nargs="*", default=[], metavar="ROWS",
                    help="time the sorted uid writers at these record counts instead")
    ap.add_argument("--shard-rows", type=int, default=10_000, help="records per map task with --sort")
    ap.add_argument("--tmp", default=None, help="scratch folder for --sort (default: the system's)")
    ap.add_argument("--executor", nargs="+", default=["local"], choices=["local", "ray"], help="executors for --sort")
    args = ap.parse_args()
    if args.sort:
        sort_benchmark(args)
        return
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
