"""Evaluation task lists (DataComp's 40 entries, clipsift's tiny suite) and their score groups.

Both suites are read from TSV files with DataComp's columns (task_key, name, main_metric, ...,
groups) so that the aggregation below is data, not code branches.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.safeload import read_text

DATACOMP = "datacomp38"
TINY = "tiny"
SUITES = (DATACOMP, TINY)

# evaluate.py stores main_metric = metrics.get("acc1") for these two, and their evaluators report
# no acc1, so the value is always null: aggregate_scores.py drops them and averages 38 tasks.
NO_MAIN_METRIC = ("fairness/fairface", "fairness/utkface")
# The order in which aggregate_scores.py prints its groups.
DATACOMP_GROUPS = ("ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval")
# The shipped tiny suite's groups first; a custom task list may use "Classification" (the default
# group of a tiny task without one). Groups without tasks are not shown.
TINY_GROUPS = ("Concepts", "Tail concepts", "Classification", "Retrieval")
AVERAGE = "Average"


@dataclass(frozen=True)
class Task:
    """One evaluation entry: key as in eval_results.jsonl, display name, main metric, groups."""

    key: str
    name: str
    main_metric: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    random_score: float | None = None


@dataclass(frozen=True)
class TaskList:
    """The tasks of one suite; ``averaged`` lists the keys that enter the Average."""

    suite: str
    tasks: tuple[Task, ...]
    averaged: tuple[str, ...]
    group_order: tuple[str, ...]
    source: str = ""
    _by_key: dict = field(default_factory=dict, compare=False, repr=False)
    _by_name: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        for t in self.tasks:
            self._by_key[t.key] = t
            self._by_name[t.name] = t

    def lookup(self, key: str | None, dataset: str | None) -> Task | None:
        """The task a result row belongs to, by key first and display name second."""
        if key is not None and key in self._by_key:
            return self._by_key[key]
        if dataset is not None and dataset in self._by_name:
            return self._by_name[dataset]
        return None

    def task(self, key: str) -> Task:
        return self._by_key[key]

    @property
    def averaged_tasks(self) -> list[Task]:
        return [self._by_key[k] for k in self.averaged]

    def members(self, group: str) -> list[Task]:
        """Tasks of ``group`` in task-list order."""
        return [t for t in self.tasks if group in t.groups]


def _split(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(p.strip() for p in value.replace(";", ",").split(",") if p.strip())


def parse_task_tsv(text: str, source: str = "<text>") -> list[Task]:
    """Parse a DataComp-style task TSV (comment lines start with ``#``)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise ClipsiftError(
            f"{source}: task list is empty; it needs a header line and one row per task"
        )
    reader = csv.DictReader(io.StringIO("\n".join(lines)), delimiter="\t")
    need = {"task_key", "name", "main_metric"}
    if not need.issubset(reader.fieldnames or ()):
        raise ClipsiftError(f"{source}: task list header must contain columns {sorted(need)}")
    tasks = []
    for row in reader:
        rs = (row.get("random_score") or "").strip()
        tasks.append(
            Task(
                key=row["task_key"].strip(),
                name=(row["name"] or row["task_key"]).strip(),
                main_metric=(row["main_metric"] or "acc1").strip(),
                groups=_split(row.get("groups")),
                tags=_split(row.get("tags")),
                random_score=float(rs) if rs else None,
            )
        )
    return tasks


@lru_cache(maxsize=1)
def datacomp_tasks() -> TaskList:
    """DataComp's 40 tasks; the Average covers the 38 that report a main metric."""
    text = (
        resources.files("clipsift.leaderboards.data")
        .joinpath("datacomp_tasks.tsv")
        .read_text("utf-8")
    )
    tasks = parse_task_tsv(text, "clipsift/leaderboards/data/datacomp_tasks.tsv")
    averaged = tuple(t.key for t in tasks if t.key not in NO_MAIN_METRIC)
    return TaskList(DATACOMP, tuple(tasks), averaged, DATACOMP_GROUPS, source="datacomp_tasks.tsv")


def _tiny_group(task: Task) -> tuple[str, ...]:
    """Tiny tasks without an explicit group: retrieval by metric or tag, classification otherwise."""
    if task.groups:
        return task.groups
    if (
        task.main_metric.startswith("mean_recall")
        or "retrieval" in task.tags
        or "retrieval" in task.key
    ):
        return ("Retrieval",)
    return ("Classification",)


def tiny_tasks_path() -> Path:
    """Where the eval package ships the tiny task list (clipsift/eval/tiny_tasks.tsv)."""
    return Path(str(resources.files("clipsift.eval").joinpath("tiny_tasks.tsv")))


def tiny_tasks(path: str | Path | None = None) -> TaskList:
    """The tiny suite's task list, from ``path`` or the file shipped by clipsift.eval."""
    path = Path(path) if path is not None else tiny_tasks_path()
    if not path.is_file():
        raise ClipsiftError(
            f"{path}: tiny task list not found; install clipsift.eval's tiny_tasks.tsv or pass --tasks FILE"
        )
    tasks = parse_task_tsv(read_text(path, "task list"), str(path))
    tasks = [
        Task(t.key, t.name, t.main_metric, _tiny_group(t), t.tags, t.random_score) for t in tasks
    ]
    order = [g for g in TINY_GROUPS] + [g for t in tasks for g in t.groups if g not in TINY_GROUPS]
    order = tuple(dict.fromkeys(order))
    return TaskList(TINY, tuple(tasks), tuple(t.key for t in tasks), order, source=str(path))


def task_list(suite: str, tasks_file: str | Path | None = None) -> TaskList:
    """Task list for ``suite``; ``tasks_file`` overrides the shipped list."""
    if suite == TINY:
        return tiny_tasks(tasks_file)
    if suite == DATACOMP:
        if tasks_file is None:
            return datacomp_tasks()
        path = Path(tasks_file)
        if not path.is_file():
            raise ClipsiftError(f"{path}: task list not found; pass --tasks FILE (a DataComp-style TSV)")
        tasks = parse_task_tsv(read_text(path, "task list"), str(path))
        averaged = tuple(t.key for t in tasks if t.key not in NO_MAIN_METRIC)
        return TaskList(DATACOMP, tuple(tasks), averaged, DATACOMP_GROUPS, source=str(path))
    raise ClipsiftError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)}")


def detect_suite(keys) -> str:
    """``tiny`` when result keys start with ``tiny/``, DataComp's suite otherwise."""
    keys = [k for k in keys if k]
    if keys and all(str(k).startswith("tiny/") for k in keys):
        return TINY
    return DATACOMP
