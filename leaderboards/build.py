"""Write every leaderboard output for a results store: MD, CSV, JSON, plots and one HTML page."""

from __future__ import annotations

from pathlib import Path

from clipsift.io import write_text
from clipsift.leaderboards import compare as cmp_mod
from clipsift.leaderboards import page, plots, tables
from clipsift.leaderboards.published import published
from clipsift.leaderboards.store import ResultsStore, RunGroup
from clipsift.leaderboards.tables import Leaderboard
from clipsift.log import get_logger

log = get_logger("leaderboards.build")


def leaderboards(
    store: ResultsStore, track: str = "filtering", scales=None, include_published: bool = True
):
    """(board, run groups) per scale and suite, in scale order; ``scales`` restricts or adds scales."""
    wanted = list(scales) if scales else store.scales
    out = []
    for scale in wanted:
        groups = store.groups_at(scale)
        by_suite: dict[str, list[RunGroup]] = {}
        for g in groups:
            by_suite.setdefault(g.suite, []).append(g)
        if not by_suite:
            by_suite = {"datacomp38": []}
        entries = published(scale, track) if include_published else []
        for gs in by_suite.values():
            out.append((tables.build_leaderboard(scale, gs, entries, track), gs))
    return out


def write_board(
    board: Leaderboard, groups: list[RunGroup], out: Path, formats
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files of one scale; returns (written paths, [(png, caption)] for the HTML page)."""
    name = board.name
    written: list[Path] = []
    render = {"md": lambda: tables.to_markdown(board), "csv": lambda: tables.to_csv(board),
              "json": lambda: tables.to_json(board, groups)}
    texts = {fmt: make() for fmt, make in render.items() if fmt in formats}  # all rendered, then written
    for fmt, text in texts.items():
        written.append(write_text(out / f"leaderboard_{name}.{fmt}", text))
    figs: list[tuple[Path, str]] = []
    if "plots" in formats and board.rows:
        paths = plots.plot_average_vs_size(board, out / f"{name}_average_vs_size")
        figs.append((paths[0], f"{name}: Average vs dataset size"))
        written += paths
        if board.suite == "datacomp38":
            paths = plots.plot_imagenet_vs_average(board, out / f"{name}_imagenet_vs_average")
            figs.append((paths[0], f"{name}: ImageNet vs Average"))
            written += paths
    return written, figs


ALL_FORMATS = ("md", "csv", "json", "plots", "html")


def write_leaderboards(
    store: ResultsStore,
    out_dir: str | Path,
    track: str = "filtering",
    scales=None,
    include_published: bool = True,
    formats=ALL_FORMATS,
    tasks_file=None,
):
    """Write all outputs under ``out_dir``; returns (boards, written paths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    boards = leaderboards(store, track, scales, include_published)
    written: list[Path] = []
    sections = []
    for board, groups in boards:
        paths, figs = write_board(board, groups, out, formats)
        written += paths
        sections.append((board, groups, figs))
    if "html" in formats:
        written.append(write_text(out / "index.html", page.leaderboard_page(sections, tasks_file)))
    log.info("wrote %d files to %s", len(written), out)
    return [b for b, _ in boards], written


def write_comparison(comparison: cmp_mod.Comparison, out_dir: str | Path) -> list[Path]:
    """Head-to-head outputs: compare.md/.csv/.json, per-task bar chart (PNG, SVG), compare.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {  # all rendered before the first file is written
        "compare.md": cmp_mod.to_markdown(comparison),
        "compare.csv": cmp_mod.to_csv(comparison),
        "compare.json": cmp_mod.to_json(comparison),
    }
    written = [write_text(out / name, text) for name, text in texts.items()]
    figs = plots.plot_head_to_head(comparison, out / "compare_tasks")
    written += figs
    written.append(write_text(out / "compare.html", page.compare_page(comparison, figs[0])))
    return written
