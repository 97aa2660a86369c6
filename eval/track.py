"""``clipsift track run``: one subset to one result folder (reshard -> train -> evaluate).

Run folder (read by the leaderboard)::

    RUN/run.json            method, scale, seed, suite, dataset_size, samples_seen, subset
                            {path, manifest}, train_args, created, average, timings
    RUN/eval_results.jsonl  DataComp's records, one per task
    RUN/info.pkl            copy of the training info (DataComp's evaluation cache check)
    RUN/shards/             resharded training data (meta.json, sample_ids.npy, ...)
    RUN/<exp_name>/         DataComp's training layout (checkpoints/epoch_latest.pt, info.pkl, ...)

Each stage is skipped when its output is complete, so rerunning after an interruption resumes:
resharding restarts if ``meta.json`` is absent, training resumes from ``epoch_latest.pt``
(open_clip's ``--resume latest``), evaluation skips the tasks already in eval_results.jsonl.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from clipsift import __version__
from clipsift.errors import ClipsiftError, SubsetError
from clipsift.eval.train import TrainConfig
from clipsift.io import write_json
from clipsift.log import get_logger
from clipsift.subset import manifest_path, read_subset

log = get_logger("eval.track")

RUN_FILE = "run.json"
STATE_FILE = "track_state.json"


@dataclass
class TrackSpec:
    """Inputs of one track run; ``train`` carries scale, seed and run options (dirs filled here)."""

    subset: str
    shards: str
    out: str
    train: TrainConfig
    suite: str | None = None
    eval_data_dir: str | None = None
    pool: str | None = None
    method: str | None = None
    reshard_workers: int | None = None
    eval_workers: int | None = None
    batch_size: int = 64
    gpus: int | None = None


def _manifest(subset: str) -> dict:
    path = manifest_path(subset)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def _method_name(spec: TrackSpec, manifest: dict) -> str:
    if spec.method:
        return spec.method
    return str(manifest.get("filter") or manifest.get("pipeline") or Path(spec.subset).name.split(".")[0])


def _eval_data_dir(spec: TrackSpec, suite: str) -> str | None:
    if spec.eval_data_dir:
        return spec.eval_data_dir
    if suite != "tiny":
        return None
    if not spec.pool:
        raise ClipsiftError("the tiny suite needs --eval-data-dir (from `clipsift evalsets tiny`) or --pool (the synthetic pool, to generate it)")
    from clipsift.eval.tiny_suite import make_tiny_suite

    return str(make_tiny_suite(Path(spec.pool) / "tiny_evalsets", spec.pool))


def _state(out: Path) -> dict:
    p = out / STATE_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def _save_state(out: Path, state: dict) -> None:
    write_json(out / STATE_FILE, state)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _data_quality(spec: TrackSpec, uids) -> dict:
    """Seedless ground-truth figures of the subset when ``spec.pool`` is a synthetic pool, else {}."""
    if not spec.pool or not (Path(spec.pool) / "truth.parquet").exists():
        return {}
    from clipsift.synth.quality import subset_quality

    return subset_quality(spec.pool, uids)


def run_track(spec: TrackSpec) -> dict:
    """Run (or resume) every stage; returns the run.json contents."""
    from clipsift.eval.evaluate import average_main_metric, evaluate
    from clipsift.eval.reshard import ReshardArgs, reshard
    from clipsift.eval.train import plan, run_training

    cpu0 = _cpu_seconds()
    subset_path = str(Path(spec.subset).resolve())
    uids = read_subset(subset_path)
    if len(uids) == 0:  # before the run folder exists: nothing to reshard or train on
        raise SubsetError(f"{spec.subset}: subset holds 0 uids, so there is nothing to train on; pass a subset that selects samples")
    out = Path(spec.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(subset_path)
    suite = spec.suite or ("tiny" if spec.train.scale == "tiny" else "datacomp38")
    if suite == "datacomp38" and not spec.eval_data_dir:  # fail before hours of training, not after
        raise ClipsiftError("suite datacomp38 needs --eval-data-dir (fetch it with `clipsift evalsets download --data-dir DIR`)")
    state = _state(out)
    timings = state.get("timings", {})
    if state.get("subset") not in (None, subset_path) or state.get("scale") not in (None, spec.train.scale):
        raise ClipsiftError(f"{out}: run folder belongs to another subset or scale ({state.get('subset')}, {state.get('scale')}); choose another --out")
    state.update({"subset": subset_path, "scale": spec.train.scale})
    _save_state(out, state)

    shards = out / "shards"
    if not (shards / "meta.json").exists():
        t0 = time.perf_counter()
        log.info("track: resharding %d uids from %s", len(uids), spec.shards)
        reshard(ReshardArgs(input_dir=str(spec.shards), output_dir=str(shards), subset_file=subset_path,
                            num_workers=spec.reshard_workers, overwrite=True))
        timings["reshard_s"] = round(time.perf_counter() - t0, 2)
        state["timings"] = timings
        _save_state(out, state)

    cfg = replace(spec.train, data_dir=str(shards), output_dir=str(out))
    resolved, args, command, world = plan(cfg, spec.gpus)
    exp_dir = out / resolved.exp_name
    if not (exp_dir / "info.pkl").exists():
        t0 = time.perf_counter()
        res = run_training(cfg, spec.gpus)
        args, command, world = res["args"], res["command"], res["world_size"]
        timings["train_s"] = round(time.perf_counter() - t0, 2)
        state["timings"] = timings
        _save_state(out, state)

    data_dir = _eval_data_dir(spec, suite)
    t0 = time.perf_counter()
    workers = spec.eval_workers if spec.eval_workers is not None else (0 if spec.train.scale == "tiny" else 4)
    records = evaluate(exp_dir, out, data_dir, suite, spec.batch_size, None, workers)
    timings["evaluate_s"] = round(time.perf_counter() - t0, 2)
    timings["cpu_s"] = round(timings.get("cpu_s", 0.0) + _cpu_seconds() - cpu0, 1)  # this call's CPU (resumes add up)

    from clipsift.eval.train import samples_seen

    run = {
        "method": _method_name(spec, manifest),
        "scale": spec.train.scale,
        "seed": int(spec.train.seed),
        "suite": suite,
        "dataset_size": int(len(uids)),
        "samples_seen": int(samples_seen(resolved, world)),
        "subset": {"path": subset_path, "manifest": manifest},
        "train_args": [str(a) for a in args],
        "train_command": command,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "average": average_main_metric(records),
        "tasks": len(records),
        "eval_data_dir": data_dir,
        "timings": timings,
        "clipsift_version": __version__,
    }
    quality = _data_quality(spec, uids)
    if quality:
        run["data_quality"] = quality
    write_json(out / RUN_FILE, run)
    state["timings"] = timings
    state["complete"] = True
    _save_state(out, state)
    return run
