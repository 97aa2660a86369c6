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


def isolated(code: str, timeout: float = 3600) -> dict:
    """Run ``code`` (which must set ``result`` to a dict) in a fresh interpreter.

    Returns that dict plus ``peak_rss_mb`` (the child's peak resident memory) so each figure is
    measured without the memory of earlier runs.
    """
    prog = textwrap.dedent(code) + textwrap.dedent(
        """
        import json as _j, resource as _r
        result["peak_rss_mb"] = round(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024, 1)
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
