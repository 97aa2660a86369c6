"""``clipsift leaderboard``: aggregate, build, compare, published and submit-pack sub-commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipsift.leaderboards import compare as cmp_mod
from clipsift.leaderboards import tables
from clipsift.leaderboards.aggregate import aggregate_file
from clipsift.leaderboards.build import ALL_FORMATS, write_comparison, write_leaderboards
from clipsift.leaderboards.published import PUBLISHED_SCALES, TRACKS, published
from clipsift.leaderboards.store import ResultsStore, RunGroup, load_run
from clipsift.leaderboards.submit import SubmitInfo, write_submit_pack
from clipsift.leaderboards.tasks import SUITES

from clipsift.errors import ClipsiftError

SCALES = ("tiny", "debug", "small", "medium", "large", "xlarge")


def cmd_aggregate(args) -> int:
    """Print aggregate_scores.py's lines; exit 1 (partial lines naming the gaps) if incomplete."""
    suite = None if args.suite == "auto" else args.suite
    agg = aggregate_file(args.file, suite, args.tasks)
    if args.json:
        print(json.dumps(agg.to_dict(), indent=2))
    else:
        for line in agg.lines():
            print(line)
    return 0 if agg.complete else 1


def cmd_build(args) -> int:
    """Write the leaderboard outputs and print each scale's Markdown table."""
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ALL_FORMATS]
    if bad:
        raise ClipsiftError(
            f"unknown format(s) {', '.join(bad)}; choose from {','.join(ALL_FORMATS)}"
        )
    store = (
        ResultsStore.from_paths(args.runs, args.tasks, args.run_scale)
        if args.runs
        else ResultsStore([])
    )
    if not store.runs and not args.scale:
        raise ClipsiftError(
            "no runs found and no --scale given; pass run folders or --scale to show published entries"
        )
    boards, written = write_leaderboards(
        store, args.out, args.track, args.scale, not args.no_published, formats, args.tasks
    )
    for board in boards:
        print(tables.to_markdown(board))
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _groups_for(arg: str, tasks, pool: ResultsStore | None) -> list[RunGroup]:
    if Path(arg).exists():
        return ResultsStore.from_paths([arg], tasks).groups
    if pool is not None:
        hits = pool.find(arg)
        if hits:
            return hits
    raise ClipsiftError(
        f"{arg}: neither a run folder nor a run name found under --from; pass run folders or --from DIR"
    )


def cmd_compare(args) -> int:
    """Head-to-head of two or more runs; prints Markdown, writes files with --out."""
    pool = ResultsStore.from_paths(args.pool, args.tasks) if args.pool else None
    groups: list[RunGroup] = []
    for arg in args.runs:
        groups.extend(_groups_for(arg, args.tasks, pool))
    comparison = cmp_mod.build_comparison(groups, args.tasks)
    print(cmp_mod.to_markdown(comparison))
    if args.out:
        written = write_comparison(comparison, args.out)
        print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_published(args) -> int:
    """Print the shipped published leaderboard(s)."""
    for scale in args.scale or PUBLISHED_SCALES:
        board = tables.build_leaderboard(scale, [], published(scale, args.track), args.track)
        if args.format == "md":
            print(tables.to_markdown(board))
        elif args.format == "csv":
            print(tables.to_csv(board), end="")
        else:
            print(tables.to_json(board), end="")
    return 0


def cmd_submit_pack(args) -> int:
    """Check a run for a DataComp submission and write the files; uploads nothing."""
    run = load_run(args.run)
    info = SubmitInfo(
        method_name=args.method_name,
        author=args.author,
        email=args.email,
        hf_username=args.hf_username,
        hf_repo_name=args.hf_repo_name,
        writeup=args.writeup,
        track=args.track,
        dataset_size=args.dataset_size or "",
    )
    samples = [Path(s) for s in args.samples] if args.samples else None
    out, checks = write_submit_pack(run, args.out, info, samples, args.overwrite)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'WARN'} {c.name}: {c.detail}")
    print(f"submission pack written to {out} (nothing uploaded)")
    return 0


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
    a.set_defaults(func=cmd_aggregate)

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
    b.set_defaults(func=cmd_build)

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
    c.set_defaults(func=cmd_compare)

    pb = sub.add_parser("published", help="print the published leaderboards shipped with clipsift")
    pb.add_argument("--scale", action="append", choices=PUBLISHED_SCALES)
    pb.add_argument("--track", choices=TRACKS, default="filtering")
    pb.add_argument("--format", choices=("md", "csv", "json"), default="md")
    pb.set_defaults(func=cmd_published)

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
    s.set_defaults(func=cmd_submit_pack)
