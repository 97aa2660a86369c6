"""Local vs Ray executor for ``semdedup`` and ``dbp`` (issue 12, part b): same bytes, time ratio,
peak memory per process, and wall seconds per stage (the filters' StageClock details).

    .venv/bin/python benchmarks/bench_executors_density.py                 # 1M rows, both filters
    .venv/bin/python benchmarks/bench_executors_density.py --rows 100000 --filters semdedup

Synthetic pools (768-d ``l14_img``) are cached under $CLIPSIFT_BENCH_DIR (default
/tmp/clipsift-bench, about 5 GB at 1M rows). Parameters as in bench_dbp.py (``niter=20
train_rows=65536``, dbp ``fraction=0.3``). Columns as in bench_executors.py; ``worker MB`` on
Ray is read from /proc of the ``ray::`` workers below the driver, on local from RUSAGE_CHILDREN.
Both the per-shard steps (sampling, assignment to clusters, CLIP-score reads) and the per-cluster
work (SemDeDup's pairwise similarities, DBP's d_intra and selection) run through the executor, as
tasks over batches of clusters; only k-means training, the budgets and the eps cut stay in the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import proc_stats, proc_tree, synthetic_pool, table  # noqa: E402
from bench_executors import run  # noqa: E402


class WorkerSampler:
    """Polls every process below the run's driver (local process workers started by the fork server,
    which RUSAGE_CHILDREN never sees, and Ray's workers alike): peak RSS (VmHWM) and CPU seconds per
    process, the CPU read at the last poll before the process exited (up to ``interval`` lost each)."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.seen: dict[int, dict] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            try:
                drivers = set(proc_tree(me)) - {me}
                drivers -= {q for d in list(drivers) for q in proc_tree(d)[1:]}  # the isolated run: a child of this process
                for pid in proc_tree(me):
                    st = None if pid == me or pid in drivers else proc_stats(pid)
                    if st:
                        self.seen[pid] = st
            except Exception:  # noqa: BLE001 - a process that vanished mid-read; the next poll sees the rest
                self.errors += 1

    def summary(self, kind: str) -> dict:
        """Ray: the ``ray::`` workers (not raylet, GCS or Ray's helper processes); local: every Python
        process below the driver (the fork server, its workers, the resource tracker)."""
        ray = kind == "ray"
        workers = [p for p in self.seen.values() if (p["name"].startswith("ray::") if ray else "python" in p["name"])]
        return {"sampled_worker_mb": max((p["hwm_mb"] for p in workers), default=0),
                "sampled_worker_cpu_s": round(sum(p["cpu_s"] for p in workers), 1), "sampled_workers": len(workers),
                "sampler_errors": self.errors}


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
            with WorkerSampler() as sampler:
                r = res[kind] = run(pool, kind, name, params[name], args.workers, args.timeout, passes=1)
            r.update(sampler.summary(kind))
            print(json.dumps({"rows": args.rows, "job": name, "executor": kind, **r}), flush=True)
        loc, ray = res["local"], res["ray"]
        for kind, r in res.items():
            rows_out.append({
                "rows": args.rows, "job": name, "executor": kind, "kept": r["kept"], "start s": r["start_s"],
                "total s": r["total_s"], "map s": r["map_s"], "ray/local": f"{ray['total_s'] / loc['total_s']:.2f}" if kind == "ray" else "",
                "driver cpu s": r["driver_cpu_s"], "worker cpu s": r["worker_cpu_s"], "driver MB": r["peak_rss_mb"],
                "worker MB": r["worker_mb"], "sampled worker MB": r["sampled_worker_mb"],
                "sampled worker cpu s": r["sampled_worker_cpu_s"], "ray sys MB": r.get("ray_sys_mb", ""),
                "same bytes": "yes" if loc["sha256"] == ray["sha256"] else f"NO {loc['sha256']} {ray['sha256']}",
                "stages s": json.dumps({k: round(v, 1) for k, v in r["stages"].items() if isinstance(v, int | float)}),
            })
    print(table(rows_out, list(rows_out[0])))


if __name__ == "__main__":
    main()
