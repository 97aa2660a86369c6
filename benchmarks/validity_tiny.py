"""The seed methods' claims in miniature on the tiny track (3 seeds per run, 10 for the oracle; track world).

Tables (each cell mean ± std over seeds; "wins"/"loses" only when the difference exceeds 2 × the
larger seed std, "tied" otherwise: ``clipsift.seedstats.seed_gap``, the page's tie rule):

* ``oracle``: every task must be learnable — a run on the pool's clean ground-truth subset
  (``clipsift.synth.quality.oracle_mask``) against ``no_filter``, with ``--oracle-seeds`` (10).
  A task is learnable when the oracle's mean lead, taken seed by seed, exceeds 2 standard errors
  over at least 10 seeds (``clipsift.seedstats.paired_gap``) and its mean is at least twice chance
  and 2 standard errors above it (the task list's ``random_score``). docs/tiny_track.md gives the measurements
  behind this reading of "beats no_filter by more than 2 seed std".
* ``a``: at a 30% budget and equal samples seen, every filter against ``clip_score`` and
  ``random``, per task and on the tail concepts.
* ``b``: DBP's compute claim — ``dbp`` (30% budget) trained on 30% of the samples seen against
  ``no_filter`` and ``clip_score`` at 100%.
* ``c``: ClipCov at 10% against ``clip_score`` at 10%, with the reference refresh interval
  (``batch`` B = 200) and with B = 20.

    .venv/bin/python benchmarks/validity_tiny.py --out /tmp/validity [--tables oracle a b c] [--jobs 2]
    .venv/bin/python benchmarks/validity_tiny.py --out /tmp/validity --report-only

Resumable: finished runs are reused, so the tables can be printed while runs are still going
(``--report-only``); a run missing from a table is named. Runs use the demo's pool, budget and
samples seen unless ``--rows``/``--train-num-samples`` say otherwise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from clipsift.eval.demo import (
    DEFAULT_DEMO_SAMPLES,
    DEFAULT_FRACTION,
    DEFAULT_ROWS,
    FILTER_PARAMS,
    _make_subset,
    _timed_run,
    run_quality,
)
from clipsift.eval.tasks import load_tasks
from clipsift.eval.track import TrackSpec
from clipsift.eval.train import TrainConfig
from clipsift.io import write_json
from clipsift.leaderboards.tasks import tiny_tasks
from clipsift.log import configure_logging
from clipsift.seedstats import LEARNABLE_MIN_SEEDS, TIE_SIGMAS, mean_std, paired_gap, seed_gap

PARAMS = dict(FILTER_PARAMS)
# "well above chance": the oracle's mean at least twice the task's random score (and 2 SE above it)
WELL_ABOVE_CHANCE = 2.0


def run_plan(fraction: float) -> list[dict]:
    """Every run label: its subset (filter at a budget, or the oracle) and its share of samples seen."""
    plan = [
        {"label": "oracle", "filter": "oracle", "fraction": None, "seen": 1.0, "tables": ("oracle",)},
        {"label": "no_filter", "filter": "no_filter", "fraction": None, "seen": 1.0, "tables": ("oracle", "b")},
    ]
    for name in ("clip_score", "random", "dbp", "clipcov", "negclip", "basic_filter"):
        plan.append({"label": name, "filter": name, "fraction": fraction, "seen": 1.0,
                     "tables": ("a", "b") if name == "clip_score" else ("a",)})
    # ClipCov with a refresh interval inside every class's budget (about 120 picks per class here)
    plan.append({"label": "clipcov_b20", "filter": "clipcov", "fraction": fraction, "seen": 1.0, "tables": ("a",),
                 "set": {"batch": 20}})
    plan.append({"label": "clipcov_10", "filter": "clipcov", "fraction": 0.1, "seen": 1.0, "tables": ("c",)})
    plan.append({"label": "clip_score_10", "filter": "clip_score", "fraction": 0.1, "seen": 1.0, "tables": ("c",)})
    # the reason found for (c): at B = 200 no class of a small pool ever refreshes its scores (a class
    # gets about 40 picks at 10%); B = 20 refreshes inside every class's budget
    plan.append({"label": "clipcov_10_b20", "filter": "clipcov", "fraction": 0.1, "seen": 1.0, "tables": ("c",),
                 "set": {"batch": 20}})
    plan.append({"label": "dbp_seen30", "filter": "dbp", "fraction": fraction, "seen": 0.3, "tables": ("b",)})
    return plan


def _subset(entry: dict, pool: Path, out: Path, rows: int) -> Path | None:
    if entry["filter"] == "oracle":
        from clipsift.subset import manifest_path, write_subset
        from clipsift.synth.quality import oracle_uids

        path = out / "subsets" / "oracle.npy"
        if not manifest_path(path).exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_subset(path, oracle_uids(pool), {"filter": "oracle", "params": {"definition": "clean ground truth"}})
        return path
    f = entry["fraction"]
    tag = "" if f in (None, DEFAULT_FRACTION) else f"_f{round(100 * f)}"
    tag += "".join(f"_{k}{v}" for k, v in sorted(entry.get("set", {}).items()))
    params = {**PARAMS[entry["filter"]](f or DEFAULT_FRACTION, rows), **entry.get("set", {})}
    return _make_subset(entry["filter"], params, pool,
                        out / "subsets" / f"{entry['filter']}{tag}.npy")


def read_run(run_dir: Path) -> dict | None:
    """A finished run's main metrics, average, subset size, samples seen and CPU seconds; None if unfinished."""
    state = run_dir / "track_state.json"
    if not (run_dir / "run.json").exists() or not state.exists() or not json.loads(state.read_text()).get("complete"):
        return None
    run = json.loads((run_dir / "run.json").read_text())
    recs = [json.loads(x) for x in (run_dir / "eval_results.jsonl").read_text().splitlines() if x.strip()]
    return {**{r["key"]: r["metrics"]["main_metric"] for r in recs}, "average": run["average"],
            "size": run["dataset_size"], "seen": run["samples_seen"], "cpu_s": run.get("timings", {}).get("cpu_s")}


def seed_runs(out: Path, label: str) -> dict[int, Path]:
    """{seed: folder} of the runs ``OUT/runs/<label>_s<seed>``, in seed order (finished or not)."""
    found = {}
    for d in (out / "runs").glob(f"{label}_s*"):
        seed = d.name.rsplit("_s", 1)[1]
        if seed.isdigit():
            found[int(seed)] = d
    return dict(sorted(found.items()))


def verdict(a: list[float], b: list[float]) -> str:
    """'wins' / 'loses' when mean(a) - mean(b) exceeds 2 × the larger seed std, else 'tied'."""
    gap = seed_gap(a, b)
    return "n/a (a side has fewer than 2 seeds)" if gap is None else gap.text()


def learnable(oracle: dict[int, float | None], no_filter: dict[int, float | None], chance: float | None) -> tuple[bool, str]:
    """The oracle table's verdict for one task: its lead paired by seed, and its distance from chance."""
    gap = paired_gap(oracle, no_filter)
    if gap is None:
        return False, "n/a (the two sides share fewer than 2 seeds)"
    from scipy.stats import t as student_t

    p = float(2 * student_t.sf(abs(gap.t), gap.n - 1)) if gap.se > 0 else 0.0
    text = f"{gap.text()}, paired t p {p:.3f}"
    ok = gap.beats
    if chance is not None:
        vals = [v for v in oracle.values() if v is not None]
        m, s = mean_std(vals)
        above = s is not None and m >= WELL_ABOVE_CHANCE * chance and m - chance > TIE_SIGMAS * s / len(vals) ** 0.5
        ok = ok and above
        text += f"; oracle {m / chance:.1f}× chance" + ("" if above else f" (needs {WELL_ABOVE_CHANCE:g}× and 2 SE above)")
    return ok, text


def backfill_quality(out: Path) -> None:
    """Add the subset's seedless figures to run.json files written without them (older runs)."""
    if not (out / "quality.json").exists() or not (out / "runs").is_dir():
        return
    quality = json.loads((out / "quality.json").read_text())
    for run_json in (out / "runs").glob("*/run.json"):
        run = json.loads(run_json.read_text())
        q = quality.get(run.get("method"))
        if q and "data_quality" not in run:
            run["data_quality"] = q
            write_json(run_json, run)


def report(out: Path, plan: list[dict], tables: list[str], seeds: list[int], oracle_seeds: list[int]) -> str:
    cols = [t.key for t in load_tasks("tiny")] + ["average"]
    short = {c: c.removeprefix("tiny/") for c in cols}
    chance = {t.key: t.random_score for t in tiny_tasks().tasks}
    by_seed = {e["label"]: {s: r for s in sorted(set(seeds) | set(oracle_seeds))
                            if (r := read_run(out / "runs" / f"{e['label']}_s{s}"))} for e in plan}
    quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else {}
    titles = {"oracle": "Oracle (clean ground truth) against no_filter: is every task learnable?",
              "a": "(a) 30% budget, equal samples seen: every filter against clip_score and random",
              "b": "(b) DBP's compute claim: dbp trained on 30% of the samples seen against no_filter and clip_score at 100%",
              "c": "(c) ClipCov at 10% against clip_score at 10%"}
    lines = []
    for tab in tables:
        labels = [e["label"] for e in plan if tab in e["tables"]]
        tab_seeds = oracle_seeds if tab == "oracle" else seeds
        runs = {lab: [by_seed[lab][s] for s in tab_seeds if s in by_seed[lab]] for lab in labels}
        lines += ["", f"### {titles[tab]}", "",
                  "| run | seeds | size | seen | " + " | ".join(short[c] for c in cols)
                  + " | mismatched % | repeats % | non-English % | concepts | tail % |",
                  "|---|---|---|---|" + "---|" * (len(cols) + 5)]
        for lab in labels:
            rs = runs[lab]
            q = quality.get(lab, {})
            qcells = [str(q.get("mismatched", "—")), str(q.get("duplicated", "—")), str(q.get("non_english", "—")),
                      f"{q.get('concepts', '—')}/{q.get('concepts_of', '—')}", str(q.get("tail", "—"))]
            if not rs:
                lines.append(f"| {lab} | 0 | | | " + " | ".join("—" for _ in cols) + " | " + " | ".join(qcells) + " |")
                continue
            cells = []
            for c in cols:
                m, s = mean_std([r.get(c) for r in rs])
                cells.append("—" if m is None else f"{m:.3f} ± {s or 0.0:.3f}")
            lines.append(f"| {lab} | {len(rs)} | {rs[0]['size']} | {rs[0]['seen']} | " + " | ".join(cells) + " | "
                         + " | ".join(qcells) + " |")
        refs = {"oracle": ["no_filter"], "a": ["clip_score", "random"], "b": ["no_filter", "clip_score"],
                "c": ["clip_score_10"]}[tab]
        subjects = {"oracle": ["oracle"], "a": [x for x in labels if x not in ("clip_score", "random")] + ["clip_score"],
                    "b": ["dbp_seen30"], "c": [x for x in labels if x != "clip_score_10"]}[tab]
        lines.append("")
        for sub in subjects:
            for ref in refs:
                if sub == ref or not runs[sub] or not runs[ref]:
                    continue
                per_task = ", ".join(f"{short[c]} {verdict([r.get(c) for r in runs[sub]], [r.get(c) for r in runs[ref]]).split(' ')[0]}"
                                     for c in cols)
                lines.append(f"* {sub} vs {ref}: average {verdict([r['average'] for r in runs[sub]], [r['average'] for r in runs[ref]])}; {per_task}")
                if tab == "oracle":
                    verdicts = {c: learnable({s: r.get(c) for s, r in by_seed[sub].items() if s in oracle_seeds},
                                             {s: r.get(c) for s, r in by_seed[ref].items() if s in oracle_seeds},
                                             chance.get(c)) for c in cols if c != "average"}
                    lines.append(f"* learnable ({sub}'s lead over {ref} paired by seed > 2 standard errors, "
                                 f"at least {LEARNABLE_MIN_SEEDS} seeds; the oracle at least {WELL_ABOVE_CHANCE:g}× chance and 2 standard errors above it):")
                    lines += [f"  * {short[c]}: {'yes' if ok else 'no'}: {text}" for c, (ok, text) in verdicts.items()]
                    failed = [short[c] for c, (ok, _) in verdicts.items() if not ok]
                    lines.append("* every task learnable: " + ("yes" if not failed else f"no ({', '.join(failed)})"))
    cpu = [r["cpu_s"] for rs in by_seed.values() for r in rs.values() if r.get("cpu_s")]
    if cpu:
        lines.append(f"\nCPU seconds per run (train + evaluate): median {statistics.median(cpu):.0f}, max {max(cpu):.0f}")
    return "\n".join(lines)


def _check_recipe(out: Path, open_clip_args: str) -> None:
    """Finished runs are reused, so one folder holds one recipe: refuse other flags than its runs'."""
    recipe = out / "open_clip_args.json"
    if recipe.exists():
        before = json.loads(recipe.read_text())
        if before != open_clip_args:
            sys.exit(f"{out}: its runs were trained with --open-clip-args {before!r}, not {open_clip_args!r}; "
                     "use a fresh --out for another recipe")
    elif (out / "runs").is_dir() and any((out / "runs").iterdir()) and open_clip_args:
        sys.exit(f"{out}: holds runs of the default recipe; use a fresh --out for --open-clip-args")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(recipe, open_clip_args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of tables a, b and c")
    ap.add_argument("--oracle-seeds", type=int, nargs="+", default=list(range(LEARNABLE_MIN_SEEDS)),
                    help="seeds of the oracle table (its verdict needs at least 10)")
    ap.add_argument("--pool-seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=DEFAULT_FRACTION)
    ap.add_argument("--train-num-samples", type=int, default=DEFAULT_DEMO_SAMPLES)
    ap.add_argument("--tables", nargs="+", default=["oracle", "a", "b", "c"], choices=["oracle", "a", "b", "c"])
    ap.add_argument("--jobs", type=int, default=2, help="track runs at once (one torch thread each)")
    ap.add_argument("--labels", nargs="+", default=None,
                    help="train only these run labels (e.g. dbp_seen30); a second process can then take other labels")
    ap.add_argument("--open-clip-args", default="",
                    help="extra open_clip training flags for every run, e.g. '--lr 2e-3' (recipe experiments, in a fresh --out: the last flag wins)")
    ap.add_argument("--report-only", action="store_true", help="print the tables from finished runs")
    args = ap.parse_args()
    configure_logging(-1)
    out = Path(args.out).resolve()
    pool = out / "pool"
    plan = [e for e in run_plan(args.fraction) if set(e["tables"]) & set(args.tables)]
    if not args.report_only:
        _check_recipe(out, args.open_clip_args)
        from clipsift.eval.tiny_suite import make_tiny_suite
        from clipsift.subset import read_subset
        from clipsift.synth import make_pool

        if not (pool / "world.json").exists():
            make_pool(pool, args.rows, seed=args.pool_seed, images=True, shard_rows=max(1000, args.rows // 4), world="track")
        suite = make_tiny_suite(out / "tiny_evalsets", pool)
        specs, quality = [], {}
        for e in plan:
            subset = _subset(e, pool, out, args.rows)
            if subset is None:
                print(f"{e['label']}: filter unavailable, skipped", file=sys.stderr)
                continue
            quality[e["label"]] = run_quality(pool, read_subset(subset))
            seeds = sorted(set(args.seeds if (set(e["tables"]) - {"oracle"}) & set(args.tables) else [])
                           | set(args.oracle_seeds if "oracle" in e["tables"] and "oracle" in args.tables else []))
            for s in seeds:
                cfg = TrainConfig(scale="tiny", data_dir="", output_dir="", seed=s,
                                  train_num_samples=int(args.train_num_samples * e["seen"]),
                                  extra_args=shlex.split(args.open_clip_args))
                specs.append((s, TrackSpec(subset=str(subset), shards=str(pool / "shards"), out=str(out / "runs" / f"{e['label']}_s{s}"),
                                           train=cfg, suite="tiny", eval_data_dir=str(suite), pool=str(pool),
                                           method=e["label"], reshard_workers=1)))
        (out / "quality.json").write_text(json.dumps(quality, indent=1))
        # table order first (oracle, then a, ...), all seeds of a label before the next seed round
        # priority: the oracle table, then the runs that complete tables (b) and (c), then (a), seed by seed
        tables_of = {e["label"]: set(e["tables"]) for e in plan}

        def rank(label: str) -> int:
            t = tables_of[label]
            return 0 if "oracle" in t else 1 if {"a", "b"} <= t else 2 if "b" in t else 3 if "c" in t else 4

        def order(item):
            i, (seed, sp) = item
            r = rank(sp.method)
            return (r, seed if r >= 3 else 0, i)

        specs = [sp for _, (_, sp) in sorted(enumerate(specs), key=order)]
        todo = [sp for sp in specs if read_run(Path(sp.out)) is None and (args.labels is None or sp.method in args.labels)]
        t0 = time.perf_counter()
        print(f"validity: {len(todo)} runs to do here ({len(specs) - len(todo)} done or left to another process), {args.jobs} at a time", file=sys.stderr, flush=True)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_timed_run, sp, True, str(out / "runs.log")): sp for sp in todo}
            for fut in as_completed(futs):
                sp = futs[fut]
                try:
                    run, dt = fut.result()
                    print(f"[{time.perf_counter() - t0:6.0f} s] {Path(sp.out).name}: average {run['average']:.4f} ({dt:.0f} s)", file=sys.stderr, flush=True)
                except Exception as exc:  # report and go on: one failed run must not stop the others
                    print(f"{Path(sp.out).name}: failed ({exc})", file=sys.stderr, flush=True)
    backfill_quality(out)
    text = (f"tiny track validity: pool {args.rows} rows (track world), budget {args.fraction:.0%}, "
            f"seeds {args.seeds}" + (f" (oracle table {args.oracle_seeds})" if "oracle" in args.tables else "")
            + f", {args.train_num_samples} samples seen"
            + (f", open_clip args {args.open_clip_args!r}" if args.open_clip_args else "") + report(out, plan, args.tables, args.seeds, args.oracle_seeds))
    (out / "validity.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
