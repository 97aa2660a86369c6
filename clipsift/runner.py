"""Run a filter or pipeline on a pool and write the subset with its manifest."""

from __future__ import annotations

import datetime as _dt
import resource
import sys
import time
from pathlib import Path

from clipsift import __version__
from clipsift.filter import RunContext, Selection
from clipsift.io import write_json
from clipsift.log import get_logger
from clipsift.subset import manifest_path

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


def build_manifest(step, ctx: RunContext, sel: Selection, wall: float, digest: str, recipe: str | None = None) -> dict:
    return {
        "clipsift_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **step.describe(),
        **({"recipe": recipe} if recipe else {}),
        "pool": ctx.pool.fingerprint(),
        "input_count": ctx.num_candidates,
        "output_count": len(sel),
        "uids_sha256": digest,
        "counters": sel.counters,
        "details": sel.details,
        "wall_time_s": round(wall, 3),
        "peak_memory_mb": peak_memory_mb(),
        "workers": ctx.executor.workers,
        "command": sys.argv,
    }


def run_to_subset(step, ctx: RunContext, out: str | Path, recipe: str | None = None) -> tuple[Path, dict]:
    """Select, then write ``out`` (sorted ``u8,u8`` .npy) and ``out.json`` atomically."""
    t0 = time.perf_counter()
    sel = step.select(ctx)
    path, digest = sel.write(out)
    wall = time.perf_counter() - t0
    manifest = build_manifest(step, ctx, sel, wall, digest, recipe)
    write_json(manifest_path(path), manifest)
    log.info("%s: kept %d of %d rows in %.1f s -> %s", manifest.get("filter", manifest.get("pipeline")), len(sel), ctx.num_candidates, wall, path)
    return path, manifest
