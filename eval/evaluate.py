"""``clipsift evaluate``: DataComp's ``evaluate.py`` flow and ``eval_results.jsonl`` records.

For each task of the suite, in tasklist order: skip it when its display name already has a result
in ``<output>/eval_results.jsonl``, else evaluate, set ``main_metric`` and append
``{"key", "dataset", "metrics"}`` at once, so an interrupted evaluation resumes where it stopped.
``info.pkl`` is read from the training folder and cached in the output folder; a mismatch aborts,
as upstream. Nothing is ever submitted anywhere.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.eval import zeroshot
from clipsift.eval.tasks import EvalTask, load_tasks
from clipsift.eval.train import cpu_threads
from clipsift.log import get_logger
from clipsift.safeload import load_info_pkl

log = get_logger("eval.evaluate")

RESULTS_FILE = "eval_results.jsonl"


def _json_safe(metrics: dict) -> dict:
    """Plain floats (numpy/torch scalars converted); NaN becomes None so the line is strict JSON."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    return out


def run_task(task: EvalTask, info: dict, data_root: str | None, batch_size: int = 64, num_workers: int = 4) -> dict:
    """Dispatch like DataComp's ``evaluate_model``; unsupported families raise a one-line error."""
    arch = info["scale_config"]["model"]
    lm = zeroshot.load_model(arch, info["checkpoint"])
    key = task.key
    if key.startswith("retrieval/") or (key.startswith("tiny/") and zeroshot.is_wds_retrieval(task, data_root)):
        if zeroshot.is_wds_retrieval(task, data_root):
            return zeroshot.evaluate_wds_retrieval(task, lm, data_root, batch_size, num_workers)
        return zeroshot.evaluate_hf_retrieval(task, lm, data_root, batch_size, num_workers)
    if key.startswith("wilds/") or key.startswith("fairness/"):
        from clipsift.eval import groups

        return groups.evaluate_group_task(task, lm, data_root, batch_size, num_workers)
    if key.startswith("misc/"):
        if key == "misc/winogavil":
            return zeroshot.evaluate_winogavil(task, lm, data_root, batch_size, num_workers)
        return {}
    return zeroshot.evaluate_classification(task, lm, data_root, batch_size, num_workers)


def _load_info(path: Path) -> dict:
    if not path.exists():
        raise ClipsiftError(f"{path}: no training info; run `clipsift train` first or pass --use-model 'ARCH CHECKPOINT'")
    return load_info_pkl(path)  # restricted unpickler: a crafted info.pkl runs nothing


def evaluate(
    train_output_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    data_dir: str | None = None,
    suite: str = "datacomp38",
    batch_size: int = 64,
    use_model: str | None = None,
    num_workers: int = 4,
    tasks: list[str] | None = None,
) -> list[dict]:
    """Evaluate a trained model on ``suite``; returns the result records in tasklist order."""
    if os.environ.get("CLIPSIFT_PROGRESS") == "0":  # -q: silence clip_benchmark's own tqdm bars
        os.environ.setdefault("TQDM_DISABLE", "1")
    train_dir = Path(train_output_dir)
    out = Path(output_dir) if output_dir is not None else train_dir
    if use_model is not None:
        train_dir = out
        try:
            arch, ckpt = use_model.split(maxsplit=1)
        except ValueError as exc:
            raise ClipsiftError(f"--use-model {use_model!r}: give 'ARCH CHECKPOINT_PATH'") from exc
        out.mkdir(parents=True, exist_ok=True)
        with open(train_dir / "info.pkl", "wb") as fh:
            pickle.dump({"scale_config": {"model": arch}, "checkpoint": ckpt}, fh)
    if data_dir is None:  # DataComp would stream from the Hugging Face hub; clipsift never downloads at run time
        raise ClipsiftError(f"no --data-dir for suite {suite}: fetch the sets with `clipsift evalsets download --data-dir DIR`"
                            + (" or render them with `clipsift evalsets tiny`" if suite == "tiny" else ""))
    info = _load_info(train_dir / "info.pkl")
    tasklist = load_tasks(suite)
    if tasks:
        unknown = sorted(set(tasks) - {t.key for t in tasklist})
        if unknown:
            raise ClipsiftError(f"unknown task(s) {unknown} for suite {suite}; see clipsift/eval/{suite} task list")
        tasklist = [t for t in tasklist if t.key in tasks]
    keys = {t.key for t in tasklist}
    results_path = out / RESULTS_FILE
    results: dict[str, dict] = {}
    cached = out / "info.pkl"
    if out.exists() and cached.exists():
        if load_info_pkl(cached) != info:
            raise ClipsiftError(f"{cached}: output directory holds results of another training run; use another --output-dir or the matching --train-output-dir")
        if results_path.exists():
            with open(results_path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        log.warning("%s: skipping an unreadable line (interrupted write?)", results_path)
                        continue
                    if rec.get("key") in keys:
                        results[rec["dataset"]] = rec
            log.info("found %d eval result(s) in %s", len(results), results_path)
    else:
        out.mkdir(parents=True, exist_ok=True)
        with open(cached, "wb") as fh:
            pickle.dump(info, fh)
    if not Path(info["checkpoint"]).exists() and use_model is None:
        default = train_dir / "checkpoints" / "epoch_latest.pt"
        log.warning("no checkpoint at %s; defaulting to %s", info["checkpoint"], default)
        info = {**info, "checkpoint": default}
    for task in tasklist:
        if task.name in results:
            log.info("skipping %s: already in %s", task.name, results_path)
            continue
        t0 = time.perf_counter()
        with cpu_threads():
            metrics = _json_safe(run_task(task, info, data_dir, batch_size, num_workers))
        metrics["main_metric"] = metrics.get(task.main_metric or "acc1")
        rec = {"key": task.key, "dataset": task.name, "metrics": metrics}
        results[task.name] = rec
        with open(results_path, "a+", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        log.info("%s: %s = %s (%.1f s)", task.name, task.main_metric, metrics["main_metric"], time.perf_counter() - t0)
    return [results[t.name] for t in tasklist if t.name in results]


def average_main_metric(records: list[dict]) -> float | None:
    """Mean of the non-null main metrics (DataComp's "Average" for a complete suite)."""
    vals = [r["metrics"]["main_metric"] for r in records if r["metrics"].get("main_metric") is not None]
    return sum(vals) / len(vals) if vals else None
