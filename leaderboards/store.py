"""Results store: run folders (clipsift's or DataComp's own) read with their manifest and scale.

A run folder holds ``eval_results.jsonl`` and either clipsift's ``run.json`` (method, scale,
seed, suite, dataset_size, subset manifest, ...) or DataComp's ``info.pkl`` (scale only; method =
folder name). Runs that differ only in seed form one :class:`RunGroup` (mean ± std).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.leaderboards.aggregate import Aggregate, ResultRow, aggregate_rows, read_eval_results
from clipsift.leaderboards.jsonio import nonfinite_key
from clipsift.leaderboards.tasks import TINY, detect_suite, task_list
from clipsift.log import get_logger
from clipsift.safeload import UnsafeFileError, load_info_pkl, plain, read_text

log = get_logger("leaderboards.store")

RESULTS_NAME = "eval_results.jsonl"
RUN_JSON = "run.json"
INFO_PKL = "info.pkl"

def read_info_pkl(path: Path) -> dict:
    """DataComp's info.pkl as plain data, paths as strings ({} with a warning if it cannot be read).

    Read by clipsift.safeload's restricted unpickler: nothing in the file is ever run.
    """
    try:
        info = load_info_pkl(path)
    except UnsafeFileError as exc:  # the pickle is optional metadata: the run still counts
        log.warning("%s; its metadata (scale, checkpoint) is ignored", exc)
        return {}
    return plain(info)


def _int_or_none(v) -> int | None:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass
class Run:
    """One evaluated training run."""

    path: Path
    method: str
    scale: str
    suite: str
    aggregate: Aggregate
    rows: list[ResultRow]
    seed: int | None = None
    dataset_size: int | None = None
    samples_seen: int | None = None
    subset_path: str | None = None
    manifest: dict = field(default_factory=dict)
    train_args: list = field(default_factory=list)
    created: str | None = None
    info: dict = field(default_factory=dict)
    has_run_json: bool = False

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_NAME

    @property
    def filter_name(self) -> str | None:
        return self.manifest.get("filter") if isinstance(self.manifest, dict) else None

    @property
    def params(self) -> dict:
        p = self.manifest.get("params") if isinstance(self.manifest, dict) else None
        return p if isinstance(p, dict) else {}

    def group_key(self) -> tuple:
        """Runs equal in everything but the seed share this key."""
        params = json.dumps(self.params, sort_keys=True, default=str)
        return (self.scale, self.suite, self.method, self.filter_name or "", params)


def load_run(
    path: str | Path, tasks_file: str | Path | None = None, scale: str | None = None
) -> Run:
    """Read one run folder (``path`` may also be its eval_results.jsonl)."""
    path = Path(path)
    if path.is_file() and path.name == RESULTS_NAME:
        path = path.parent
    results = path / RESULTS_NAME
    if not results.is_file():
        raise ClipsiftError(
            f"{path}: no {RESULTS_NAME} here; evaluate the run first or point at its folder"
        )
    meta: dict = {}
    run_json = path / RUN_JSON
    if run_json.is_file():
        try:
            meta = json.loads(read_text(run_json, "run.json"))
        except json.JSONDecodeError as exc:
            raise ClipsiftError(
                f"{run_json}: line {exc.lineno}: not valid JSON ({exc.msg}); rewrite it or delete it to read the run as DataComp output"
            ) from None
        if not isinstance(meta, dict):
            raise ClipsiftError(f"{run_json}: expected a JSON object")
        bad = nonfinite_key(meta)
        if bad is not None:
            raise ClipsiftError(
                f"{run_json}: {bad} is NaN or Infinity, which is not valid JSON; write a number or null there"
            )
    info = read_info_pkl(path / INFO_PKL) if (path / INFO_PKL).is_file() else {}
    rows = read_eval_results(results)
    suite = meta.get("suite") or detect_suite([r.key for r in rows])
    tasks = task_list(suite, tasks_file if suite == TINY else None)  # DataComp's list is fixed
    subset = meta.get("subset") if isinstance(meta.get("subset"), dict) else {}
    manifest = subset.get("manifest") if isinstance(subset.get("manifest"), dict) else {}
    run_scale = (
        scale or meta.get("scale") or info.get("scale") or ("tiny" if suite == TINY else "unknown")
    )
    return Run(
        path=path,
        method=str(meta.get("method") or path.resolve().name),
        scale=str(run_scale),
        suite=suite,
        aggregate=aggregate_rows(rows, tasks),
        rows=rows,
        seed=_int_or_none(meta.get("seed")),
        dataset_size=_int_or_none(meta.get("dataset_size")),
        samples_seen=_int_or_none(meta.get("samples_seen")),
        subset_path=subset.get("path"),
        manifest=manifest,
        train_args=list(meta.get("train_args") or []),
        created=meta.get("created"),
        info=info,
        has_run_json=bool(meta),
    )


def find_run_dirs(paths) -> list[Path]:
    """Run folders under ``paths``: each path is a run folder, a results file or a folder of runs."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ClipsiftError(
                f"{p}: no such file or folder; pass run folders or a folder holding them"
            )
        if p.is_file():
            found.append(p.parent)
        elif (p / RESULTS_NAME).is_file():
            found.append(p)
        else:
            subs = sorted(f.parent for f in p.rglob(RESULTS_NAME))
            if not subs:
                log.warning("%s: no %s found below it", p, RESULTS_NAME)
            found.extend(subs)
    unique = list(dict.fromkeys(f.resolve() for f in found))
    return unique


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


@dataclass
class RunGroup:
    """Runs of one method/subset at one scale that differ only in seed (sample std, ddof=1)."""

    runs: list[Run]
    label: str = ""

    def __post_init__(self):
        self.runs = sorted(
            self.runs,
            key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.path)),
        )
        if not self.label:
            self.label = self.runs[0].method

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def method(self) -> str:
        return self.first.method

    @property
    def scale(self) -> str:
        return self.first.scale

    @property
    def suite(self) -> str:
        return self.first.suite

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def dataset_size(self) -> int | None:
        sizes = {r.dataset_size for r in self.runs if r.dataset_size is not None}
        return sizes.pop() if len(sizes) == 1 else (int(np.mean(list(sizes))) if sizes else None)

    @property
    def created(self) -> str | None:
        dates = [r.created for r in self.runs if r.created]
        return max(dates) if dates else None

    @property
    def complete(self) -> bool:
        return all(r.aggregate.complete for r in self.runs)

    @property
    def absent(self) -> list[str]:
        """Averaged tasks missing from at least one seed."""
        out: list[str] = []
        for r in self.runs:
            out.extend(n for n in r.aggregate.absent if n not in out)
        return out

    def absent_text(self) -> str:
        null = {n for r in self.runs for n in r.aggregate.null}
        return ", ".join(f"{n} (null metric)" if n in null else n for n in self.absent)

    @property
    def groups(self) -> list[str]:
        return list(self.first.aggregate.scores)

    def score(self, group: str) -> tuple[float | None, float | None]:
        """(mean, std) over seeds of a group score; (None, None) if any seed lacks it."""
        vals = [r.aggregate.scores.get(group) for r in self.runs]
        if any(v is None for v in vals):
            return None, None
        return _mean_std(vals)

    def partial_score(self, group: str) -> tuple[float | None, float | None]:
        """(mean, std) over seeds of the mean of the tasks present (for partial results)."""
        vals = [r.aggregate.partial_scores.get(group) for r in self.runs]
        return _mean_std([v for v in vals if v is not None])

    def task_score(self, key: str) -> tuple[float | None, float | None]:
        vals = [r.aggregate.per_task.get(key) for r in self.runs]
        if any(v is None for v in vals):
            return None, None
        return _mean_std(vals)

    def to_dict(self) -> dict:
        """Summary used in JSON outputs."""
        return {
            "label": self.label,
            "method": self.method,
            "scale": self.scale,
            "suite": self.suite,
            "seeds": self.seeds,
            "paths": [str(r.path) for r in self.runs],
            "dataset_size": self.dataset_size,
            "filter": self.first.filter_name,
            "params": self.first.params,
            "complete": self.complete,
            "missing": self.absent,
            "scores": {g: dict(zip(("mean", "std"), self.score(g))) for g in self.groups},
            "partial_scores": {
                g: dict(zip(("mean", "std"), self.partial_score(g))) for g in self.groups
            },
            "per_task": {
                k: dict(zip(("mean", "std"), self.task_score(k)))
                for k in self.first.aggregate.per_task
            },
        }


def _params_text(run: Run) -> str:
    bits = [f"{k}={v}" for k, v in sorted(run.params.items())]
    return ", ".join(bits) or (run.filter_name or "")


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """Group seeds together; labels made unique per scale (method, then parameters, then folder)."""
    buckets: dict[tuple, list[Run]] = {}
    for r in runs:
        buckets.setdefault(r.group_key(), []).append(r)
    groups = [RunGroup(rs) for rs in buckets.values()]
    by_label: dict[tuple, list[RunGroup]] = {}
    for g in groups:
        by_label.setdefault((g.scale, g.label), []).append(g)
    for same in by_label.values():
        if len(same) > 1:
            for g in same:
                extra = _params_text(g.first)
                g.label = f"{g.method} ({extra})" if extra else g.label
    seen: dict[tuple, int] = {}
    for g in groups:
        k = (g.scale, g.label)
        seen[k] = seen.get(k, 0) + 1
    for g in groups:
        if seen[(g.scale, g.label)] > 1:
            g.label = f"{g.label} [{g.first.path.name}]"
    return sorted(groups, key=lambda g: (g.scale, g.label))


@dataclass
class ResultsStore:
    """All runs found under some paths, grouped by seed."""

    runs: list[Run]

    @classmethod
    def from_paths(
        cls, paths, tasks_file: str | Path | None = None, scale: str | None = None
    ) -> ResultsStore:
        dirs = find_run_dirs(paths)
        runs = [load_run(d, tasks_file, scale) for d in dirs]
        for r in runs:
            if not r.aggregate.complete:
                log.warning(
                    "%s: partial results, %d/%d tasks (missing: %s)",
                    r.path,
                    r.aggregate.n_expected - len(r.aggregate.absent),
                    r.aggregate.n_expected,
                    r.aggregate.absent_text(),
                )
        return cls(runs)

    @property
    def groups(self) -> list[RunGroup]:
        return group_runs(self.runs)

    @property
    def scales(self) -> list[str]:
        order = ["tiny", "debug", "small", "medium", "large", "xlarge"]
        present = {r.scale for r in self.runs}
        return [s for s in order if s in present] + sorted(present - set(order))

    def groups_at(self, scale: str) -> list[RunGroup]:
        return [g for g in self.groups if g.scale == scale]

    def find(self, name: str) -> list[RunGroup]:
        """Groups whose label or method equals ``name``, or one of whose run folders is ``name``."""
        p = Path(name)
        hits = [g for g in self.groups if name in (g.label, g.method)]
        if not hits and p.exists():
            rp = p.resolve()
            hits = [g for g in self.groups if any(r.path.resolve() == rp for r in g.runs)]
        return hits


__all__ = [
    "ResultsStore",
    "Run",
    "RunGroup",
    "find_run_dirs",
    "group_runs",
    "load_run",
    "read_info_pkl",
]
