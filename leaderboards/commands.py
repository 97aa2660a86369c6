"""Handlers of ``clipsift leaderboard`` sub-commands (imported only when one runs: they pull in
pandas and matplotlib)."""

from __future__ import annotations

from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.leaderboards import compare as cmp_mod
from clipsift.leaderboards import tables
from clipsift.leaderboards.aggregate import aggregate_file
from clipsift.leaderboards.build import ALL_FORMATS, write_comparison, write_leaderboards
from clipsift.leaderboards.jsonio import dumps
from clipsift.leaderboards.published import PUBLISHED_SCALES, published
from clipsift.leaderboards.store import ResultsStore, RunGroup, load_run
from clipsift.leaderboards.submit import SubmitInfo, write_submit_pack


def cmd_aggregate(args) -> int:
    """Print aggregate_scores.py's lines; exit 1 (partial lines naming the gaps) if incomplete."""
    suite = None if args.suite == "auto" else args.suite
    agg = aggregate_file(args.file, suite, args.tasks)
    if args.json:
        print(dumps(agg.to_dict(), f"{args.file} aggregate", indent=2))
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
