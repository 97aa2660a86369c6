"""``clipsift leaderboard``: the argument parser. Handlers live in ``commands`` and are imported
only when a sub-command runs, so ``clipsift --help`` stays fast."""

from __future__ import annotations

import argparse

from clipsift.leaderboards.published import PUBLISHED_SCALES, TRACKS
from clipsift.leaderboards.tasks import SUITES

SCALES = ("tiny", "debug", "small", "medium", "large", "xlarge")
ALL_FORMATS = ("md", "csv", "json", "plots", "html")  # must match build.ALL_FORMATS (tested)


def _lazy(name: str):
    def run(args) -> int:
        from clipsift.leaderboards import commands

        return getattr(commands, name)(args)

    run.__name__ = name
    return run


def _help(parser):
    def show(args) -> int:
        parser.print_help()
        return 2

    return show


def register(subparsers) -> None:
    """Add the ``leaderboard`` command group to the clipsift CLI."""
    p = subparsers.add_parser(
        "leaderboard",
        help="DataComp scores, leaderboards, head-to-heads and submission packs",
        description="Aggregate DataComp results exactly like aggregate_scores.py and compare runs with the published leaderboards.",
    )
    p.set_defaults(func=_help(p))
    sub = p.add_subparsers(dest="leaderboard_command", metavar="SUBCOMMAND")

    a = sub.add_parser(
        "aggregate", help="print aggregate_scores.py's lines for one eval_results.jsonl"
    )
    a.add_argument("file", help="eval_results.jsonl (DataComp's evaluate.py format)")
    a.add_argument(
        "--suite",
        choices=("auto",) + SUITES,
        default="auto",
        help="task suite (default: from the keys)",
    )
    a.add_argument(
        "--tasks", help="task list TSV for the tiny suite (default: clipsift/eval/tiny_tasks.tsv)"
    )
    a.add_argument(
        "--json", action="store_true", help="print scores, gaps and per-task values as JSON"
    )
    a.set_defaults(func=_lazy("cmd_aggregate"))

    b = sub.add_parser(
        "build", help="leaderboard per scale: Markdown, CSV, JSON, plots and index.html"
    )
    b.add_argument("runs", nargs="*", help="run folders or folders holding runs")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument(
        "--scale",
        action="append",
        choices=SCALES,
        help="only these scales (repeatable); adds scales without runs",
    )
    b.add_argument(
        "--track", choices=TRACKS, default="filtering", help="published entries to compare with"
    )
    b.add_argument("--no-published", action="store_true", help="your runs only")
    b.add_argument(
        "--formats", default=",".join(ALL_FORMATS), help=f"comma list of {','.join(ALL_FORMATS)}"
    )
    b.add_argument("--tasks", help="task list TSV for the tiny suite")
    b.add_argument(
        "--run-scale",
        choices=SCALES,
        help="scale for runs that record none (e.g. evaluate.py --use_model)",
    )
    b.set_defaults(func=_lazy("cmd_build"))

    c = sub.add_parser("compare", help="head-to-head of two or more runs per task and group")
    c.add_argument(
        "runs",
        nargs="+",
        help="run folders (a folder of seeds counts as one run) or names found under --from",
    )
    c.add_argument(
        "--from",
        dest="pool",
        action="append",
        help="folder of runs to look names up in (repeatable)",
    )
    c.add_argument(
        "--out", help="also write compare.md/.csv/.json/.html and a per-task bar chart here"
    )
    c.add_argument("--tasks", help="task list TSV for the tiny suite")
    c.set_defaults(func=_lazy("cmd_compare"))

    pb = sub.add_parser("published", help="print the published leaderboards shipped with clipsift")
    pb.add_argument("--scale", action="append", choices=PUBLISHED_SCALES)
    pb.add_argument("--track", choices=TRACKS, default="filtering")
    pb.add_argument("--format", choices=("md", "csv", "json"), default="md")
    pb.set_defaults(func=_lazy("cmd_published"))

    s = sub.add_parser(
        "submit-pack",
        help="write (not upload) what a DataComp submission needs, after checks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("run", help="run folder with eval_results.jsonl (and run.json)")
    s.add_argument("--out", required=True, help="pack folder to create")
    s.add_argument("--method-name", help="method name shown on the leaderboard (public)")
    s.add_argument("--author", help="author name(s) (public)")
    s.add_argument("--email", help="contact email (not public)")
    s.add_argument("--hf-username", help="Hugging Face user the artefacts go to")
    s.add_argument("--hf-repo-name", help="Hugging Face repository name")
    s.add_argument("--writeup", help="link to a paper or blog post (public)")
    s.add_argument("--track", choices=TRACKS, default="filtering")
    s.add_argument(
        "--samples", action="append", help="uid subset file(s); default: run.json subset.path"
    )
    s.add_argument("--dataset-size", help="dataset size to report (default: run.json dataset_size)")
    s.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty --out folder"
    )
    s.set_defaults(func=_lazy("cmd_submit_pack"))
