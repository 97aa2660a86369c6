"""DataComp-exact aggregation of eval_results.jsonl, with partial results made explicit.

aggregate_scores.py reads the file with ``pandas.read_json(lines=True)`` (whose default float
parser is not correctly rounded), drops rows whose main metric is null/NaN, requires exactly 38
rows and prints ImageNet, the three group means and the mean of all main metrics in file order.
We parse the numbers the same way and average in the same order, so complete files print the same
lines; incomplete files are reported as partial with the missing tasks named, never averaged
silently.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipsift.errors import ClipsiftError
from clipsift.leaderboards.tasks import AVERAGE, TaskList, detect_suite, task_list
from clipsift.log import get_logger
from clipsift.safeload import read_text

log = get_logger("leaderboards.aggregate")


@dataclass
class ResultRow:
    """One line of eval_results.jsonl; ``main_metric`` as DataComp's pandas reader sees it."""

    key: str | None
    dataset: str | None
    metrics: dict
    main_metric: float | None


def _clean(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def check_main_metric(value, source: str, lineno: int) -> None:
    """A main metric is null or a finite number in [0, 1]; anything else is one error line.

    Every DataComp main metric (accuracy, mean per-class recall, worst-group accuracy, recall@1,
    F1, Jaccard) lies in [0, 1]; FairFace and UTKFace store null, which stays accepted.
    """
    if value is None:
        return
    where = f"{source}: line {lineno}: main_metric"
    fix = "write the task's score in [0, 1], or null for a task without a main metric, or delete that line"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClipsiftError(f"{where} {json.dumps(value)[:40]} is not a number; {fix}")
    if not math.isfinite(value):
        raise ClipsiftError(f"{where} is {json.dumps(value)}, not a score (nor valid JSON); {fix}")
    if not 0.0 <= value <= 1.0:
        raise ClipsiftError(f"{where} {value!r} is outside [0, 1]; {fix}")


def _pandas_main_metrics(lines: list[str]) -> list[float | None] | None:
    """Main metrics parsed by pandas exactly as aggregate_scores.py does (None if pandas fails)."""
    try:
        df = pd.read_json(io.StringIO("\n".join(lines) + "\n"), lines=True)
    except ValueError:
        return None
    if "metrics" not in df.columns or len(df) != len(lines):
        return None
    return [_clean(m.get("main_metric")) if isinstance(m, dict) else None for m in df["metrics"]]


def parse_eval_results(text: str, source: str = "<text>") -> list[ResultRow]:
    """Parse eval_results.jsonl text; a truncated last line (interrupted write) is skipped."""
    raw = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    good: list[str] = []
    objs: list[dict] = []
    for idx, (lineno, ln) in enumerate(raw):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            if idx == len(raw) - 1 and not text.endswith("\n"):
                log.warning(
                    "%s: line %d is incomplete (interrupted write?); skipped", source, lineno
                )
                continue
            raise ClipsiftError(
                f"{source}: line {lineno} is not valid JSON ({exc.msg}); fix or delete that line"
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("metrics"), dict):
            raise ClipsiftError(
                f"{source}: line {lineno} lacks a 'metrics' object; expected DataComp's {{key, dataset, metrics}} lines"
            )
        check_main_metric(obj["metrics"].get("main_metric"), source, lineno)
        good.append(ln)
        objs.append(obj)
    exact = _pandas_main_metrics(good) if good else []
    rows = []
    for i, obj in enumerate(objs):
        mm = exact[i] if exact is not None else _clean(obj["metrics"].get("main_metric"))
        rows.append(ResultRow(obj.get("key"), obj.get("dataset"), obj["metrics"], mm))
    return rows


def read_eval_results(path: str | Path) -> list[ResultRow]:
    """Read an eval_results.jsonl file written by DataComp's evaluate.py or clipsift."""
    path = Path(path)
    if not path.is_file():
        raise ClipsiftError(f"{path}: results file not found; point at a run's eval_results.jsonl")
    return parse_eval_results(read_text(path, "results file"), str(path))


@dataclass
class Aggregate:
    """Group scores of one results file; groups with absent tasks are None in ``scores``."""

    suite: str
    scores: dict[str, float | None]
    partial_scores: dict[str, float | None]
    group_sizes: dict[str, int]
    group_absent: dict[str, list[str]]
    per_task: dict[str, float]
    missing: list[str] = field(default_factory=list)
    null: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    n_expected: int = 0

    @property
    def complete(self) -> bool:
        return not self.missing and not self.null

    @property
    def absent(self) -> list[str]:
        """Names of averaged tasks without a usable main metric (no row, or a null one)."""
        return self.missing + self.null

    def absent_text(self, names: list[str] | None = None) -> str:
        names = self.absent if names is None else names
        null = set(self.null)
        return ", ".join(f"{n} (null metric)" if n in null else n for n in names)

    def lines(self) -> list[str]:
        """aggregate_scores.py's printed lines when complete; partial lines naming gaps otherwise."""
        out = []
        for group, score in self.scores.items():
            if score is not None:
                out.append(f"{group}: {score:.3f}")
                continue
            absent = self.group_absent[group]
            size = self.group_sizes[group]
            have = size - len(absent)
            part = self.partial_scores[group]
            value = "n/a" if part is None else f"partial {part:.3f}"
            out.append(
                f"{group}: {value} ({have}/{size} tasks; missing: {self.absent_text(absent)})"
            )
        return out

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "complete": self.complete,
            "scores": self.scores,
            "partial_scores": self.partial_scores,
            "missing": self.missing,
            "null": self.null,
            "extra": self.extra,
            "per_task": self.per_task,
        }


def aggregate_rows(rows: list[ResultRow], tasks: TaskList) -> Aggregate:
    """Aggregate parsed rows against ``tasks`` (see module docstring for the exact rules)."""
    values: dict[str, float] = {}  # task key -> main metric; insertion = first non-null row
    seen_null: set[str] = set()
    extra: list[str] = []
    counts: dict[str, int] = {}
    for row in rows:
        task = tasks.lookup(row.key, row.dataset)
        if task is None:
            name = row.dataset or row.key or "?"
            if row.main_metric is not None and name not in extra:
                extra.append(name)
            continue
        if row.main_metric is None:
            seen_null.add(task.key)
            continue
        counts[task.key] = counts.get(task.key, 0) + 1
        values[task.key] = row.main_metric  # last row wins, as dict(zip(...)) does
    duplicates = [tasks.task(k).name for k, c in counts.items() if c > 1]
    if duplicates:
        log.warning(
            "results hold several rows for %s; the last row of each is used", ", ".join(duplicates)
        )
    averaged = set(tasks.averaged)
    if extra:
        log.warning(
            "results hold tasks outside the %s list, not averaged: %s",
            tasks.suite,
            ", ".join(extra),
        )
    missing = [
        t.name for t in tasks.averaged_tasks if t.key not in values and t.key not in seen_null
    ]
    null = [t.name for t in tasks.averaged_tasks if t.key not in values and t.key in seen_null]

    scores: dict[str, float | None] = {}
    partial: dict[str, float | None] = {}
    sizes: dict[str, int] = {}
    group_absent: dict[str, list[str]] = {}
    groups = [(g, [t for t in tasks.members(g) if t.key in averaged]) for g in tasks.group_order]
    avg_tasks = [k for k in values if k in averaged]  # file order, as aggregate_scores.py averages
    groups.append((AVERAGE, None))
    for group, members in groups:
        if members is None:
            keys = avg_tasks
            expected = tasks.averaged_tasks
        else:
            keys = [t.key for t in members if t.key in values]
            expected = members
        if not expected:
            continue
        absent = [t.name for t in expected if t.key not in values]
        have = [values[k] for k in keys]
        mean = float(np.mean(have)) if have else None
        sizes[group] = len(expected)
        group_absent[group] = absent
        scores[group] = None if absent else mean
        partial[group] = mean
    per_task = {k: values[k] for k in tasks.averaged if k in values}
    return Aggregate(
        suite=tasks.suite,
        scores=scores,
        partial_scores=partial,
        group_sizes=sizes,
        group_absent=group_absent,
        per_task=per_task,
        missing=missing,
        null=null,
        extra=extra,
        duplicates=duplicates,
        n_expected=len(tasks.averaged),
    )


def aggregate_file(
    path: str | Path, suite: str | None = None, tasks_file: str | Path | None = None
) -> Aggregate:
    """Read and aggregate one eval_results.jsonl; the suite is detected from its keys if not given."""
    rows = read_eval_results(path)
    suite = suite or detect_suite([r.key for r in rows])
    return aggregate_rows(rows, task_list(suite, tasks_file))
