"""Local vs Ray executor on a uid + CLIP-score pool (issue 12, part a): ``no_filter``, ``random``
and ``clip_score`` (l14, fraction 0.3), both executors side by side in one invocation.

    .venv/bin/python benchmarks/bench_executors.py --rows 1000000            # validate
    .venv/bin/python benchmarks/bench_executors.py --rows 10000000 100000000 --repeat 1

Pools (``uid`` + ``clip_l14_similarity_score`` float64, ``--shard-rows`` rows per shard) are
generated once under $CLIPSIFT_BENCH_DIR (default /tmp/clipsift-bench); delete them afterwards.
Every run is a fresh interpreter; Ray is started in it (``make_executor("ray", workers=W)``, a
local instance with W CPUs, as ``clipsift filter --executor ray`` does, but started with
``address="local"`` so that it never joins another Ray cluster running on the machine) and its
start-up is timed apart from the filter. For each run:

* ``select s`` / ``write s``: the filter's ``select`` and the sorted ``.npy`` write (the two
  parts of ``run_to_subset``); ``map s``: time spent inside ``map_shards`` generators (includes the
  driver consuming each result), the rest of ``select`` is driver-only work (gather, threshold,
  in-memory sort).
* ``driver MB``: the driver's VmHWM; ``driver base MB``: its VmHWM right after the executor was
  made (Python + numpy + pyarrow, + the Ray client library with Ray).
* ``worker MB``: the largest worker's VmHWM. Local: ``RUSAGE_CHILDREN`` (process workers, after
  the pool has exited). Ray: the driver walks its own process tree (/proc/PID/task/*/children:
  driver -> raylet -> ``ray::`` workers) before ``ray.shutdown()`` and reads each worker's
  VmHWM and CPU time from /proc; ``worker base MB`` is the same read right after ``ray.init``
  (an idle Ray worker). Other Ray processes (gcs_server, raylet, agents) are reported as
  ``ray sys MB`` (sum of their current RSS).
* ``worker cpu s``: CPU seconds the workers spent during the reported pass (Ray: live ``ray::``
  processes read before and after; local: ``RUSAGE_CHILDREN`` before and after), used for the
  per-shard cost. ``no_filter`` and ``random`` map with ``threads=True``, which both executors
  run as threads in the driver (their per-shard work is in ``cpu s`` of the driver).
* ``sha256``: of the written ``.npy``: local and Ray must give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import isolated, table, uid_score_pool  # noqa: E402

JOBS = {
    "no_filter": {},
    "random": {"fraction": 0.3, "seed": 0},
    "clip_score": {"arch": "l14", "fraction": 0.3},
}

RUN = """
import hashlib, os, resource, sys, tempfile, time
sys.path.insert(0, {bench!r})
from _harness import proc_stats, proc_tree

def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def hwm_mb():
    return proc_stats(os.getpid())["hwm_mb"]

def ray_procs():
    procs = [proc_stats(p) for p in proc_tree(os.getpid())[1:]]
    return [p for p in procs if p]

from clipsift.executor import make_executor
from clipsift.filter import RunContext
from clipsift.pool import Pool
from clipsift.registry import create_filter

class TimedContext(RunContext):
    map_s = 0.0
    def map_shards(self, *a, **k):
        gen = super().map_shards(*a, **k)
        def timed():
            t = time.perf_counter()
            try:
                for item in gen:
                    yield item
            finally:
                TimedContext.map_s += time.perf_counter() - t
        return timed()

t0 = time.perf_counter()
if {kind!r} == "ray":
    # the init RayExecutor does for a local instance, but with address="local": ray.init() with no
    # address joins a cluster another process on this machine started (a Ray test's Cluster, say)
    import ray
    ray.init(address="local", num_cpus={workers}, include_dashboard=False, log_to_driver=False, configure_logging=False)
ex = make_executor({kind!r}, workers={workers}, show_progress=False)
start_s = time.perf_counter() - t0
base = {{"driver_base_mb": hwm_mb()}}
if {kind!r} == "ray":
    for _ in range(50):  # idle workers appear shortly after ray.init
        idle = [p for p in ray_procs() if p["name"].startswith("ray::")]
        if len(idle) >= {workers}:
            break
        time.sleep(0.1)
    base["worker_base_mb"] = max((p["hwm_mb"] for p in idle), default=0)
def stage_seconds(details, prefix=""):
    # every "seconds" dict a filter puts in its details (StageClock: wall seconds per stage)
    out = {{}}
    for key, value in (details or {{}}).items():
        if key == "seconds" and isinstance(value, dict):
            out.update({{prefix + k: v for k, v in value.items()}})
        elif isinstance(value, dict):
            out.update(stage_seconds(value, prefix + key + "."))
    return out

pool = Pool({pool!r})
filt = create_filter({name!r}, {params!r})
passes = []
def worker_cpu():
    # CPU seconds of the workers so far: Ray's live ray:: processes below this driver, or the
    # local executor's finished process workers (each map's pool exits before the map returns)
    if {kind!r} == "ray":
        return sum(p["cpu_s"] for p in ray_procs() if p["name"].startswith("ray::"))
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime

for p in range({passes}):
    TimedContext.map_s = 0.0
    c0, w0 = cpu_self(), worker_cpu()
    with tempfile.TemporaryDirectory(dir={tmp!r}) as tmp:
        ctx = TimedContext(pool, ex, workdir=os.path.join(tmp, "work"))
        t1 = time.perf_counter()
        sel = filt.select(ctx)
        t2 = time.perf_counter()
        path, digest = sel.write(os.path.join(tmp, "s.npy"))
        t3 = time.perf_counter()
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    passes.append({{"kept": len(sel), "select_s": round(t2 - t1, 3), "map_s": round(TimedContext.map_s, 3), "write_s": round(t3 - t2, 3),
                   "total_s": round(t3 - t1, 3), "driver_cpu_s": round(cpu_self() - c0, 2), "worker_cpu_s": round(worker_cpu() - w0, 2), "sha256": h.hexdigest()[:16],
                   "stages": stage_seconds(sel.details)}})
    del sel
result = {{"rows": pool.num_rows, "shards": len(pool.shards), "start_s": round(start_s, 3),
          "shards_per_task": getattr(ex, "shards_per_task", lambda n: 1)(len(pool.shards)),
          **min(passes, key=lambda q: q["total_s"]), "first_total_s": passes[0]["total_s"], "passes": len(passes),
          "same_bytes_across_passes": len({{q["sha256"] for q in passes}}) == 1, **base}}
if {kind!r} == "ray":
    procs = ray_procs()
    workers = [p for p in procs if p["name"].startswith("ray::")]
    if not workers:
        raise SystemExit("no ray:: workers below this driver: ray.init joined another cluster (unset RAY_ADDRESS)")
    result["worker_mb"] = max((p["hwm_mb"] for p in workers), default=0)
    result["worker_anon_mb"] = max((p["anon_mb"] for p in workers), default=0)  # at the end, not the peak
    result["worker_shmem_mb"] = max((p["shmem_mb"] for p in workers), default=0)
    result["ray_workers"] = len(workers)
    result["ray_sys_mb"] = round(sum(p["rss_mb"] for p in procs if not p["name"].startswith("ray::")), 1)
    import ray
    ray.shutdown()
else:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["worker_mb"] = round(ru.ru_maxrss / 1024, 1)
"""


def run(pool: Path, kind: str, name: str, params: dict, workers: int, timeout: float = 3600, passes: int = 1) -> dict:
    """One fresh interpreter: make the executor, run ``name`` ``passes`` times (the best pass is
    reported, plus ``first_total_s``: a Ray pass starts cold workers)."""
    code = RUN.format(bench=str(Path(__file__).parent), kind=kind, workers=workers, pool=str(pool), name=name,
                      params=params, tmp=str(pool.parent), passes=passes)
    return isolated(code, timeout=timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="best of N (by total s), local and Ray alternating")
    ap.add_argument("--passes", type=int, default=2, help="filter runs per interpreter (first Ray pass starts workers)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--project", nargs="+", metavar="LOG", help="print the 128M / 12.8B projection from these logs' JSON lines instead")
    ap.add_argument("--cores", type=int, default=32, help="cores per machine in the projection")
    ap.add_argument("--machines", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--project-shard-rows", type=int, default=10_000, help="rows per shard of the projected pools")
    args = ap.parse_args()
    if args.project:
        project(args.project, args.cores, args.machines, args.project_shard_rows)
        return
    rows_out = []
    for rows in args.rows:
        pool = uid_score_pool(rows, args.shard_rows)
        for name in args.jobs:
            best: dict[str, dict] = {}
            for _ in range(args.repeat):
                for kind in ("local", "ray"):  # side by side: same load on the machine
                    r = run(pool, kind, name, JOBS[name], args.workers, args.timeout, args.passes)
                    print(json.dumps({"rows": rows, "job": name, "executor": kind, **r}), flush=True)
                    if kind not in best or r["total_s"] < best[kind]["total_s"]:
                        best[kind] = r
            loc, ray = best["local"], best["ray"]
            for kind, r in best.items():
                rows_out.append({
                    "rows": rows, "shard rows": args.shard_rows, "job": name, "executor": kind, "kept": r["kept"],
                    "start s": r["start_s"], "first pass s": r["first_total_s"], "select s": r["select_s"], "map s": r["map_s"], "write s": r["write_s"],
                    "total s": r["total_s"], "ray/local": f"{ray['total_s'] / loc['total_s']:.2f}" if kind == "ray" else "",
                    "driver cpu s": r["driver_cpu_s"], "worker cpu s": r["worker_cpu_s"],
                    "driver MB": r["peak_rss_mb"], "driver base MB": r["driver_base_mb"], "worker MB": r["worker_mb"],
                    "worker base MB": r.get("worker_base_mb", ""),
                    "worker anon/shm MB at end": f"{r['worker_anon_mb']}/{r['worker_shmem_mb']}" if "worker_anon_mb" in r else "", "ray sys MB": r.get("ray_sys_mb", ""),
                    "same bytes": "yes" if loc["sha256"] == ray["sha256"] else f"NO {loc['sha256']} {ray['sha256']}",
                })
    print(table(rows_out, list(rows_out[0])))


def _load(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def _pick(runs: list[dict], job: str, kind: str, shard_rows: int | None = None) -> dict | None:
    cand = [r for r in runs if r["job"] == job and r["executor"] == kind and (shard_rows is None or r["rows"] // r["shards"] == shard_rows)]
    return max(cand, key=lambda r: r["rows"]) if cand else None


FLOPS_PER_CORE = 50e9  # assumed fp32 rate of one core in a matrix product (AVX2 FMA); not measured here


def _fmt_s(x: float) -> str:
    if x < 10:
        return f"{x:.2g} s"
    return f"{x:.0f} s" if x < 120 else f"{x / 60:.0f} min" if x < 7200 else f"{x / 3600:.1f} h" if x < 172800 else f"{x / 86400:,.0f} days"


def project(paths: list[str], cores: int, machines: list[int], shard_rows: int = 10_000) -> None:
    """Wall time and driver load at 128M and 12.8B rows on N machines, from costs measured on Ray.

    Everything but two costs runs as tasks (map steps, the fraction cut's passes, the sort of
    the kept uids), so it divides by the N x ``cores`` of the cluster. The two serial costs are the
    driver's: a fixed CPU cost per task (submit, wait, deserialise) and the concatenation of the
    sorted ranges into the one ``.npy`` (read, two sha256, write) per kept row. Both are solved
    from the ``no_filter`` and ``random`` Ray runs (1 task per shard plus one sort task per
    ``TASK_ROWS`` kept rows). ``shard_rows``: rows per shard of the projected pool, which sets
    the number of tasks (DataComp ships about 10k rows per shard).
    """
    import numpy as np

    from clipsift.uidsort import TASK_ROWS

    runs = _load(paths)
    got = {job: _pick(runs, job, "ray") for job in ("no_filter", "random", "clip_score")}
    if not all(got.values()):
        raise SystemExit("need no_filter, random and clip_score Ray runs in the logs")
    # map tasks: one per shard in runs made before shards were batched (no shards_per_task in the log)
    tasks = {job: -(-r["shards"] // r.get("shards_per_task", 1)) + -(-r["kept"] // TASK_ROWS) for job, r in got.items()}
    nf, rd = got["no_filter"], got["random"]
    # driver CPU = tasks * per_task + kept * per_row, for no_filter and random: two equations
    a = np.array([[tasks["no_filter"], nf["kept"]], [tasks["random"], rd["kept"]]], dtype=float)
    per_task, per_row = np.linalg.solve(a, np.array([nf["driver_cpu_s"], rd["driver_cpu_s"]]))
    worker = {job: r["worker_cpu_s"] / r["rows"] for job, r in got.items()}
    passes = max(1.0, (got["clip_score"]["driver_cpu_s"] - per_row * got["clip_score"]["kept"]) / per_task / -(-got["clip_score"]["shards"] // got["clip_score"].get("shards_per_task", 1)))
    print(f"measured on Ray at {nf['rows']:,} rows ({nf['shards']} shards):")
    print(f"  driver CPU per task: {per_task * 1e3:.2f} ms; driver CPU per kept row (concatenate, hash, write): {per_row:.3g} s")
    for job, w in worker.items():
        print(f"  {job}: worker CPU per pool row {w:.3g} s; driver peak {got[job]['peak_rss_mb']:.0f} MB")
    print(f"  clip_score: about {passes:.1f} tasks per shard (the cut's histogram passes and the keep pass)")
    out = []
    for rows in (128_000_000, 12_800_000_000):
        shards = rows / shard_rows
        for n in machines:
            par = n * cores
            row = {"rows": f"{rows / 1e6:,.0f}M", "machines": n, "cores": par}
            for job, frac, per_shard in (("no_filter", 1.0, 1), ("clip_score", 0.3, passes)):
                kept = frac * rows
                n_tasks = shards * per_shard + kept / TASK_ROWS
                work = worker[job] * rows / par
                driver_tasks = n_tasks * per_task
                concat = kept * per_row
                row[f"{job} wall"] = _fmt_s(max(work, driver_tasks) + concat)
                row[f"{job}: driver per-task / concat"] = f"{_fmt_s(driver_tasks)} / {_fmt_s(concat)}"
                batched = n_tasks / 64 * per_task  # 64 shards per task
                row[f"{job} wall, 64 shards per task"] = _fmt_s(max(work, batched) + concat)
            out.append(row)
    print(table(out, list(out[0])))


if __name__ == "__main__":
    main()
