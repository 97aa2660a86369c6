"""Task lists of the evaluation suites, read from TSV files shipped in this package.

``datacomp38``: DataComp's ``tasklist.yml`` (40 entries; FairFace and UTKFace have no main metric,
hence 38 averaged). ``tiny``: the held-out synthetic tasks of the tiny track. Both files share
DataComp's columns, so evaluation and aggregation have no per-suite branches.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

from clipsift.errors import ClipsiftError

SUITES = {"datacomp38": "datacomp_tasks.tsv", "tiny": "tiny_tasks.tsv"}


@dataclass(frozen=True)
class EvalTask:
    """One tasklist entry: key (as in eval_results.jsonl), display name, main metric, size hint."""

    key: str
    name: str
    main_metric: str
    size: int | None
    num_classes: int | None

    @property
    def folder(self) -> str:
        """DataComp's webdataset folder name: ``wds_<key, / -> ->_test`` (``fairness/`` dropped)."""
        key = self.key.split("/", 1)[1] if self.key.startswith("fairness/") else self.key
        return f"wds_{key.replace('/', '-')}_test"


def load_tasks(suite: str) -> list[EvalTask]:
    """The tasks of ``suite`` in file order (evaluation and eval_results.jsonl follow it)."""
    if suite not in SUITES:
        raise ClipsiftError(f"unknown evaluation suite {suite!r}; use one of {', '.join(SUITES)}")
    text = resources.files("clipsift.eval").joinpath(SUITES[suite]).read_text("utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    rows = csv.DictReader(io.StringIO("\n".join(lines)), delimiter="\t")

    def num(v):
        v = (v or "").strip()
        return int(v) if v else None

    return [
        EvalTask(r["task_key"], r["name"] or r["task_key"], r["main_metric"] or "acc1", num(r.get("size")), num(r.get("num_classes")))
        for r in rows
    ]
