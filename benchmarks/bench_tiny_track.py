"""Tiny track speed: reshard (samples/s), tiny training throughput (samples/s) and tiny-suite
evaluation time, on a synthetic pool with images.

Usage: .venv/bin/python benchmarks/bench_tiny_track.py [--rows 8000] [--samples 16384] [--dir /tmp]
Prints the machine load too: on a shared machine the figures scale with the free cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from _harness import table

from clipsift.log import configure_logging


def _step_seconds(log: str) -> float | None:
    """Seconds between the first and the last step line of open_clip's out.log (start-up excluded)."""
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d),(\d\d:\d\d:\d\d) \| INFO \| Train Epoch", log, re.M)
    if len(stamps) < 2:
        return None
    import datetime as dtm

    first, last = (dtm.datetime.strptime(" ".join(s), "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--samples", type=int, default=None, help="samples seen (default: the tiny scale's)")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    configure_logging(-1)
    from clipsift.eval.evaluate import evaluate
    from clipsift.eval.reshard import ReshardArgs, reshard
    from clipsift.eval.tiny_suite import make_tiny_suite
    from clipsift.eval.train import TrainConfig, run_training
    from clipsift.subset import write_subset
    from clipsift.synth import make_pool

    work = Path(tempfile.mkdtemp(prefix="clipsift-bench-tiny-", dir=args.dir))
    rows = []
    try:
        print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
        make_pool(work / "pool", args.rows, seed=0, images=True, shard_rows=max(1000, args.rows // 4), world="track")
        import pyarrow.parquet as pq

        from clipsift.uids import hex_to_records

        uids = hex_to_records(pq.read_table(work / "pool" / "truth.parquet", columns=["uid"])["uid"])
        subset = write_subset(work / "all.npy", uids)
        t0 = time.perf_counter()
        res = reshard(ReshardArgs(str(work / "pool" / "shards"), str(work / "shards"), str(subset)))
        dt = time.perf_counter() - t0
        rows.append({"stage": "reshard", "items": res.processed_count, "seconds": round(dt, 1), "per_s": round(res.processed_count / dt, 1)})

        # the default layout first, then channels-last (what training uses on CPU), one after the other
        for layout, flag in (("default layout", "0"), ("channels-last", "1")):
            os.environ["CLIPSIFT_CHANNELS_LAST"] = flag
            run_dir = work / f"run_cl{flag}"
            t0 = time.perf_counter()
            out = run_training(TrainConfig(scale="tiny", data_dir=str(work / "shards"), output_dir=str(run_dir), train_num_samples=args.samples))
            dt = time.perf_counter() - t0
            loop = _step_seconds((run_dir / "tiny_scale" / "out.log").read_text())
            rows.append({"stage": f"train, {layout} (wall, incl. start-up)", "items": out["samples_seen"], "seconds": round(dt, 1), "per_s": round(out["samples_seen"] / dt, 1)})
            if loop:
                rows.append({"stage": f"train, {layout} (steps only)", "items": out["samples_seen"], "seconds": round(loop, 1), "per_s": round(out["samples_seen"] / loop, 1)})
        os.environ.pop("CLIPSIFT_CHANNELS_LAST")

        suite = make_tiny_suite(work / "suite", work / "pool")
        t0 = time.perf_counter()
        recs = evaluate(run_dir / "tiny_scale", run_dir, str(suite), "tiny", num_workers=0)
        dt = time.perf_counter() - t0
        from clipsift.leaderboards.tasks import tiny_tasks_path

        sizes = {ln.split("\t")[0]: int(ln.split("\t")[5]) for ln in tiny_tasks_path().read_text().splitlines()[2:] if ln.strip()}
        n = sum(sizes.get(r["key"], 0) for r in recs)
        rows.append({"stage": f"evaluate tiny suite ({len(recs)} tasks)", "items": n, "seconds": round(dt, 1), "per_s": round(n / dt, 1)})
        print(table(rows, ["stage", "items", "seconds", "per_s"]))
        print(f"load after={os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
