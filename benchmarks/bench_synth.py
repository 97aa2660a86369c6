"""Synthetic pool generation speed: rows/s without images (250k, 1M rows), images/s with images.

Usage: .venv/bin/python benchmarks/bench_synth.py [--rows 250000 1000000] [--image-rows 20000]
       [--workers N] [--dir /tmp]. Pools are written to a temporary folder and deleted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from clipsift.synth import make_pool


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu() -> float:
    """CPU seconds of this process and its finished children (contention-independent)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[250_000, 1_000_000])
    ap.add_argument("--image-rows", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    root = Path(tempfile.mkdtemp(prefix="bench_synth_", dir=args.dir))
    try:
        for rows in args.rows:
            out = root / f"pool_{rows}"
            t, c = time.perf_counter(), _cpu()
            s = make_pool(out, rows, seed=0, workers=args.workers)
            dt, cpu = time.perf_counter() - t, _cpu() - c
            print(
                f"no images  rows={rows:>9,d} workers={s['workers']} time={dt:7.1f} s  "
                f"rate={rows / dt:>9,.0f} rows/s  cpu={cpu:7.1f} s  size={_size(out) / 2**30:.2f} GiB"
            )
            shutil.rmtree(out)
        if args.image_rows:
            out = root / "pool_images"
            t, c = time.perf_counter(), _cpu()
            s = make_pool(out, args.image_rows, seed=0, images=True, workers=args.workers)
            dt, cpu = time.perf_counter() - t, _cpu() - c
            print(
                f"images     rows={args.image_rows:>9,d} workers={s['workers']} time={dt:7.1f} s  "
                f"rate={args.image_rows / dt:>9,.0f} rows/s  images={s['images_written']:,d} "
                f"({s['images_written'] / dt:,.0f} images/s, pool incl. metadata)  cpu={cpu:.1f} s"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
