"""External score join: the `score` filter against the floor of reading the columns it needs.

Pool: parquet shards holding only a ``uid`` column (``_harness.uid_only_pool``). Score file: the
same uids in another order (shards reversed, rows shuffled within each) with a float32 ``score``,
as a folder of parquet files — the shape of a released per-uid score set. Floor: one pyarrow loop
reading the pool's uid column and the file's uid and score columns (no decoding, no join).
``score`` runs with ``fraction=0.3`` (DataComp's rule, exact, bounded memory) in a fresh interpreter;
peak MB is the process's VmHWM.
Usage: python benchmarks/bench_scores.py [--rows 10000000] [--repeat 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse

from _harness import CACHE, isolated, table, uid_only_pool

FLOOR = """
import time, glob, resource, pyarrow.parquet as pq
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c, t = cpu(), time.perf_counter()
n = sum(pq.ParquetFile(p).read(columns=["uid"]).num_rows for p in sorted(glob.glob({pool!r} + "/*.parquet")))
m = sum(pq.ParquetFile(p).read(columns=["uid", "score"]).num_rows for p in sorted(glob.glob({scores!r} + "/*.parquet")))
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
with tempfile.TemporaryDirectory() as tmp:
    ctx = RunContext(Pool({pool!r}), LocalExecutor({workers}, show_progress=False), workdir=tmp)
    path, manifest = run_to_subset(create_filter("score", {params!r}), ctx, os.path.join(tmp, "s.npy"))
    result = {{"seconds": time.perf_counter() - t, "cpu": cpu() - c, "rows": manifest["output_count"]}}
"""


def score_files(pool, rows: int, seed: int = 0):
    """(Once) a folder of score parquets over the pool's uids, in another order."""
    out = CACHE / f"scores-{rows}-s{seed}"
    if (out / "done").exists():
        return out
    import glob

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    files = sorted(glob.glob(str(pool) + "/*.parquet"))[::-1]
    per = max(1, len(files) // 20)  # about 20 score files
    for i in range(0, len(files), per):
        t = pa.concat_tables([pq.read_table(f, columns=["uid"]) for f in files[i : i + per]])
        t = t.take(pa.array(rng.permutation(t.num_rows)))
        t = t.append_column("score", pa.array(rng.standard_normal(t.num_rows).astype(np.float32)))
        pq.write_table(t, out / f"part-{i // per:05d}.parquet")
    (out / "done").touch()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    args = ap.parse_args()
    out = []
    for rows in args.rows:
        pool = uid_only_pool(rows, shard_rows=100_000)
        scores = score_files(pool, rows)
        floor = min((isolated(FLOOR.format(pool=str(pool), scores=str(scores))) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        out.append({"rows": rows, "job": "floor: read pool uid + file uid, score", "workers": 1, "s": f"{floor['seconds']:.2f}",
                    "cpu s": f"{floor['cpu']:.2f}", "ratio": "1.00", "peak MB": floor["peak_rss_mb"]})
        for w in args.workers:
            params = {"scores": str(scores), "fraction": 0.3}
            best = min((isolated(FILTER.format(pool=str(pool), workers=w, params=params)) for _ in range(args.repeat)), key=lambda r: r["seconds"])
            out.append({"rows": rows, "job": f"score fraction=0.3 (kept {best['rows']})", "workers": w, "s": f"{best['seconds']:.2f}",
                        "cpu s": f"{best['cpu']:.2f}", "ratio": f"{best['seconds'] / floor['seconds']:.2f}",
                        "peak MB": max(best["peak_rss_mb"], best["peak_children_rss_mb"])})
    print(table(out, ["rows", "job", "workers", "s", "cpu s", "ratio", "peak MB"]))


if __name__ == "__main__":
    main()
