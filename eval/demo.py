"""``clipsift demo``: the whole DataComp loop on a laptop CPU.

Synthetic pool with images (the tiny track's world) -> several filters at a common budget -> each
subset resharded, trained on the tiny scale with several seeds and evaluated on the tiny suite
(``clipsift track run``) -> leaderboard with mean ± std and ties. Every stage is resumable:
rerunning the command skips finished subsets and runs.

The terminal gets one line per stage (with a progress bar while it runs); clipsift's log,
open_clip's training log and every progress bar of the inner stages go to ``OUT/demo.log``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.eval.track import RUN_FILE, TrackSpec, run_track
from clipsift.eval.train import TrainConfig
from clipsift.io import write_json
from clipsift.log import get_logger
from clipsift.seedstats import gap_from_stats, mean_std

log = get_logger("eval.demo")

# 8,000 rows of the track's world and 32,768 samples seen per run (the tiny scale's own length):
# at 16,384 the oracle learned no task but retrieval (docs/tiny_track.md#training-length), so the
# demo trains 3 methods x 2 seeds at the full length, 8.2 minutes on 2 idle cores with channels-last
# training (docs/tiny_track.md#demo-budget); benchmarks/validity_tiny.py runs every method.
DEFAULT_ROWS = 8_000
DEFAULT_FRACTION = 0.3
DEFAULT_DEMO_SAMPLES = 32_768
DEFAULT_SEEDS = (0, 1)
LOG_NAME = "demo.log"

# name -> parameters for budget fraction f of an n-row pool (every filter keeps int(f·n) rows,
# except no_filter and basic_filter, which have no budget); seed methods are included when registered
FILTER_PARAMS = (
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
# what the demo runs by default: DataComp's strongest CLIP baseline and the two seed methods (with
# no_filter as a 4th method the demo took 18.9 min); `--filters` picks any of FILTER_PARAMS (or any
# registered filter)
DEMO_FILTERS = ("clip_score", "clipcov", "dbp")


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


def run_quality(pool_dir: Path, uids) -> dict:
    """Seedless ground-truth figures of a subset (clipsift.synth.quality); {} for non-synthetic pools."""
    from clipsift.synth.quality import subset_quality

    if not (Path(pool_dir) / "truth.parquet").exists():
        return {}
    return subset_quality(pool_dir, uids)


def _leaderboard(runs_dir: Path, out_dir: Path) -> Path | None:
    """Write the leaderboard (Markdown, CSV, JSON, plots, index.html); returns the HTML page."""
    try:
        from clipsift.leaderboards.build import write_leaderboards
        from clipsift.leaderboards.store import ResultsStore
    except ImportError as exc:
        log.warning("demo: leaderboard module unavailable (%s)", exc)
        return None
    store = ResultsStore.from_paths([runs_dir])
    _, paths = write_leaderboards(store, out_dir, include_published=False)
    html = [Path(p) for p in paths if str(p).endswith(".html")]
    return html[0] if html else (out_dir / "index.html" if (out_dir / "index.html").exists() else None)


def _ms(vals: list[float]) -> tuple[float | None, float | None]:
    """(mean, std) over seeds; std 0.0 for a single seed (the summary JSON's convention)."""
    m, s = mean_std(vals)
    return m, (None if m is None else (s or 0.0))


def summary_table(runs: list[dict], quality: dict) -> str:
    """Methods by mean Average: mean ± std over seeds of the Average and of each task, ties, seedless quality."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    rows = []
    for method, rs in by.items():
        avg = _ms([r["average"] for r in rs])
        groups = {g: _ms([r.get("scores", {}).get(k) for r in rs]) for g, k in (("concepts", "tiny/concept"), ("tail", "tiny/concept_tail"),
                                                                           ("retrieval", "tiny/retrieval"))}
        rows.append((method, rs, avg, groups))
    rows.sort(key=lambda x: -(x[2][0] or 0))
    best = rows[0][2] if rows else None

    def f(ms):
        return "—" if ms[0] is None else f"{ms[0]:.3f} ± {ms[1]:.3f}"

    head = ["method", "seeds", "size", "average", "concepts", "tail concepts", "retrieval", "vs best", "mismatched %", "repeats %",
            "non-English %", "concepts covered", "tail %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rs, avg, groups in rows:
        q = quality.get(method, {})
        if avg is best:
            vs = "best"
        elif avg[0] is None or best[0] is None or len(rs) < 2:
            vs = "—"  # no score, or one seed: no std to judge a tie by
        else:
            vs = "tied" if gap_from_stats(*avg, *best).tied else f"{avg[0] - best[0]:+.3f}"
        cells = [method, str(len(rs)), str(rs[0]["dataset_size"]), f(avg), f(groups["concepts"]), f(groups["tail"]), f(groups["retrieval"]), vs,
                 *(("—" if q.get(k) is None else f"{q[k]:.1f}") for k in ("mismatched", "duplicated", "non_english")),
                 f"{q.get('concepts', '—')}/{q.get('concepts_of', '—')}", "—" if q.get("tail") is None else f"{q['tail']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finished(spec: TrackSpec) -> dict | None:
    run_dir = Path(spec.out)
    state = run_dir / "track_state.json"
    if (run_dir / RUN_FILE).exists() and state.exists() and json.loads(state.read_text()).get("complete"):
        return json.loads((run_dir / RUN_FILE).read_text())
    return None


def _timed_run(spec: TrackSpec, child: bool = False, log_path: str | None = None) -> tuple[dict, float]:
    """One track run; in a spawned child, its stdout/stderr (open_clip, tqdm) go to ``log_path``."""
    if child:  # a spawned interpreter: open_clip's data workers need fork (its pipeline has lambdas)
        import multiprocessing as mp

        from clipsift.log import configure_logging

        if log_path:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            os.environ["CLIPSIFT_PROGRESS"] = "0"
        mp.set_start_method("fork", force=True)
        logging.getLogger().addHandler(logging.NullHandler())  # no basicConfig echo of open_clip's INFO lines
        configure_logging(0)
    t0 = time.perf_counter()
    return run_track(spec), time.perf_counter() - t0


def parallel_runs() -> int:
    """Track runs at once on CPU: one per group of torch threads (1 thread each on 2 cores); 1 on CUDA."""
    import torch

    if torch.cuda.is_available():
        return 1
    threads = int(os.environ.get("CLIPSIFT_TORCH_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    return max(1, (os.cpu_count() or 1) // threads)


class _Stages:
    """One terminal line per stage: ``[k/n] name ... detail (seconds)``, a bar while items run."""

    def __init__(self, total: int, stream=None):
        self.total, self.k = total, 0
        self.stream = stream or sys.stdout

    @contextmanager
    def stage(self, name: str, items: int = 0, unit: str = "step"):
        from tqdm import tqdm

        self.k += 1
        t0 = time.perf_counter()
        label = f"[{self.k}/{self.total}] {name}"
        bar = None
        if items and self.stream.isatty():
            bar = tqdm(total=items, desc=label, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)
        info = {"detail": "", "bar": bar}
        try:
            yield info
        finally:
            if bar is not None:
                bar.close()
        detail = f": {info['detail']}" if info["detail"] else ""
        print(f"{label}{detail} ({time.perf_counter() - t0:.0f} s)", file=self.stream, flush=True)


@contextmanager
def _log_to(path: Path):
    """clipsift's log records and inner progress bars go to ``path`` while the demo runs."""
    root = logging.getLogger("clipsift")
    saved, level = root.handlers[:], root.level
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._clipsift = True  # type: ignore[attr-defined]
    old_progress = os.environ.get("CLIPSIFT_PROGRESS")
    root.handlers[:] = [handler]
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    os.environ["CLIPSIFT_PROGRESS"] = "0"
    try:
        yield
    finally:
        handler.close()
        root.handlers[:] = saved
        root.setLevel(level)
        if old_progress is None:
            os.environ.pop("CLIPSIFT_PROGRESS", None)
        else:
            os.environ["CLIPSIFT_PROGRESS"] = old_progress


def _run_all(specs: list[TrackSpec], timings: dict, log_path: Path, bar=None) -> list[dict]:
    """Run the track for every spec, several at once on CPU (fresh interpreters), in order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: dict[int, dict] = {}
    todo = []
    for i, spec in enumerate(specs):
        done = _finished(spec)
        if done is not None:
            results[i] = done
            if bar is not None:
                bar.update(1)
        else:
            todo.append(i)
    workers = min(parallel_runs(), len(todo))

    def note(i, run, dt):
        results[i] = run
        timings[f"run_{Path(specs[i].out).name}_s"] = round(dt, 1)
        log.info("demo: %s done in %.0f s (average %.4f)", Path(specs[i].out).name, dt, run["average"] or 0)
        if bar is not None:
            bar.update(1)

    if workers <= 1:
        for i in todo:
            run, dt = _timed_run(specs[i])
            note(i, run, dt)
    elif todo:
        log.info("demo: %d track runs, %d at a time", len(todo), workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            futures = {ex.submit(_timed_run, specs[i], True, str(log_path)): i for i in todo}
            for fut in as_completed(futures):
                run, dt = fut.result()
                note(futures[fut], run, dt)
    return [results[i] for i in range(len(specs))]


def _scores(run_dir: Path) -> dict:
    p = run_dir / "eval_results.jsonl"
    if not p.exists():
        return {}
    recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return {r["key"]: r["metrics"].get("main_metric") for r in recs}


def run_demo(out, rows: int | None = None, fraction: float | None = None, filters=None, seed: int = 0,
             train_num_samples: int | None = DEFAULT_DEMO_SAMPLES, seeds=None, stream=None) -> dict:
    """Build pool, subsets, runs (``seeds`` per method) and the leaderboard under ``out``; returns a summary.

    ``seed`` is the pool's seed; ``seeds`` the training seeds (default 0 and 1).
    """
    from clipsift.eval.tiny_suite import make_tiny_suite
    from clipsift.subset import read_subset
    from clipsift.synth import make_pool

    t_start = time.perf_counter()
    cpu_start = _cpu_seconds()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = rows or DEFAULT_ROWS
    fraction = fraction or DEFAULT_FRACTION
    seeds = tuple(seeds) if seeds else DEFAULT_SEEDS
    train_num_samples = train_num_samples or DEFAULT_DEMO_SAMPLES
    log_path = out / LOG_NAME
    timings: dict = {}
    pool_dir = out / "pool"
    known = dict(FILTER_PARAMS)
    wanted = [(n, known.get(n, lambda f, rows: {"fraction": f})) for n in (filters or DEMO_FILTERS)]
    st = _Stages(5, stream)
    with _log_to(log_path):
        with st.stage(f"synthetic pool: {rows:,} rows with images (track world)") as s:
            if not (pool_dir / "world.json").exists():
                t0 = time.perf_counter()
                make_pool(pool_dir, rows, seed=seed, images=True, shard_rows=max(1000, rows // 4), world="track")
                timings["pool_s"] = round(time.perf_counter() - t0, 1)
            else:
                s["detail"] = "reused"
        with st.stage("tiny evaluation suite") as s:
            suite_dir = make_tiny_suite(out / "tiny_evalsets", pool_dir)
            s["detail"] = str(suite_dir.relative_to(out))
        specs, quality = [], {}
        with st.stage(f"filters at a {fraction:.0%} budget", items=len(wanted), unit="filter") as s:
            done = []
            for name, params_of in wanted:
                t0 = time.perf_counter()
                subset = _make_subset(name, params_of(fraction, rows), pool_dir, out / "subsets" / f"{name}.npy")
                if s["bar"] is not None:
                    s["bar"].update(1)
                if subset is None:
                    continue
                done.append(name)
                timings[f"filter_{name}_s"] = round(time.perf_counter() - t0, 1)
                quality[name] = run_quality(pool_dir, read_subset(subset))
                for sd in seeds:
                    cfg = TrainConfig(scale="tiny", data_dir="", output_dir="", seed=sd, train_num_samples=train_num_samples)
                    specs.append(TrackSpec(subset=str(subset), shards=str(pool_dir / "shards"), out=str(out / "runs" / f"{name}_s{sd}"),
                                           train=cfg, suite="tiny", eval_data_dir=str(suite_dir), pool=str(pool_dir),
                                           method=name, reshard_workers=1))
            s["detail"] = ", ".join(done)
        if not specs:
            raise ClipsiftError(f"{out}: no demo filter could run; check `clipsift filters`")
        with st.stage(f"train and evaluate: {len(done)} methods x {len(seeds)} seeds, {train_num_samples:,} samples seen each",
                      items=len(specs), unit="run") as s:
            runs = _run_all(specs, timings, log_path, s["bar"])
            s["detail"] = f"{len(runs)} runs"
        for spec, run in zip(specs, runs):
            run["scores"] = _scores(Path(spec.out))
        with st.stage("leaderboard") as s:
            page = _leaderboard(out / "runs", out / "leaderboard")
            s["detail"] = str(page) if page else "leaderboard module unavailable"
    table = summary_table(runs, quality)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    timings["cpu_s"] = round(_cpu_seconds() - cpu_start, 1)
    by_method: dict[str, list] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r["average"])
    summary = {"out": str(out), "rows": rows, "fraction": fraction, "seeds": list(seeds), "train_num_samples": train_num_samples,
               "runs": sorted(by_method), "averages": {m: _ms(v)[0] for m, v in by_method.items()},
               "stds": {m: _ms(v)[1] for m, v in by_method.items()}, "quality": quality, "timings": timings,
               "table": table, "page": str(page) if page else None, "log": str(log_path)}
    write_json(out / "demo_summary.json", summary)
    return summary


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
