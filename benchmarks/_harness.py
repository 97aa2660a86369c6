"""Shared benchmark helpers: cached synthetic pools and isolated timed runs with peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

CACHE = Path(os.environ.get("CLIPSIFT_BENCH_DIR", "/tmp/clipsift-bench"))


def synthetic_pool(rows: int, seed: int = 0, images: bool = False) -> Path:
    """Generate (once) and return the metadata folder of a synthetic pool with ``rows`` rows."""
    out = CACHE / f"pool-{rows}-s{seed}{'-img' if images else ''}"
    if not (out / "metadata").is_dir():
        from clipsift.synth import make_pool

        make_pool(out, rows, seed=seed, images=images)
    return out / "metadata"


def uid_only_pool(rows: int, shard_rows: int = 10_000, seed: int = 0) -> Path:
    """Generate (once) a pool of parquet shards holding only a ``uid`` column: enough for
    ``no_filter``/``random`` at sizes where a full synthetic pool (with npz) would fill the disk."""
    out = CACHE / f"uids-{rows}-s{seed}"
    if not (out / "done").exists():
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        from clipsift.uids import UID_DTYPE, records_to_hex

        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i, start in enumerate(range(0, rows, shard_rows)):
            n = min(shard_rows, rows - start)
            rec = np.empty(n, UID_DTYPE)
            rec["f0"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
            rec["f1"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
            pq.write_table(pa.table({"uid": records_to_hex(rec)}), out / f"{i:08d}.parquet")
        (out / "done").touch()
    return out


def isolated(code: str, timeout: float = 3600) -> dict:
    """Run ``code`` (which must set ``result`` to a dict) in a fresh interpreter.

    Returns that dict plus ``peak_rss_mb`` (the child's peak resident memory) so each figure is
    measured without the memory of earlier runs.
    """
    prog = textwrap.dedent(code) + textwrap.dedent(
        """
        import json as _j, resource as _r
        def _hwm():  # VmHWM belongs to this address space; ru_maxrss survives fork+exec on Linux
            try:
                with open("/proc/self/status") as _f:
                    return next(int(_l.split()[1]) for _l in _f if _l.startswith("VmHWM:"))
            except (OSError, StopIteration):
                return _r.getrusage(_r.RUSAGE_SELF).ru_maxrss
        result["peak_rss_mb"] = round(_hwm() / 1024, 1)
        result["peak_children_rss_mb"] = round(_r.getrusage(_r.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
        print("@@RESULT@@" + _j.dumps(result))
        """
    )
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    return json.loads(line[len("@@RESULT@@"):])


def table(rows: list[dict], cols: list[str]) -> str:
    """A small Markdown table for printing figures."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)
