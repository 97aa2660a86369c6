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
    return _columnar_pool(CACHE / f"uids-{rows}-s{seed}", rows, shard_rows, seed, score=False)


SCORE_COLUMN = "clip_l14_similarity_score"


def uid_score_pool(rows: int, shard_rows: int = 100_000, seed: int = 0, workers: int = 2) -> Path:
    """Generate (once) a pool holding only ``uid`` and ``clip_l14_similarity_score`` (float64,
    uniform in [0.05, 0.45)): enough for ``no_filter``, ``random`` and ``clip_score`` at 100M rows
    (about 4.5 GB of parquet). Shards are written by ``workers`` processes."""
    return _columnar_pool(CACHE / f"uidscore-{rows}-r{shard_rows}-s{seed}", rows, shard_rows, seed, score=True, workers=workers)


def _write_columnar_shard(out: str, rows: int, shard_rows: int, seed: int, score: bool, i: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipsift.uids import UID_DTYPE, records_to_hex

    n = min(shard_rows, rows - i * shard_rows)
    rng = np.random.default_rng([seed, i])  # per shard: the same bytes whatever the worker count
    rec = np.empty(n, UID_DTYPE)
    rec["f0"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    rec["f1"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    cols = {"uid": records_to_hex(rec)}
    if score:
        cols[SCORE_COLUMN] = 0.05 + 0.4 * rng.random(n)
    tmp = Path(out) / f".{i:08d}.parquet.tmp"
    pq.write_table(pa.table(cols), tmp)
    tmp.rename(Path(out) / f"{i:08d}.parquet")


def _columnar_pool(out: Path, rows: int, shard_rows: int, seed: int, score: bool, workers: int = 1) -> Path:
    if (out / "done").exists():
        return out
    if not score:  # the uid-only layout bench_core has always used (one generator over the shards)
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
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range((rows + shard_rows - 1) // shard_rows) if not (out / f"{i:08d}.parquet").exists()]
    write = partial(_write_columnar_shard, str(out), rows, shard_rows, seed, score)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(write, todo, chunksize=4))
    else:
        for i in todo:
            write(i)
    (out / "done").touch()
    return out


def proc_tree(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/PID/task/*/children)."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return seen


def proc_stats(pid: int) -> dict | None:
    """Name (``ray::...`` for Ray workers), peak RSS (VmHWM, which counts the shared-memory pages of
    Ray's object store a worker has written), current RSS split into anonymous and shared memory,
    and CPU seconds of one process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")[0].decode(errors="replace")
        with open(f"/proc/{pid}/status") as fh:
            status = {ln.split(":")[0]: ln.split()[1] for ln in fh if ln.startswith(("VmHWM:", "VmRSS:", "RssAnon:", "RssShmem:"))}
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return {"pid": pid, "name": os.path.basename(cmd), "hwm_mb": round(int(status.get("VmHWM", 0)) / 1024, 1),
                "rss_mb": round(int(status.get("VmRSS", 0)) / 1024, 1),
                "anon_mb": round(int(status.get("RssAnon", 0)) / 1024, 1),  # now: heap, arrays
                "shmem_mb": round(int(status.get("RssShmem", 0)) / 1024, 1),  # now: shared memory (Ray's object store)
                "cpu_s": round((int(fields[11]) + int(fields[12])) / tick, 2)}
    except (OSError, IndexError, ValueError):
        return None


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
