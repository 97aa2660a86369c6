"""Head-to-head: two or more run groups side by side per group and per task, with differences.

The first run is the reference; each other column gets ``run − reference``. Groups are only
scored when every member task is present (the same rule as the leaderboard), tasks always.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

from clipsift.errors import ClipsiftError
from clipsift.leaderboards.jsonio import dumps
from clipsift.leaderboards.store import RunGroup
from clipsift.leaderboards.tasks import DATACOMP, task_list


@dataclass
class CompareRow:
    """One line of the comparison: a score group or a task."""

    kind: str  # "group" or "task"
    name: str
    key: str | None
    group: str = ""
    values: list[float | None] = field(default_factory=list)
    stds: list[float | None] = field(default_factory=list)

    @property
    def diffs(self) -> list[float | None]:
        ref = self.values[0]
        return [None if ref is None or v is None else v - ref for v in self.values[1:]]


@dataclass
class Comparison:
    labels: list[str]
    suite: str
    rows: list[CompareRow]
    missing: list[list[str]]

    def wins(self) -> list[tuple[int, int, int]]:
        """Per non-reference run: tasks (better, worse, equal) than the reference."""
        out = []
        for i in range(len(self.labels) - 1):
            d = [r.diffs[i] for r in self.rows if r.kind == "task" and r.diffs[i] is not None]
            out.append((sum(x > 0 for x in d), sum(x < 0 for x in d), sum(x == 0 for x in d)))
        return out

    def to_dict(self) -> dict:
        return {
            "labels": self.labels,
            "suite": self.suite,
            "missing": dict(zip(self.labels, self.missing)),
            "rows": [asdict(r) | {"diffs": r.diffs} for r in self.rows],
        }


def build_comparison(groups: list[RunGroup], tasks_file=None) -> Comparison:
    """Compare run groups of one suite; the first is the reference."""
    if len(groups) < 2:
        raise ClipsiftError(
            "a head-to-head needs at least two runs; name two or more run folders or methods"
        )
    suites = {g.suite for g in groups}
    if len(suites) != 1:
        raise ClipsiftError(
            f"runs use different evaluation suites ({', '.join(sorted(suites))}); compare runs of one suite"
        )
    suite = suites.pop()
    tasks = task_list(suite, None if suite == DATACOMP else tasks_file)
    rows = []
    for name in groups[0].groups:
        pairs = [g.score(name) for g in groups]
        rows.append(
            CompareRow("group", name, None, "", [p[0] for p in pairs], [p[1] for p in pairs])
        )
    averaged = set(tasks.averaged)
    for t in tasks.tasks:
        if t.key not in averaged:
            continue
        pairs = [g.task_score(t.key) for g in groups]
        rows.append(
            CompareRow(
                "task",
                t.name,
                t.key,
                ", ".join(t.groups),
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )
        )
    labels = [g.label for g in groups]
    if len(set(labels)) < len(labels):
        labels = [f"{g.label} @{g.scale}" for g in groups]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return Comparison(labels, suite, rows, [g.absent for g in groups])


def _f(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if std is None else f"{v:.3f} ± {std:.3f}"


def _d(v: float | None) -> str:
    return "—" if v is None else f"{v:+.3f}"


def to_markdown(cmp: Comparison) -> str:
    ref = cmp.labels[0]
    head = ["Task", "Group", cmp.labels[0]]
    for lab in cmp.labels[1:]:
        head += [lab, f"{lab} − {ref}"]
    lines = [
        "| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for r in cmp.rows:
        name = f"**{r.name}**" if r.kind == "group" else r.name
        cells = [name, r.group, _f(r.values[0], r.stds[0])]
        for i in range(1, len(r.values)):
            cells += [_f(r.values[i], r.stds[i]), _d(r.diffs[i - 1])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    for lab, (w, lo, eq) in zip(cmp.labels[1:], cmp.wins()):
        lines.append(f"{lab} vs {ref}: better on {w} tasks, worse on {lo}, equal on {eq}.")
    for lab, miss in zip(cmp.labels, cmp.missing):
        if miss:
            lines.append(f"{lab}: partial results, missing {', '.join(miss)}.")
    return "\n".join(lines) + "\n"


def to_csv(cmp: Comparison) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    ref = cmp.labels[0]
    head = ["kind", "name", "key", "group"]
    for i, lab in enumerate(cmp.labels):
        head += [lab, f"{lab} std"] + ([f"{lab} - {ref}"] if i else [])
    w.writerow(head)
    for r in cmp.rows:
        row = [r.kind, r.name, r.key or "", r.group]
        for i in range(len(cmp.labels)):
            row += [
                "" if r.values[i] is None else repr(r.values[i]),
                "" if r.stds[i] is None else repr(r.stds[i]),
            ]
            if i:
                d = r.diffs[i - 1]
                row.append("" if d is None else repr(d))
        w.writerow(row)
    return buf.getvalue()


def from_csv(text: str) -> Comparison:
    """Inverse of :func:`to_csv` (missing lists are not stored in CSV)."""
    reader = csv.reader(io.StringIO(text))
    head = next(reader)
    labels = [h for h in head[4:] if not h.endswith(" std") and " - " not in h]
    rows = []
    for rec in reader:
        d = dict(zip(head, rec))
        vals = [float(d[lab]) if d[lab] else None for lab in labels]
        stds = [float(d[f"{lab} std"]) if d[f"{lab} std"] else None for lab in labels]
        rows.append(CompareRow(rec[0], rec[1], rec[2] or None, rec[3], vals, stds))
    return Comparison(labels, "", rows, [[] for _ in labels])


def to_json(cmp: Comparison) -> str:
    return dumps(cmp.to_dict(), "compare.json", indent=2, ensure_ascii=False) + "\n"


def from_json(text: str) -> Comparison:
    obj = json.loads(text)
    rows = [
        CompareRow(r["kind"], r["name"], r["key"], r["group"], r["values"], r["stds"])
        for r in obj["rows"]
    ]
    return Comparison(
        obj["labels"], obj["suite"], rows, [obj["missing"][lab] for lab in obj["labels"]]
    )
