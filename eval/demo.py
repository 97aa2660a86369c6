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

# name -> parameters at budget f; seed methods are included when registered and constructible
DEMO_FILTERS = (
    ("no_filter", lambda f: {}),
    ("random", lambda f: {"fraction": f}),
    ("basic_filter", lambda f: {}),
    ("clip_score", lambda f: {"fraction": f, "arch": "l14"}),
    ("negclip", lambda f: {"fraction": f, "arch": "l14"}),
    ("dbp", lambda f: {"fraction": f, "k": 20, "niter": 20}),
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
    ctx = RunContext(Pool(str(pool_dir / "metadata")), LocalExecutor(show_progress=False), None, out.parent / f".work-{name}", "auto")
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


def run_demo(out, rows: int | None = None, fraction: float | None = None, filters=None, seed: int = 0,
             train_num_samples: int | None = None) -> dict:
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
        wanted += [(n, lambda f: {"fraction": f}) for n in filters if n not in known]
    runs = []
    for name, params_of in wanted:
        t0 = time.perf_counter()
        subset = _make_subset(name, params_of(fraction), pool_dir, out / "subsets" / f"{name}.npy")
        if subset is None:
            continue
        run_dir = out / "runs" / name
        if (run_dir / RUN_FILE).exists() and json.loads((run_dir / "track_state.json").read_text()).get("complete"):
            runs.append(json.loads((run_dir / RUN_FILE).read_text()))
            continue
        cfg = TrainConfig(scale="tiny", data_dir="", output_dir="", seed=seed, train_num_samples=train_num_samples)
        runs.append(run_track(TrackSpec(subset=str(subset), shards=str(pool_dir / "shards"), out=str(run_dir), train=cfg,
                                        suite="tiny", eval_data_dir=str(suite_dir), method=name)))
        timings[name] = round(time.perf_counter() - t0, 1)
        log.info("demo: %s done in %.0f s (average %.4f)", name, timings[name], runs[-1]["average"] or 0)
    if not runs:
        raise ClipsiftError(f"{out}: no demo filter could run; check `clipsift filters`")
    table = _leaderboard(out / "runs", out / "leaderboard") or _own_table(runs)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    summary = {"out": str(out), "rows": rows, "fraction": fraction, "runs": [r["method"] for r in runs],
               "averages": {r["method"]: r["average"] for r in runs}, "timings": timings, "table": table}
    write_json(out / "demo_summary.json", summary)
    return summary
