"""Leaderboard tables: your run groups next to the published entries, ranked, in MD/CSV/JSON.

Ranking is by Average (descending, equal scores share a rank). Partial results (fewer tasks than
the suite's average needs) are listed after the ranked rows with no rank and their gaps named.
Every writer has a reader so that outputs can be checked and post-processed.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field, fields

from clipsift.errors import ClipsiftError
from clipsift.leaderboards.jsonio import dumps
from clipsift.leaderboards.published import PublishedEntry
from clipsift.leaderboards.store import RunGroup
from clipsift.leaderboards.tasks import AVERAGE, DATACOMP, TINY

YOURS, PUBLISHED, BASELINE = "yours", "published", "baseline"


@dataclass
class LeaderboardRow:
    """One table row; for your runs the scores are means over seeds with their std."""

    method: str
    source: str
    date: str = ""
    author: str = ""
    dataset_size: int | None = None
    imagenet: float | None = None
    imagenet_std: float | None = None
    average: float | None = None
    average_std: float | None = None
    seeds: int | None = None
    complete: bool = True
    n_tasks: int | None = None
    n_expected: int | None = None
    missing: list[str] = field(default_factory=list)
    link: str = ""
    groups: dict[str, float | None] = field(default_factory=dict)
    rank: int | None = None

    @property
    def rankable(self) -> bool:
        return self.complete and self.average is not None


@dataclass
class Leaderboard:
    """The ranked table of one scale (and suite)."""

    scale: str
    suite: str
    track: str
    rows: list[LeaderboardRow]
    group_names: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return (
            self.scale
            if self.suite == DATACOMP or self.scale == TINY
            else f"{self.scale}_{self.suite}"
        )

    @property
    def yours(self) -> list[LeaderboardRow]:
        return [r for r in self.rows if r.source == YOURS]


def row_from_group(group: RunGroup) -> LeaderboardRow:
    """Leaderboard row of a seed group; a partial group carries the mean over the tasks present."""
    complete = group.complete
    avg, avg_std = group.score(AVERAGE) if complete else group.partial_score(AVERAGE)
    imagenet, imagenet_std = group.score("ImageNet") if "ImageNet" in group.groups else (None, None)
    groups = {}
    for g in group.groups:
        if g == AVERAGE:
            continue
        groups[g] = group.score(g)[0]
    n_expected = group.first.aggregate.n_expected
    nulls = {n for r in group.runs for n in r.aggregate.null}
    return LeaderboardRow(
        method=group.label,
        source=YOURS,
        date=(group.created or "")[:10],
        author="",
        dataset_size=group.dataset_size,
        imagenet=imagenet,
        imagenet_std=imagenet_std,
        average=avg,
        average_std=avg_std,
        seeds=group.n,
        complete=complete,
        n_tasks=n_expected - len(group.absent),
        n_expected=n_expected,
        missing=[n + " (null metric)" if n in nulls else n for n in group.absent],
        link=str(group.first.path),
        groups=groups,
    )


def row_from_published(entry: PublishedEntry) -> LeaderboardRow:
    return LeaderboardRow(
        method=entry.method,
        source=BASELINE if entry.is_baseline else PUBLISHED,
        date=entry.date.isoformat() if entry.date else "",
        author=entry.author,
        dataset_size=entry.dataset_size,
        imagenet=entry.imagenet,
        average=entry.average,
        link=entry.link,
    )


def rank_rows(rows: list[LeaderboardRow]) -> list[LeaderboardRow]:
    """Sort by Average (ties share the better rank); unrankable rows follow without a rank."""
    ranked = sorted(
        (r for r in rows if r.rankable), key=lambda r: (-r.average, r.source != YOURS, r.method)
    )
    rest = sorted(
        (r for r in rows if not r.rankable), key=lambda r: (-(r.average or -1.0), r.method)
    )
    prev = None
    for i, r in enumerate(ranked, 1):
        r.rank = prev.rank if prev is not None and prev.average == r.average else i
        prev = r
    for r in rest:
        r.rank = None
    return ranked + rest


def build_leaderboard(
    scale: str, groups: list[RunGroup], entries: list[PublishedEntry], track: str = "filtering"
) -> Leaderboard:
    """Ranked table of ``groups`` (one suite) and the published ``entries`` of the same scale."""
    suites = {g.suite for g in groups}
    if len(suites) > 1:
        raise ClipsiftError(
            f"scale {scale}: runs of several suites ({', '.join(sorted(suites))}) cannot share one table"
        )
    suite = suites.pop() if suites else DATACOMP
    rows = [row_from_group(g) for g in groups]
    if suite == DATACOMP:
        rows += [row_from_published(e) for e in entries]
    names: list[str] = []
    for g in groups:
        names.extend(n for n in g.groups if n not in names and n != AVERAGE)
    return Leaderboard(scale, suite, track, rank_rows(rows), names)


# ----------------------------------------------------------------------------- formatting


def fmt_score(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return ""
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def fmt_size(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def notes(row: LeaderboardRow) -> str:
    bits = []
    if row.seeds and row.seeds > 1:
        bits.append(f"{row.seeds} seeds")
    if not row.complete:
        bits.append(f"partial {row.n_tasks}/{row.n_expected}; missing: {', '.join(row.missing)}")
    return "; ".join(bits)


def score_columns(board: Leaderboard) -> list[tuple[str, object]]:
    """Headline score columns besides Average: ImageNet for DataComp, the suite's groups otherwise."""
    if board.suite == DATACOMP:
        return [("ImageNet", lambda r: (r.imagenet, r.imagenet_std))]
    return [(g, lambda r, g=g: (r.groups.get(g), None)) for g in board.group_names]


def md_columns(board: Leaderboard) -> list[str]:
    scores = [name for name, _ in score_columns(board)]
    return [
        "Rank",
        "Date",
        "Method",
        "Author",
        "Dataset size",
        *scores,
        "Average",
        "Source",
        "Notes",
    ]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(board: Leaderboard) -> str:
    """GitHub-flavoured Markdown table with a heading naming the scale."""
    cols = md_columns(board)
    scores = score_columns(board)
    lines = [f"## {board.name} scale ({board.track} track, {board.suite})", ""]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append(
        "|"
        + "|".join(
            ["---:", "---", "---", "---", "---:"] + ["---:"] * (len(scores) + 1) + ["---", "---"]
        )
        + "|"
    )
    for r in board.rows:
        avg = fmt_score(r.average, r.average_std)
        if avg and not r.complete:
            avg += " (partial)"
        cells = [
            "" if r.rank is None else str(r.rank),
            r.date,
            r.method,
            r.author,
            fmt_size(r.dataset_size),
            *(fmt_score(*get(r)) for _, get in scores),
            avg,
            r.source,
            notes(r),
        ]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def parse_markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table in ``text`` as a list of {header: cell} dicts (``\\|`` unescaped)."""
    tables, current, header = [], None, None
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("|"):
            if current is not None:
                tables.append(current)
            current, header = None, None
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)[1:-1]]
        if header is None:
            header, current = cells, []
        elif all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        else:
            current.append(dict(zip(header, cells)))
    if current is not None:
        tables.append(current)
    return tables


_SCORE = re.compile(r"^(?P<m>-?\d+(?:\.\d+)?)(?: ± (?P<s>\d+(?:\.\d+)?))?(?P<p> \(partial\))?$")


def parse_score(cell: str) -> tuple[float | None, float | None, bool]:
    """'0.345 ± 0.004 (partial)' -> (0.345, 0.004, partial?)."""
    cell = cell.strip()
    if not cell:
        return None, None, False
    m = _SCORE.match(cell)
    if not m:
        raise ValueError(f"not a score: {cell!r}")
    return float(m["m"]), (float(m["s"]) if m["s"] else None), bool(m["p"])


def rows_from_markdown(text: str) -> list[LeaderboardRow]:
    """Leaderboard rows from :func:`to_markdown` output (scores at the printed precision)."""
    tables = parse_markdown_tables(text)
    if not tables:
        raise ClipsiftError("no Markdown table found")
    out = []
    for cells in tables[0]:
        avg, avg_std, partial = parse_score(cells["Average"])
        imn, imn_std, _ = parse_score(cells.get("ImageNet", ""))
        size = cells["Dataset size"].replace(",", "")
        out.append(
            LeaderboardRow(
                method=cells["Method"],
                source=cells["Source"],
                date=cells["Date"],
                author=cells["Author"],
                dataset_size=int(size) if size else None,
                imagenet=imn,
                imagenet_std=imn_std,
                average=avg,
                average_std=avg_std,
                complete=not partial,
                rank=int(cells["Rank"]) if cells["Rank"] else None,
            )
        )
    return out


CSV_COLUMNS = [
    "rank",
    "date",
    "method",
    "author",
    "dataset_size",
    "imagenet",
    "imagenet_std",
    "average",
    "average_std",
    "source",
    "seeds",
    "complete",
    "n_tasks",
    "n_expected",
    "missing",
    "link",
]


def _csv_val(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "; ".join(v)
    return str(v)


def to_csv(board: Leaderboard) -> str:
    """CSV with full-precision numbers; group scores of your runs as extra columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS + board.group_names)
    for r in board.rows:
        w.writerow(
            [_csv_val(getattr(r, c)) for c in CSV_COLUMNS]
            + [_csv_val(r.groups.get(g)) for g in board.group_names]
        )
    return buf.getvalue()


def rows_from_csv(text: str) -> list[LeaderboardRow]:
    """Inverse of :func:`to_csv`."""
    reader = csv.DictReader(io.StringIO(text))
    extra = [c for c in (reader.fieldnames or []) if c not in CSV_COLUMNS]
    out = []
    for d in reader:

        def num(k, d=d):
            return float(d[k]) if d[k] else None

        def integer(k, d=d):
            return int(d[k]) if d[k] else None

        out.append(
            LeaderboardRow(
                method=d["method"],
                source=d["source"],
                date=d["date"],
                author=d["author"],
                dataset_size=integer("dataset_size"),
                imagenet=num("imagenet"),
                imagenet_std=num("imagenet_std"),
                average=num("average"),
                average_std=num("average_std"),
                seeds=integer("seeds"),
                complete=d["complete"] == "true",
                n_tasks=integer("n_tasks"),
                n_expected=integer("n_expected"),
                missing=[m for m in d["missing"].split("; ") if m],
                link=d["link"],
                groups={g: num(g) for g in extra} if d["source"] == YOURS else {},
                rank=integer("rank"),
            )
        )
    return out


def to_json(board: Leaderboard, runs: list[RunGroup] | None = None) -> str:
    """JSON: table metadata, rows and (optionally) per-task details of your run groups."""
    obj = {
        "scale": board.scale,
        "suite": board.suite,
        "track": board.track,
        "groups": board.group_names,
        "rows": [asdict(r) for r in board.rows],
    }
    if runs is not None:
        obj["runs"] = [g.to_dict() for g in runs]
    return dumps(obj, f"leaderboard {board.scale} JSON", indent=2, ensure_ascii=False) + "\n"


def rows_from_json(text: str) -> list[LeaderboardRow]:
    """Inverse of :func:`to_json` for the rows."""
    obj = json.loads(text)
    names = {f.name for f in fields(LeaderboardRow)}
    return [LeaderboardRow(**{k: v for k, v in r.items() if k in names}) for r in obj["rows"]]
