"""Submission pack: the files and fields DataComp's ``evaluate.py --submit`` would send, checked
for completeness and written to a folder. Nothing is uploaded.

Layout (mirrors the Hugging Face commit evaluate.py makes)::

    OUT/{scale}_scale/results.jsonl          byte copy of the run's eval_results.jsonl
    OUT/{scale}_scale/samples/<name>         byte copies of the uid subset file(s)
    OUT/submission.json                      the leaderboard-database record (same fields)
    OUT/upload_plan.json                     HF repo, commit message, files, database key
    OUT/checks.json                          every check with its outcome
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.io import atomic_dir
from clipsift.leaderboards.jsonio import dumps
from clipsift.leaderboards.published import PUBLISHED_SCALES, TRACKS
from clipsift.leaderboards.store import Run
from clipsift.leaderboards.tasks import DATACOMP, datacomp_tasks
from clipsift.log import get_logger
from clipsift.uids import UID_DTYPE, is_sorted

log = get_logger("leaderboards.submit")

REQUIRED_FIELDS = ("method_name", "author", "email", "hf_username", "hf_repo_name")


@dataclass
class SubmitInfo:
    """The submission form fields (evaluate.py's --method_name, --author, ...)."""

    method_name: str | None = None
    author: str | None = None
    email: str | None = None
    hf_username: str | None = None
    hf_repo_name: str | None = None
    writeup: str | None = None
    track: str = "filtering"
    dataset_size: str = ""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    severity: str = "error"  # or "warning"


def scale_configs() -> dict:
    data = json.loads(
        resources.files("clipsift.leaderboards.data").joinpath("scales.json").read_text("utf-8")
    )
    return {k: v for k, v in data.items() if not k.startswith("_")}


def count_uids(path: Path) -> tuple[int, str]:
    """Number of uids in a DataComp subset file and a problem description ('' if fine)."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:  # object arrays, malformed headers: a failed check, not a crash
            return 0, f"not a uid array ({' '.join(str(exc).split())})"
        if arr.dtype != UID_DTYPE:
            return len(arr), f"dtype {arr.dtype}, DataComp's resharder needs {UID_DTYPE}"
        if arr.ndim != 1:
            return int(arr.size), f"shape {arr.shape}, expected one dimension"
        if not is_sorted(arr):
            return len(
                arr
            ), "uids are not sorted ascending (the resharder would silently lose samples)"
        return len(arr), ""
    size = path.stat().st_size
    if size % 16:
        return (
            size // 16,
            f"raw subset file of {size} bytes is not a whole number of 16-byte records",
        )
    arr = np.fromfile(path, dtype=UID_DTYPE)
    return len(arr), "" if is_sorted(arr) else "uids are not sorted ascending"


def _checkpoint(run: Run) -> str:
    ck = run.info.get("checkpoint")
    if ck:
        return str(ck)
    default = run.path / "checkpoints" / "epoch_latest.pt"
    return str(default) if default.exists() else ""


def check_submission(run: Run, info: SubmitInfo, samples: list[Path]) -> list[Check]:
    """All completeness checks; a pack is written only when no error-level check fails."""
    checks = []
    checks.append(
        Check(
            "scale",
            run.scale in PUBLISHED_SCALES,
            f"scale {run.scale!r}"
            + (
                ""
                if run.scale in PUBLISHED_SCALES
                else f"; the leaderboard has {', '.join(PUBLISHED_SCALES)}"
            ),
        )
    )
    checks.append(Check("track", info.track in TRACKS, f"track {info.track!r}"))
    checks.append(
        Check(
            "suite",
            run.suite == DATACOMP,
            f"results use suite {run.suite!r}; DataComp needs its 38-task suite",
        )
    )
    agg = run.aggregate
    checks.append(
        Check(
            "tasks",
            agg.complete,
            f"{agg.n_expected - len(agg.absent)}/{agg.n_expected} tasks with a main metric"
            + ("" if agg.complete else f"; missing: {agg.absent_text()}"),
        )
    )
    nonnull = sum(r.main_metric is not None for r in run.rows)
    checks.append(
        Check(
            "rows",
            nonnull == agg.n_expected,
            f"{nonnull} rows with a main metric (aggregate_scores.py requires exactly {agg.n_expected})"
            + (f"; duplicates: {', '.join(agg.duplicates)}" if agg.duplicates else "")
            + (f"; unknown tasks: {', '.join(agg.extra)}" if agg.extra else ""),
        )
    )
    for f in REQUIRED_FIELDS:
        val = getattr(info, f)
        checks.append(
            Check(
                f,
                bool(val and str(val).strip()),
                "set" if val else f"--{f.replace('_', '-')} is required",
            )
        )
    if info.email:
        checks.append(
            Check(
                "email_format",
                "@" in info.email,
                f"{info.email!r} does not look like an email address",
            )
        )
    checks.append(
        Check(
            "samples",
            bool(samples),
            f"{len(samples)} subset file(s)"
            if samples
            else "no subset (uid) file: pass --samples FILE or record subset.path in run.json",
        )
    )
    total = 0
    for s in samples:
        if not s.is_file():
            checks.append(Check(f"samples:{s.name}", False, f"{s} not found"))
            continue
        n, problem = count_uids(s)
        total += n
        checks.append(Check(f"samples:{s.name}", not problem, problem or f"{n:,} uids"))
    names = [s.name for s in samples]
    if len(set(names)) < len(names):
        checks.append(
            Check(
                "samples:names",
                False,
                "subset files share a file name; they would overwrite each other in samples/",
            )
        )
    size = info.dataset_size or (str(run.dataset_size) if run.dataset_size is not None else "")
    if samples and size and total and str(total) != size.replace(",", ""):
        checks.append(
            Check(
                "dataset_size",
                False,
                f"dataset size {size} differs from the {total:,} uids in the subset file(s)",
                "warning",
            )
        )
    return checks


def submission_record(run: Run, info: SubmitInfo, timestamp: str) -> dict:
    """The record evaluate.py PUTs to DataComp's leaderboard database (same keys and order)."""
    cfg = scale_configs().get(run.scale, {})
    size = info.dataset_size or (str(run.dataset_size) if run.dataset_size is not None else "")
    data = {
        "scale": run.scale,
        "model": cfg.get("model"),
        "dataset_size": size or cfg.get("train_num_samples"),
        "checkpoint": _checkpoint(run),
        "batch_size": cfg.get("batch_size"),
        "learning_rate": cfg.get("learning_rate"),
        "method_name": info.method_name,
        "author": info.author,
        "email": info.email,
        "hf_username": info.hf_username,
        "hf_repo_name": info.hf_repo_name,
        "timestamp": timestamp,
        "track": info.track,
        "writeup": info.writeup,
    }
    keys = {t.key for t in datacomp_tasks().tasks}
    last: dict = {}
    for row in run.rows:  # evaluate.py keeps rows of known tasks, keyed by dataset name, last wins
        if row.key in keys and row.dataset is not None:
            last[row.dataset] = row.metrics.get("main_metric")
    data.update({name: mm for name, mm in last.items() if mm is not None})
    return data


def write_submit_pack(
    run: Run, out_dir: str | Path, info: SubmitInfo, samples=None, overwrite: bool = False
) -> tuple[Path, list[Check]]:
    """Check and write the pack; raises ClipsiftError listing every failed check."""
    out = Path(out_dir)
    if samples is None:
        samples = [Path(run.subset_path)] if run.subset_path else []
        if samples and not samples[0].is_absolute() and not samples[0].exists():
            samples = [run.path / samples[0]]  # relative to the run folder
    samples = [Path(s) for s in samples]
    checks = check_submission(run, info, samples)
    errors = [c for c in checks if not c.ok and c.severity == "error"]
    for c in checks:
        if not c.ok and c.severity == "warning":
            log.warning("submit-pack: %s: %s", c.name, c.detail)
    if errors:
        raise ClipsiftError(
            f"{run.path}: submission pack not written; {len(errors)} problem(s): "
            + "; ".join(f"{c.name}: {c.detail}" for c in errors)
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ClipsiftError(
            f"{out}: folder exists and is not empty; choose a new --out or pass --overwrite"
        )
    timestamp = time.strftime("%Y-%m-%d_%H:%M:%S", time.gmtime())
    prefix = f"{run.scale}_scale"
    record = submission_record(run, info, timestamp)
    plan = {
        "hf_repo_id": f"{info.hf_username}/{info.hf_repo_name}",
        "commit_message": f"Upload artifacts ({run.scale} scale)",
        "files": {f"{prefix}/results.jsonl": str(run.results_path)}
        | {f"{prefix}/samples/{s.name}": str(s) for s in samples},
        "database_key": f"{info.hf_username}__{info.hf_repo_name}__{timestamp}".replace(".", "_"),
        "note": "clipsift never uploads; run DataComp's evaluate.py --submit or upload these files yourself",
    }
    texts = {  # rendered first: a value that is not valid JSON stops before anything is written
        "submission.json": dumps(record, "submission.json", indent=2, ensure_ascii=False) + "\n",
        "upload_plan.json": dumps(plan, "upload_plan.json", indent=2) + "\n",
        "checks.json": dumps([c.__dict__ for c in checks], "checks.json", indent=2, ensure_ascii=False) + "\n",
    }
    with atomic_dir(out) as tmp:
        (tmp / prefix / "samples").mkdir(parents=True)
        shutil.copyfile(run.results_path, tmp / prefix / "results.jsonl")
        for s in samples:
            shutil.copyfile(s, tmp / prefix / "samples" / s.name)
        for name, text in texts.items():
            (tmp / name).write_text(text, "utf-8")
    return out, checks
