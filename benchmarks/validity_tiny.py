"""Validity of the tiny track: clip_score (30%) must beat no_filter at equal samples seen.

Trains each subset with 3 seeds on the tiny scale, evaluates on the tiny suite and prints the
per-task and average table with seed means and standard deviations. The criterion of the issue:
mean(clip_score) - mean(no_filter) > 2 x seed std (the larger of the two methods' stds).

    .venv/bin/python benchmarks/validity_tiny.py --out /tmp/validity [--rows 12000] [--seeds 0 1 2]

Resumable: finished runs are reused. On 2 cores, run the two methods side by side (each run uses
one torch thread): first ``--report-only`` (builds pool, suite and subsets), then ``--methods
clip_score`` and ``--methods no_filter`` in parallel, then ``--report-only`` again for the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from clipsift.eval.demo import _make_subset
from clipsift.eval.tasks import load_tasks
from clipsift.eval.tiny_suite import make_tiny_suite
from clipsift.eval.track import TrackSpec, run_track
from clipsift.eval.train import TrainConfig
from clipsift.log import configure_logging

METHODS = (("no_filter", {}), ("clip_score", {"fraction": 0.3, "arch": "l14"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=12_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pool-seed", type=int, default=0)
    ap.add_argument("--train-num-samples", type=int, default=None, help="default: the tiny scale's")
    ap.add_argument("--methods", nargs="+", default=[m for m, _ in METHODS], help="run only these (runs of others are read back)")
    ap.add_argument("--report-only", action="store_true", help="print the table from finished runs")
    args = ap.parse_args()
    configure_logging(-1)
    out = Path(args.out).resolve()
    pool = out / "pool"
    if not (pool / "world.json").exists():
        from clipsift.synth import make_pool

        make_pool(pool, args.rows, seed=args.pool_seed, images=True, shard_rows=max(1000, args.rows // 4))
    suite = make_tiny_suite(out / "tiny_evalsets", pool)
    tasks = load_tasks("tiny")
    scores: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for name, params in METHODS:
        subset = _make_subset(name, params, pool, out / "subsets" / f"{name}.npy")
        for seed in args.seeds:
            run_dir = out / "runs" / f"{name}_s{seed}"
            if name not in args.methods or args.report_only:
                if not (run_dir / "run.json").exists():
                    continue
                run = json.loads((run_dir / "run.json").read_text())
                recs = [json.loads(x) for x in (run_dir / "eval_results.jsonl").read_text().splitlines()]
                scores.setdefault(name, []).append({**{r["key"]: r["metrics"]["main_metric"] for r in recs}, "average": run["average"], "size": run["dataset_size"], "seen": run["samples_seen"]})
                continue
            cfg = TrainConfig(scale="tiny", data_dir="", output_dir="", seed=seed, train_num_samples=args.train_num_samples)
            run = run_track(TrackSpec(subset=str(subset), shards=str(pool / "shards"), out=str(out / "runs" / f"{name}_s{seed}"),
                                      train=cfg, suite="tiny", eval_data_dir=str(suite), method=name))
            recs = [json.loads(x) for x in (out / "runs" / f"{name}_s{seed}" / "eval_results.jsonl").read_text().splitlines()]
            scores.setdefault(name, []).append({**{r["key"]: r["metrics"]["main_metric"] for r in recs}, "average": run["average"], "size": run["dataset_size"], "seen": run["samples_seen"]})
    if set(scores) != {m for m, _ in METHODS}:
        print(f"runs finished so far: { {k: len(v) for k, v in scores.items()} }")
        return
    cols = [t.key for t in tasks] + ["average"]

    def ms(vals):
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    print(f"tiny track validity: pool {args.rows} rows, seeds {args.seeds}, samples seen {scores['no_filter'][0]['seen']}, {time.perf_counter() - t0:.0f} s")
    print("| method | size | " + " | ".join(c.replace("tiny/", "") for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, rows in scores.items():
        cells = []
        for c in cols:
            m, s = ms([r[c] for r in rows])
            cells.append(f"{m:.3f} ± {s:.3f}")
        print(f"| {name} | {rows[0]['size']} | " + " | ".join(cells) + " |")
    mn, sn = ms([r["average"] for r in scores["no_filter"]])
    mc, sc = ms([r["average"] for r in scores["clip_score"]])
    diff, bound = mc - mn, 2 * max(sn, sc)
    print(f"clip_score - no_filter = {diff:+.4f}; 2 x seed std = {bound:.4f} -> {'PASS' if diff > bound else 'FAIL'}")


if __name__ == "__main__":
    main()
