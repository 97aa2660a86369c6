"""``clipsift demo``: the whole DataComp loop on a laptop CPU.

Synthetic pool with images -> several filters at a common budget -> each subset resharded,
trained on the tiny scale and evaluated on the tiny suite (``clipsift track run``) -> leaderboard.
Every stage is resumable: rerunning the command skips finished subsets and runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.eval.track import RUN_FILE, TrackSpec, run_track
from clipsift.eval.train import TrainConfig
from clipsift.io import write_json
from clipsift.log import get_logger

log = get_logger("eval.demo")

DEFAULT_ROWS = 12_000
DEFAULT_FRACTION = 0.3
# Half the tiny scale's samples seen per run, so that seven runs fit in 15 minutes on 2 cores
# (two runs at a time); pass train_num_samples=None to use the full tiny budget.
DEFAULT_DEMO_SAMPLES = 16_384

# name -> parameters for budget fraction f of an n-row pool (every filter keeps int(f·n) rows,
# except no_filter and basic_filter, which have no budget); seed methods are included when registered
DEMO_FILTERS = (
    ("no_filter", lambda f, n: {}),
    ("random", lambda f, n: {"fraction": f}),
    ("basic_filter", lambda f, n: {}),
    ("clip_score", lambda f, n: {"fraction": f, "arch": "l14"}),
    ("negclip", lambda f, n: {"fraction": f, "arch": "l14"}),
    ("clipcov", lambda f, n: {"fraction": f, "partition": "kmeans", "clusters": 20}),
    # DBP's own budget is a count of its density stage's input: ask for the common budget and let
    # the CLIP-score stage keep enough rows for it
    ("dbp", lambda f, n: {"count": int(f * n), "clip_fraction": min(1.0, 2 * f), "k": 20, "niter": 20}),
)


def _make_subset(name: str, params: dict, pool_dir: Path, out: Path) -> Path | None:
    """Run one registered filter into ``out``; None when the filter is absent or cannot run here."""
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.pool import Pool
    from clipsift.registry import available, create_filter
    from clipsift.runner import run_to_subset
    from clipsift.subset import manifest_path

    if out.exists() and manifest_path(out).exists():
        return out
    if name not in available():
        log.info("demo: filter %s is not registered; skipped", name)
        return None
    try:
        step = create_filter(name, params)
    except ClipsiftError as exc:
        log.warning("demo: filter %s cannot be built here (%s); skipped", name, exc)
        return None
    workdir = out.parent / f".work-{name}"  # scratch for filters that spill (the uid sorter)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(Pool(str(pool_dir / "metadata")), LocalExecutor(show_progress=False), None, workdir, "auto")
    path, _ = run_to_subset(step, ctx, out)
    return path


def _leaderboard(runs_dir: Path, out_dir: Path) -> str | None:
    """Hand the run folders to clipsift.leaderboards when it is installed; returns Markdown."""
    try:
        from clipsift.leaderboards.build import write_leaderboards
        from clipsift.leaderboards.store import ResultsStore
        from clipsift.leaderboards.tables import to_markdown
    except ImportError as exc:
        log.warning("demo: leaderboard module unavailable (%s); printing the demo's own table", exc)
        return None
    store = ResultsStore.from_paths([runs_dir])
    boards, _ = write_leaderboards(store, out_dir, include_published=False)
    return "\n\n".join(to_markdown(b) for b in boards)


def _own_table(runs: list[dict]) -> str:
    names = [r["method"] for r in runs]
    width = max([len(n) for n in names] + [6])
    lines = [f"{'method':<{width}}  {'size':>6}  {'average':>8}"]
    for r in sorted(runs, key=lambda r: -(r["average"] or 0)):
        lines.append(f"{r['method']:<{width}}  {r['dataset_size']:>6}  {r['average']:>8.4f}")
    return "\n".join(lines)


def _finished(spec: TrackSpec) -> dict | None:
    run_dir = Path(spec.out)
    state = run_dir / "track_state.json"
    if (run_dir / RUN_FILE).exists() and state.exists() and json.loads(state.read_text()).get("complete"):
        return json.loads((run_dir / RUN_FILE).read_text())
    return None


def _timed_run(spec: TrackSpec, child: bool = False) -> tuple[dict, float]:
    if child:  # a spawned interpreter: open_clip's data workers need fork (its pipeline has lambdas)
        import logging
        import multiprocessing as mp

        from clipsift.log import configure_logging

        mp.set_start_method("fork", force=True)
        logging.getLogger().addHandler(logging.NullHandler())  # no basicConfig echo of open_clip's INFO lines
        configure_logging(0)
    t0 = time.perf_counter()
    return run_track(spec), time.perf_counter() - t0


def parallel_runs() -> int:
    """Track runs at once on CPU: one per group of torch threads (1 thread each on 2 cores); 1 on CUDA."""
    import os

    import torch

    if torch.cuda.is_available():
        return 1
    threads = int(os.environ.get("CLIPSIFT_TORCH_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    return max(1, (os.cpu_count() or 1) // threads)


def _run_all(specs: list[TrackSpec], timings: dict) -> list[dict]:
    """Run the track for every subset, several at once on CPU (fresh interpreters), in order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    results: dict[int, dict] = {}
    todo = []
    for i, spec in enumerate(specs):
        done = _finished(spec)
        if done is not None:
            results[i] = done
        else:
            todo.append(i)
    workers = min(parallel_runs(), len(todo))
    if workers <= 1:
        for i in todo:
            results[i], dt = _timed_run(specs[i])
            timings[f"run_{specs[i].method}_s"] = round(dt, 1)
            log.info("demo: %s done in %.0f s (average %.4f)", specs[i].method, dt, results[i]["average"] or 0)
    elif todo:
        log.info("demo: %d track runs, %d at a time", len(todo), workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            futures = {i: ex.submit(_timed_run, specs[i], True) for i in todo}
            for i, fut in futures.items():
                results[i], dt = fut.result()
                timings[f"run_{specs[i].method}_s"] = round(dt, 1)
                log.info("demo: %s done in %.0f s (average %.4f)", specs[i].method, dt, results[i]["average"] or 0)
    return [results[i] for i in range(len(specs))]


def run_demo(out, rows: int | None = None, fraction: float | None = None, filters=None, seed: int = 0,
             train_num_samples: int | None = DEFAULT_DEMO_SAMPLES) -> dict:
    """Build pool, subsets, runs and the leaderboard under ``out``; returns a summary dict."""
    from clipsift.eval.tiny_suite import make_tiny_suite
    from clipsift.synth import make_pool

    t_start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = rows or DEFAULT_ROWS
    fraction = fraction or DEFAULT_FRACTION
    timings: dict = {}
    pool_dir = out / "pool"
    if not (pool_dir / "world.json").exists():
        t0 = time.perf_counter()
        make_pool(pool_dir, rows, seed=seed, images=True, shard_rows=max(1000, rows // 4))
        timings["pool_s"] = round(time.perf_counter() - t0, 1)
    suite_dir = make_tiny_suite(out / "tiny_evalsets", pool_dir)
    wanted = [(n, p) for n, p in DEMO_FILTERS if filters is None or n in filters]
    if filters:
        known = {n for n, _ in DEMO_FILTERS}
        wanted += [(n, lambda f, rows: {"fraction": f}) for n in filters if n not in known]
    specs = []
    for name, params_of in wanted:
        t0 = time.perf_counter()
        subset = _make_subset(name, params_of(fraction, rows), pool_dir, out / "subsets" / f"{name}.npy")
        if subset is None:
            continue
        timings[f"filter_{name}_s"] = round(time.perf_counter() - t0, 1)
        cfg = TrainConfig(scale="tiny", data_dir="", output_dir="", seed=seed, train_num_samples=train_num_samples)
        specs.append(TrackSpec(subset=str(subset), shards=str(pool_dir / "shards"), out=str(out / "runs" / name), train=cfg,
                               suite="tiny", eval_data_dir=str(suite_dir), method=name, reshard_workers=1))
    runs = _run_all(specs, timings)
    if not runs:
        raise ClipsiftError(f"{out}: no demo filter could run; check `clipsift filters`")
    table = _leaderboard(out / "runs", out / "leaderboard") or _own_table(runs)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    summary = {"out": str(out), "rows": rows, "fraction": fraction, "runs": [r["method"] for r in runs],
               "averages": {r["method"]: r["average"] for r in runs}, "timings": timings, "table": table}
    write_json(out / "demo_summary.json", summary)
    return summary
