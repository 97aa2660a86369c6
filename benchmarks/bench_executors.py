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
    """Wall time and driver memory at 128M and 12.8B rows on N machines, from measured costs.

    CPU seconds are used where they were measured (steady on a shared machine); wall-only figures
    (the sorted write, semdedup's stages) are turned into CPU seconds with the run's own
    CPU/wall ratio. Serial stages run on the driver (its ``cores`` threads at best), parallel
    ones on N x ``cores``. ``shard_rows``: rows per shard of the projected pool (DataComp: about
    10k), which sets the number of Ray tasks; "fixed" assumes 8 shards per task.
    """
    runs = _load(paths)
    cs, nf = _pick(runs, "clip_score", "local"), _pick(runs, "no_filter", "local")
    csr = _pick(runs, "clip_score", "ray")
    sd = _pick(runs, "semdedup", "local")
    if not (cs and nf):
        raise SystemExit("need clip_score and no_filter local runs in the logs")
    unit = {
        "clip_score map CPU s/row (2 passes, workers)": cs["worker_cpu_s"] / cs["rows"],
        "clip_score map CPU s/row on Ray workers": csr["worker_cpu_s"] / csr["rows"] if csr else float("nan"),
        "clip_score driver CPU s/row (ingest, concat, partition, sort kept)": cs["driver_cpu_s"] / cs["rows"],
        "clip_score driver bytes/row (peak - base)": (cs["peak_rss_mb"] - cs["driver_base_mb"]) * 2**20 / cs["rows"],
        "no_filter driver CPU s/row (read, decode, spill; threads)": nf["driver_cpu_s"] / nf["rows"],
        "sorted write s/row (bucket sort + write, wall)": nf["write_s"] / nf["rows"],
        "no_filter driver MB (peak)": nf["peak_rss_mb"],
    }
    if csr and csr["rows"] == cs["rows"]:  # driver CPU per Ray task: submit, get, deserialise (2 passes)
        unit["Ray driver CPU s/task"] = max(csr["driver_cpu_s"] - cs["driver_cpu_s"], 0) / (2 * cs["shards"])
    else:
        unit["Ray driver CPU s/task"] = float("nan")
    print(f"measured at {cs['rows']:,} rows ({cs['shards']} shards):")
    for k, v in unit.items():
        print(f"  {k}: {v:.3g}")
    sd_unit = None
    if sd:
        cpu = sd["driver_cpu_s"] + sd["worker_cpu_s"]
        scale = cpu / sd["total_s"]  # CPU seconds per wall second in that run
        k0 = -(-sd["rows"] // 2500)
        st = sd["stages"]
        flop = 2 * 768 / FLOPS_PER_CORE  # CPU s per row-centroid of the assignment's dot products (assumed rate)
        assign_cpu = st.get("assign", 0) * scale
        sd_unit = {"kmeans_cpu_s": st.get("kmeans", 0) * scale, "assign_io_cpu_per_row": max(assign_cpu - sd["rows"] * k0 * flop, 0) / sd["rows"],
                   "assign_dot_cpu_per_row_centroid": flop, "pairwise_cpu_per_row": st.get("pairwise", 0) * scale / sd["rows"], "k": k0,
                   "pairwise_cpu_per_cluster": st.get("pairwise", 0) * scale / k0}
        print(f"semdedup at {sd['rows']:,} rows, k={k0}: CPU/wall {scale:.2f}; " + ", ".join(f"{k}={v:.3g}" for k, v in sd_unit.items()))
    out = []
    for rows in (128_000_000, 12_800_000_000):
        for n in machines:
            par, ser = n * cores, cores
            kept = 0.3 * rows
            cs_map = unit["clip_score map CPU s/row (2 passes, workers)"] * rows / par
            cs_drv = unit["clip_score driver CPU s/row (ingest, concat, partition, sort kept)"] * rows
            write = unit["sorted write s/row (bucket sort + write, wall)"]
            nf_drv = unit["no_filter driver CPU s/row (read, decode, spill; threads)"] * rows / ser
            tasks = 2 * rows / shard_rows * unit["Ray driver CPU s/task"]  # one driver submits every task
            row = {"rows": f"{rows / 1e6:,.0f}M", "machines": n, "cores": par,
                   "clip_score today": _fmt_s(cs_map + cs_drv + write * kept + tasks),
                   "of which Ray tasks": _fmt_s(tasks),
                   "clip_score driver GB": f"{unit['clip_score driver bytes/row (peak - base)'] * rows / 2**30:,.1f}",
                   "clip_score fixed": _fmt_s((cs_map * par + cs_drv + write * kept) / par + tasks / 8),
                   "no_filter today": _fmt_s(nf_drv + write * rows),
                   "no_filter fixed": _fmt_s((nf_drv * ser + write * rows) / par + tasks / 16)}
            if sd_unit:
                def semdedup(k, spread, rows=rows, par=par, ser=ser):
                    kmeans = sd_unit["kmeans_cpu_s"] * k / sd_unit["k"] / ser  # on the driver (faiss threads)
                    assign = (sd_unit["assign_io_cpu_per_row"] + sd_unit["assign_dot_cpu_per_row_centroid"] * k) * rows / par
                    pair = sd_unit["pairwise_cpu_per_row"] * rows / (par if spread else ser)
                    return _fmt_s(kmeans + assign + pair)
                k = -(-rows // 2500)
                row["semdedup today (k=n/2500)"] = semdedup(k, False)
                row["semdedup fixed (k=50k, clusters as tasks)"] = semdedup(50_000, True)
                # per-shard cluster counts (shards x k int64) and the kept uids (96 % of 16 B/row), both in the driver
                row["semdedup driver GB"] = f"{(rows / shard_rows * k * 8 + 0.96 * rows * 16) / 2**30:,.1f}"
            out.append(row)
    print(table(out, list(out[0])))


if __name__ == "__main__":
    main()
