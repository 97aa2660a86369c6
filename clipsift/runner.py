"""Run a filter or pipeline on a pool and write the subset with its manifest."""

from __future__ import annotations

import datetime as _dt
import resource
import sys
import time
from pathlib import Path

from clipsift import __version__
from clipsift.filter import RunContext, Selection
from clipsift.io import WRITE_ERRNOS, atomic_pair, check_output_path, file_sha256, output_lock
from clipsift.log import get_logger
from clipsift.subset import manifest_path, subset_path, write_manifest_file

log = get_logger("runner")


def _own_peak_kib() -> int:
    """Peak resident memory of this process in KiB. Linux's ``ru_maxrss`` survives fork and exec
    (a small run started by a big parent reports the parent's peak), so read VmHWM there."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory_mb() -> dict:
    """Peak resident memory of this process and of its largest finished child, in MiB."""
    own = _own_peak_kib() / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "children": round(kids, 1)}


def build_manifest(
    step, ctx: RunContext, sel: Selection, wall: float, digest: str, recipe: str | None = None, file_digest: str | None = None
) -> dict:
    counters = sel.counters
    dropped = getattr(ctx, "dropped", None)
    if dropped:  # rows left out while reading (e.g. bad embeddings with --bad-embeddings drop), by reason
        counters = {**counters, "dropped_while_reading": dict(dropped)}
    return {
        "clipsift_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **step.describe(),
        **({"recipe": recipe} if recipe else {}),
        "pool": ctx.pool.fingerprint(),
        "input_count": ctx.num_candidates,
        "output_count": len(sel),
        "uids_sha256": digest,
        **({"file_sha256": file_digest} if file_digest else {}),
        **({"bad_embeddings": ctx.bad_embeddings} if getattr(ctx, "bad_embeddings", "error") != "error" else {}),
        "counters": counters,
        "details": sel.details,
        "wall_time_s": round(wall, 3),
        "peak_memory_mb": peak_memory_mb(),
        "workers": ctx.executor.workers,
        "executor": getattr(ctx.executor, "kind", type(ctx.executor).__name__),
        "command": sys.argv,
    }


def run_to_subset(step, ctx: RunContext, out: str | Path, recipe: str | None = None, flag: str = "--out") -> tuple[Path, dict]:
    """Select, then write ``out`` (sorted ``u8,u8`` .npy) and ``out.json`` as a pair.

    The output is locked for the whole run (a second run writing the same ``out`` fails at once);
    the manifest names the sha256 of the exact .npy bytes, and the pair is replaced so that a crash
    or a full disk never leaves a new .npy beside an old manifest (:func:`clipsift.io.atomic_pair`).
    """
    check_output_path(out, flag)
    path = check_output_path(subset_path(out), flag)
    with output_lock(path, flag):
        t0 = time.perf_counter()
        try:
            sel = step.select(ctx)
        except OSError as exc:  # a full disk while selecting: the spill files live in the work folder
            if exc.errno in WRITE_ERRNOS and not exc.filename:
                exc.filename = f"{ctx.workdir} (work folder)"
            raise
        with atomic_pair(path, manifest_path(path), suffix=".npy") as (tmp, mtmp):
            _, digest = sel.write(tmp)
            file_digest = getattr(sel, "file_sha256", None) or file_sha256(tmp)
            wall = time.perf_counter() - t0
            manifest = build_manifest(step, ctx, sel, wall, digest, recipe, file_digest)
            write_manifest_file(mtmp, manifest)
    log.info("%s: kept %d of %d rows in %.1f s -> %s", manifest.get("filter", manifest.get("pipeline")), len(sel), ctx.num_candidates, wall, path)
    return path, manifest
