"""Leaderboard plots (matplotlib, headless): published entries as a grey cloud, your runs on top.

Every figure is written as PNG and SVG; SVGs carry no date and a fixed hash salt so the same
inputs give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipsift.io import atomic_path  # noqa: E402
from clipsift.leaderboards.compare import Comparison  # noqa: E402
from clipsift.leaderboards.tables import BASELINE, Leaderboard  # noqa: E402

YOUR_COLORS = [
    "#d62728",
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
]


def save(fig, stem: str | Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg atomically; return both paths."""
    stem = Path(stem)
    out = []
    with plt.rc_context({"svg.hashsalt": "clipsift", "svg.fonttype": "path"}):
        for ext, kw in (
            ("png", {"dpi": 110, "metadata": {"Software": None}}),
            ("svg", {"metadata": {"Date": None}}),
        ):
            path = stem.with_suffix(f".{ext}")
            with atomic_path(path, suffix=f".{ext}") as tmp:
                fig.savefig(tmp, format=ext, bbox_inches="tight", **kw)
            out.append(path)
    plt.close(fig)
    return out


def _scatter(board: Leaderboard, x_of, y_of, xlabel: str, ylabel: str, title: str, logx: bool):
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for source, marker, label in (
        ("published", "o", "published"),
        (BASELINE, "s", "DataComp baselines"),
    ):
        pts = [
            (x_of(r), y_of(r))
            for r in board.rows
            if r.source == source and x_of(r) is not None and y_of(r) is not None
        ]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(
                xs,
                ys,
                s=28,
                marker=marker,
                color="#9a9a9a",
                alpha=0.65,
                label=label,
                zorder=2,
                edgecolors="none",
            )
    yours = [r for r in board.yours if x_of(r) is not None and y_of(r) is not None]
    for i, r in enumerate(yours):
        color = YOUR_COLORS[i % len(YOUR_COLORS)]
        yerr = r.average_std if ylabel.startswith("Average") else None
        ax.errorbar(
            [x_of(r)],
            [y_of(r)],
            yerr=None if yerr is None else [yerr],
            fmt="*",
            markersize=14,
            color=color,
            markeredgecolor="black",
            markeredgewidth=0.6,
            capsize=3,
            zorder=4,
            markerfacecolor=color if r.complete else "white",
            label=r.method + ("" if r.complete else " (partial)"),
        )
        ax.annotate(
            r.method,
            (x_of(r), y_of(r)),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
            color=color,
            zorder=5,
        )
    skipped = [r.method for r in board.yours if r not in yours]
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    if skipped:
        fig.text(
            0.01, 0.01, f"not plotted (no value): {', '.join(skipped)}", fontsize=7, color="#555"
        )
    return fig


def plot_average_vs_size(board: Leaderboard, stem: str | Path) -> list[Path]:
    """Average over the suite's tasks against the number of training samples in the subset."""
    fig = _scatter(
        board,
        lambda r: r.dataset_size,
        lambda r: r.average,
        "dataset size (samples, log scale)",
        "Average" if board.suite != "datacomp38" else "Average (38 tasks)",
        f"{board.name}: Average vs dataset size",
        True,
    )
    return save(fig, stem)


def plot_imagenet_vs_average(board: Leaderboard, stem: str | Path) -> list[Path]:
    """ImageNet zero-shot accuracy against the Average (DataComp's two headline numbers)."""
    fig = _scatter(
        board,
        lambda r: r.imagenet,
        lambda r: r.average,
        "ImageNet top-1",
        "Average (38 tasks)",
        f"{board.name}: ImageNet vs Average",
        False,
    )
    return save(fig, stem)


def plot_head_to_head(cmp: Comparison, stem: str | Path) -> list[Path]:
    """Horizontal grouped bars: one bar per run for every task and score group."""
    rows = cmp.rows[::-1]
    n, k = len(rows), len(cmp.labels)
    fig, ax = plt.subplots(figsize=(8.5, max(3.0, 0.28 * n * max(1, k / 2) + 1.2)))
    height = 0.8 / k
    y = np.arange(n)
    for i, lab in enumerate(cmp.labels):
        vals = np.array([np.nan if r.values[i] is None else r.values[i] for r in rows])
        errs = np.array([0.0 if r.stds[i] is None else r.stds[i] for r in rows])
        ax.barh(
            y + (k - 1 - i) * height - 0.4 + height / 2,
            np.nan_to_num(vals),
            height=height,
            xerr=errs,
            color=YOUR_COLORS[i % len(YOUR_COLORS)],
            label=lab,
            error_kw={"elinewidth": 0.6},
        )
    ax.set_yticks(y)
    ax.set_yticklabels([r.name for r in rows], fontsize=7)
    for tick, r in zip(ax.get_yticklabels(), rows):
        if r.kind == "group":
            tick.set_fontweight("bold")
    ax.set_xlabel("main metric")
    ax.set_xlim(0, 1)
    ax.set_title("Head-to-head per task (" + " vs ".join(cmp.labels) + ")", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, stem)
