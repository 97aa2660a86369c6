"""The published DataComp leaderboards and baselines table, shipped as data, read and written back.

Filtering-track leaderboards (one TSV per scale, no header): date (MM-DD-YYYY), method, ImageNet,
Average over 38 tasks, dataset size (blank or ``-`` when unknown), author, link.
Baselines (CSV with header): track, scale, date, name, imagenet_acc, avg_acc, dataset_size.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from importlib import resources

from clipsift.errors import ClipsiftError

PUBLISHED_SCALES = ("small", "medium", "large", "xlarge")
TRACKS = ("filtering", "byod")
_DATA = "clipsift.leaderboards.data"


@dataclass(frozen=True)
class PublishedEntry:
    """One published leaderboard row."""

    track: str
    scale: str
    date: dt.date | None
    method: str
    imagenet: float | None
    average: float | None
    dataset_size: int | None
    author: str = ""
    link: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.method.startswith("Baseline:")


def parse_date(text: str) -> dt.date | None:
    """Dates are MM-DD-YYYY on the leaderboard and ISO (YYYY-MM-DD) in clipsift outputs."""
    text = (text or "").strip()
    if not text:
        return None
    for fmt in ("%m-%d-%Y", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text[:10], fmt).date()
        except ValueError:
            continue
    raise ValueError(f"unrecognised date {text!r} (expected MM-DD-YYYY or YYYY-MM-DD)")


def _num(text: str) -> float | None:
    text = (text or "").strip()
    return None if text in ("", "-") else float(text)


def _size(text: str) -> int | None:
    text = (text or "").strip().replace(",", "")
    return None if text in ("", "-") else int(float(text))


def _fmt_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def parse_leaderboard_tsv(
    text: str, scale: str, track: str = "filtering", source: str = "<text>"
) -> list[PublishedEntry]:
    """Parse a published leaderboard TSV."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        cols += [""] * (7 - len(cols))
        try:
            out.append(
                PublishedEntry(
                    track,
                    scale,
                    parse_date(cols[0]),
                    cols[1].strip(),
                    _num(cols[2]),
                    _num(cols[3]),
                    _size(cols[4]),
                    cols[5].strip(),
                    cols[6].strip(),
                )
            )
        except ValueError as exc:
            raise ClipsiftError(
                f"{source}: line {lineno}: {exc}; expected date, method, ImageNet, Average, size, author, link"
            ) from None
    return out


def format_leaderboard_tsv(entries: list[PublishedEntry]) -> str:
    """Write entries in the published TSV layout (the inverse of :func:`parse_leaderboard_tsv`)."""
    lines = []
    for e in entries:
        date = e.date.strftime("%m-%d-%Y") if e.date else ""
        size = "" if e.dataset_size is None else str(e.dataset_size)
        lines.append(
            "\t".join(
                [date, e.method, _fmt_num(e.imagenet), _fmt_num(e.average), size, e.author, e.link]
            )
        )
    return "".join(ln + "\n" for ln in lines)


def parse_baselines_csv(text: str, source: str = "<text>") -> list[PublishedEntry]:
    """Parse DataComp's baselines table (both tracks, all scales)."""
    out = []
    for lineno, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        try:
            out.append(
                PublishedEntry(
                    row["track"],
                    row["scale"],
                    parse_date(row["date"]),
                    row["name"],
                    _num(row["imagenet_acc"]),
                    _num(row["avg_acc"]),
                    _size(row["dataset_size"]),
                    "DataComp team",
                    "https://arxiv.org/abs/2304.14108",
                )
            )
        except (KeyError, ValueError) as exc:
            raise ClipsiftError(
                f"{source}: row {lineno}: {exc}; expected columns track,scale,date,name,imagenet_acc,avg_acc,dataset_size"
            ) from None
    return out


def format_baselines_csv(entries: list[PublishedEntry]) -> str:
    """Write entries in the baselines CSV layout."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["track", "scale", "date", "name", "imagenet_acc", "avg_acc", "dataset_size"])
    for e in entries:
        w.writerow(
            [
                e.track,
                e.scale,
                e.date.strftime("%m-%d-%Y") if e.date else "",
                e.method,
                _fmt_num(e.imagenet),
                _fmt_num(e.average),
                "" if e.dataset_size is None else e.dataset_size,
            ]
        )
    return buf.getvalue()


def _read(name: str) -> str:
    return resources.files(_DATA).joinpath(name).read_text("utf-8")


def published_filtering(scale: str) -> list[PublishedEntry]:
    """The shipped filtering-track leaderboard of ``scale`` (empty for scales without one)."""
    if scale not in PUBLISHED_SCALES:
        return []
    name = f"leaderboard_filtering_{scale}.tsv"
    return parse_leaderboard_tsv(_read(name), scale, "filtering", name)


def published_baselines() -> list[PublishedEntry]:
    """DataComp's baseline rows for both tracks and all scales."""
    return parse_baselines_csv(_read("leaderboard_baselines.csv"), "leaderboard_baselines.csv")


def published(scale: str, track: str = "filtering") -> list[PublishedEntry]:
    """Published entries to compare against: the leaderboard (filtering) or the baselines (byod)."""
    if track not in TRACKS:
        raise ClipsiftError(f"unknown track {track!r}; use one of {', '.join(TRACKS)}")
    if track == "filtering":
        return published_filtering(scale)
    return [e for e in published_baselines() if e.track == track and e.scale == scale]
