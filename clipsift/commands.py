"""Core CLI commands: ``pool``, ``subset``, ``filters`` and ``filter``."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from clipsift.errors import ClipsiftError, ParamError


def register(sub) -> None:
    _register_pool(sub)
    _register_subset(sub)
    p = sub.add_parser("filters", help="list the registered filters and their parameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_filters)
    _register_filter(sub)


BAD_EMBEDDINGS = ("error", "drop")


def _add_exec_args(p) -> None:
    p.add_argument("--workers", type=int, default=None, help="worker processes, or Ray tasks at once (default: CPU count)")
    p.add_argument(
        "--executor", choices=("local", "ray"), default="local",
        help="where map steps run: local processes (default) or a Ray cluster (pip install 'clipsift[ray]')",
    )
    p.add_argument(
        "--ray-address", default=None, metavar="ADDR",
        help="Ray cluster to join (auto, HOST:6379 or ray://HOST:10001); default: start Ray on this machine",
    )


def add_run_args(p, device_flag: str = "--device") -> None:
    """--device and --bad-embeddings, for every command that runs filters (core and plugins)."""
    p.add_argument(device_flag, default="auto", dest="device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--bad-embeddings", choices=BAD_EMBEDDINGS, default="error",
        help="rows whose embeddings are non-finite or zero: stop with an error naming the row (default), "
        "or drop them and count them in the manifest",
    )


def _executor(args):
    from clipsift.executor import make_executor

    return make_executor(
        getattr(args, "executor", "local"), workers=args.workers, address=getattr(args, "ray_address", None),
        show_progress=not args.quiet,
    )


# ---- pool --------------------------------------------------------------------------------------
def _register_pool(sub) -> None:
    pool = sub.add_parser("pool", help="inspect or generate DataComp pools")
    psub = pool.add_subparsers(dest="pool_command", metavar="SUBCOMMAND", required=True)
    p = psub.add_parser("info", help="shards, rows, columns, embedding keys and dims of a pool")
    p.add_argument("dir", help="DataComp metadata directory (local path or fsspec URL)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_pool_info)
    p = psub.add_parser("make", help="write a synthetic pool in DataComp's layout (with ground truth)")
    p.add_argument("--out", required=True, help="output folder (metadata/, truth.parquet, shards/)")
    p.add_argument("--rows", type=int, required=True, help="number of samples")
    p.add_argument("--images", action="store_true", help="also write img2dataset image shards")
    p.add_argument("--seed", type=int, default=0, help="world and sampling seed (default 0)")
    p.add_argument("--shard-rows", type=int, default=10_000, help="rows per metadata shard (default 10000)")
    _add_exec_args(p)
    p.set_defaults(func=cmd_pool_make)


def cmd_pool_info(args) -> int:
    from clipsift.pool import Pool

    pool = Pool(args.dir)
    shapes = pool.embedding_shapes()
    missing_npz = sum(not pool.has_npz(s) for s in pool.shards)
    info = {
        "root": pool.root,
        "shards": len(pool.shards),
        "rows": pool.num_rows,
        "columns": {f.name: str(f.type) for f in pool.schema},
        "embeddings": {k: {"dim": int(v[0][1]) if len(v[0]) > 1 else None, "dtype": v[1]} for k, v in shapes.items()},
        "shards_without_npz": missing_npz,
    }
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    print(f"pool     {info['root']}")
    print(f"shards   {info['shards']}  (without npz: {missing_npz})")
    print(f"rows     {info['rows']}")
    print("columns  " + ", ".join(f"{k}:{v}" for k, v in info["columns"].items()))
    print("embeddings " + (", ".join(f"{k}[{v['dim']}]:{v['dtype']}" for k, v in info["embeddings"].items()) or "none"))
    return 0


def cmd_pool_make(args) -> int:
    from clipsift.io import check_output_dir
    from clipsift.synth import make_pool

    if args.rows <= 0:
        raise ParamError("--rows must be positive")
    if args.shard_rows <= 0:
        raise ParamError("--shard-rows must be positive")
    check_output_dir(args.out)
    summary = make_pool(args.out, args.rows, seed=args.seed, images=args.images, shard_rows=args.shard_rows, workers=args.workers)
    json.dump(summary, sys.stdout, indent=2, default=str)
    print()
    return 0


# ---- subset ------------------------------------------------------------------------------------
def _register_subset(sub) -> None:
    subset = sub.add_parser("subset", help="check and combine DataComp subset (uid) files")
    ssub = subset.add_subparsers(dest="subset_command", metavar="SUBCOMMAND", required=True)
    p = ssub.add_parser("check", help="dtype, sortedness, duplicates, uids missing from a pool")
    p.add_argument("file", help="subset file (.npy or raw 16-byte records)")
    p.add_argument("--pool", help="pool metadata directory to look the uids up in")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_exec_args(p)
    p.set_defaults(func=cmd_subset_check)
    for op, text in (("intersect", "uids in every file"), ("union", "uids in any file"), ("diff", "uids of the first file absent from the others")):
        p = ssub.add_parser(op, help=text + " (sorted, unique)")
        p.add_argument("files", nargs="+", metavar="FILE")
        p.add_argument("-o", "--out", required=True, help="output subset file")
        p.set_defaults(func=cmd_subset_combine, op=op)


def cmd_subset_check(args) -> int:
    from dataclasses import asdict

    from clipsift.pool import Pool
    from clipsift.subset import check_subset

    pool = Pool(args.pool) if args.pool else None
    rep = check_subset(args.file, pool, _executor(args))
    if args.json:
        json.dump({**asdict(rep), "ok": rep.ok}, sys.stdout, indent=2)
        print()
    else:
        print(f"file        {rep.path}")
        print(f"dtype       {rep.dtype}")
        print(f"count       {rep.count}")
        print(f"sorted      {'yes' if rep.sorted else f'NO (first out of order at index {rep.first_unsorted})'}")
        print(f"duplicates  {rep.duplicates}")
        if rep.missing_from_pool is not None:
            print(f"missing     {rep.missing_from_pool} of the subset's unique uids are not in the pool ({rep.pool_rows} rows)")
        print(f"manifest    {rep.manifest_status}" + (f" ({rep.manifest})" if rep.manifest else ""))
        print("status      " + ("ok" if rep.ok else "FAILED"))
    if rep.manifest_problem:
        print(f"clipsift: error: {rep.manifest_problem}", file=sys.stderr)
    if not rep.sorted:
        print(f"clipsift: error: {rep.path}: not sorted; DataComp's resharder would silently lose samples, rewrite it with `clipsift subset union FILE -o OUT`", file=sys.stderr)
    return 0 if rep.ok else 1


def cmd_subset_combine(args) -> int:
    from clipsift import __version__
    from clipsift.io import check_output_path
    from clipsift.subset import combine_files, subset_path, write_subset

    if len(args.files) < 2 and args.op != "union":
        raise ParamError(f"subset {args.op} needs at least two files")
    check_output_path(args.out, "-o")
    check_output_path(subset_path(args.out), "-o")
    result = combine_files(args.op, args.files)
    manifest = {"clipsift_version": __version__, "operation": args.op, "inputs": [str(f) for f in args.files], "output_count": len(result)}
    path = write_subset(args.out, result, manifest)
    print(f"{path}: {len(result)} uids")
    return 0


# ---- filters -----------------------------------------------------------------------------------
def cmd_filters(args) -> int:
    from clipsift.registry import available, get_filter_class

    rows = []
    for name in available():
        try:
            cls = get_filter_class(name)
        except ClipsiftError:
            raise
        except Exception as exc:  # a broken third-party plugin: report, keep listing
            rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append(
            {
                "name": name,
                "description": cls.description,
                "params": [p.describe() for p in cls.params],
                "columns": list(cls.columns),
                "embedding_keys": list(cls.embedding_keys),
                "requires": list(cls.requires),
            }
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        print()
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['name']}  (cannot load: {r['error']})")
            continue
        print(f"{r['name']}  {r['description']}")
        for p in r["params"]:
            extra = f" choices={p['choices']}" if "choices" in p else ""
            print(f"    {p['name']}: {p['type']} = {p['default']!r}{extra}  {p['help']}")
    return 0


def _register_filter(sub) -> None:
    p = sub.add_parser(
        "filter",
        help="run a filter or recipe on a pool and write a DataComp subset file",
        description="Run one filter (NAME with --set key=value) or a TOML recipe; writes OUT (.npy) and OUT.json.",
    )
    p.add_argument("name", nargs="?", help="filter name (see `clipsift filters`)")
    p.add_argument("--pool", required=True, help="DataComp metadata directory")
    p.add_argument("--out", required=True, help="output subset file (.npy is appended if missing)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="filter parameter (repeatable)")
    p.add_argument("--recipe", help="TOML recipe instead of NAME")
    p.add_argument("--candidates", help="subset file: run only on these uids (chain on another result)")
    p.add_argument("--workdir", help="folder for this run's scratch folder (default: TMPDIR); removed after the run")
    p.add_argument(
        "--run-dir", metavar="URL",
        help="the run folder (path or fsspec URL every worker can reach; a shared file system for the "
        "density and ClipCov filters): each step's per-shard results and what tasks hand each other "
        "(kept-uid parts, candidate masks, grouped stores); a rerun after a crash or kill reuses what "
        "was finished; kept after the run",
    )
    add_run_args(p)
    _add_exec_args(p)
    p.set_defaults(func=cmd_filter)


def cmd_filter(args) -> int:

    from clipsift.devices import check_device
    from clipsift.filter import RunContext
    from clipsift.io import check_output_path
    from clipsift.params import parse_assignments
    from clipsift.pool import Pool
    from clipsift.recipe import parse_recipe, read_recipe
    from clipsift.registry import get_filter_class
    from clipsift.runner import run_to_subset
    from clipsift.subset import read_subset, subset_path
    from clipsift.workdir import run_workdir

    if bool(args.name) == bool(args.recipe):
        raise ParamError("give a filter NAME or --recipe FILE (exactly one)")
    check_output_path(args.out)  # refused before any work: a folder, under a file, not writable
    check_output_path(subset_path(args.out))
    device = check_device(args.device)
    recipe_text = None
    if args.recipe:
        if args.set:
            raise ParamError("--set applies to a NAME; put parameters in the recipe file")
        recipe_text = read_recipe(args.recipe)
        step = parse_recipe(recipe_text, args.recipe)
    else:
        cls = get_filter_class(args.name)
        step = cls(**parse_assignments(args.set, cls.params, args.name))
    pool = Pool(args.pool)
    listed = read_subset(args.candidates) if args.candidates else None  # checked before any work
    with run_workdir(args.workdir) as workdir:
        run_dir = None
        if args.run_dir:
            from clipsift.stagecache import RunFolder

            run_dir = RunFolder(args.run_dir)
        ctx = RunContext(pool, _executor(args), None, workdir, device, bad_embeddings=args.bad_embeddings, run_dir=run_dir)
        if listed is not None:
            ctx = ctx.with_candidates(candidate_rows(ctx, listed))
        try:
            path, manifest = run_to_subset(step, ctx, args.out, recipe_text)
        finally:
            if listed is not None:
                ctx.candidates.release(ctx)
    print(f"{path}: kept {manifest['output_count']} of {manifest['input_count']} in {manifest['wall_time_s']} s")
    return 0


def candidate_rows(ctx, listed: np.ndarray):
    """``--candidates``: the uids of a subset file (any order, memory-mapped) as per-shard masks,
    sorted on disk first when the file is not sorted."""
    from clipsift.candidates import CandidateRows, sorted_chunks_of
    from clipsift.uids import is_sorted
    from clipsift.uidsort import UidSorter

    step = 1 << 20
    ordered = all(is_sorted(listed[max(0, s - 1) : s + step]) for s in range(0, len(listed), step))  # chunked: bounded memory
    if ordered:
        return CandidateRows.from_sorted_uids(ctx, sorted_chunks_of(listed), ctx.scratch_url("candidates"), expected=len(listed))
    with UidSorter(len(listed), ctx.workdir) as sorter:
        for start in range(0, len(listed), step):
            sorter.add(np.asarray(listed[start : start + step]))
        return CandidateRows.from_sorted_uids(ctx, sorter.sorted_chunks(), ctx.scratch_url("candidates"), expected=len(listed))


def add_common_subparser_args(p: argparse.ArgumentParser) -> None:
    """For command plugins: the standard --workers flag."""
    _add_exec_args(p)
