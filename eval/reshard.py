"""``clipsift reshard``: a subset file + img2dataset shards -> training shards (DataComp's resharder).

Semantics kept from DataComp's ``resharder.py``: each input sample's ``json`` uid is looked up in
the sorted subset with two binary searches; a uid present m times is written m times with keys
``<uid>-0 .. <uid>-(m-1)`` and its members copied byte for byte; output shards ``{:08d}.tar``
(ids contiguous from 0, taken from a shared counter when a shard opens) with ``_stats.json``;
``sample_ids.npy`` (a byte copy of the subset) and ``meta.json`` (stringified arguments plus
counters). Workers split the input by cumulative sample counts and stream tar members one sample
at a time, so memory does not grow with shard size. Added: ``reshard_report.json`` and
``missing_uids.npy`` name the subset uids that no input shard contained.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError, SubsetError
from clipsift.io import atomic_write, write_json
from clipsift.log import get_logger, progress
from clipsift.subset import read_subset
from clipsift.uids import (
    UID_DTYPE,
    hex_to_records,
    is_sorted,
    isin_sorted,
    records_to_hex,
    sort_records,
    unique_sorted,
)

log = get_logger("eval.reshard")

MAX_SHARD_BYTES = 3e9
_REMOTE = re.compile(r"^\w+://")


@dataclass
class ReshardArgs:
    """DataComp's resharder flags, in its argparse order (``meta.json`` stringifies them all)."""

    input_dir: str
    output_dir: str
    subset_file: str
    num_shards: int | None = None
    first_shard: int = 0
    num_workers: int | None = None
    shard_size: int = 10000
    shard_format: str = "{:08d}.tar"
    output_shard_format: str = "{:08d}.tar"
    shard_stats_format: str = "{:08d}_stats.json"
    output_shard_stats_format: str = "{:08d}_stats.json"
    shard_table: str = "sizes.json"
    write_shard_table: bool = False
    shuffle_bufsize: int = 0
    blur_metadata_map: str | None = None
    apply_blur: bool = False
    inject_blur_metadata: bool = False
    reencode_webp_quality: int = 100
    dry_run: bool = False
    overwrite: bool = False
    verbose: int = 0
    quiet: int = 0


# ---- file access (local paths or fsspec URLs) --------------------------------------------------
def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _REMOTE.match(root) else os.path.join(root, name)


def _exists(path: str) -> bool:
    if _REMOTE.match(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        return fs.exists(p)
    return os.path.exists(path)


def _open(path: str, mode: str = "rb"):
    if _REMOTE.match(path):
        import fsspec

        return fsspec.open(path, mode).open()
    return open(path, mode)


# ---- input discovery ---------------------------------------------------------------------------
def guess_num_shards(args: ReshardArgs) -> int:
    """DataComp's probe: doubling steps until a shard id is missing, then a binary search."""
    def present(n: int) -> bool:
        return _exists(_join(args.input_dir, args.shard_format.format(args.first_shard + n - 1)))

    n = 1
    while present(n):
        n *= 2
        if n > 2**40:
            raise ClipsiftError(f"{args.input_dir}: too many shards to guess their number; pass --num-shards")
    if n == 1:
        raise ClipsiftError(f"{args.input_dir}: no shard {args.shard_format.format(args.first_shard)} found; check --input-dir and --shard-format")
    lo, hi = n // 2, n  # present(lo) is true, present(hi) false
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if present(mid) else (lo, mid)
    return lo


def shard_sizes(args: ReshardArgs, num_shards: int) -> tuple[list[int], list[int]]:
    """(shard ids, sizes) of the shards that can be used: sizes from the table, else _stats.json."""
    table = {}
    table_path = _join(args.input_dir, args.shard_table)
    if _exists(table_path):
        with _open(table_path, "rb") as fh:
            table = json.load(fh)
    ids, sizes = [], []
    for sid in range(args.first_shard, args.first_shard + num_shards):
        name = args.shard_format.format(sid)
        if name in table:
            ids.append(sid)
            sizes.append(int(table[name]))
            continue
        stats = _join(args.input_dir, args.shard_stats_format.format(sid))
        if _exists(stats) and _exists(_join(args.input_dir, name)):
            with _open(stats, "rb") as fh:
                sizes.append(int(json.load(fh)["successes"]))
            ids.append(sid)
        else:
            log.warning("shard %s has no size in %s and no stats file; skipped", name, args.shard_table)
    if args.write_shard_table and not _exists(table_path):
        write_json(table_path, {args.shard_format.format(i): s for i, s in zip(ids, sizes)})
    return ids, sizes


def split_work(ids: list[int], sizes: list[int], workers: int) -> list[list[int]]:
    """Contiguous shard ranges of about equal sample counts, one per worker (empty ones dropped)."""
    if not ids:
        return []
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes_arr)[:-1]])
    total = int(sizes_arr.sum())
    step = max(1, math.ceil(total / max(1, workers)))
    cuts = [int(np.searchsorted(starts, b, side="left")) for b in range(0, max(total, 1), step)] + [len(ids)]
    ranges = [ids[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    return ranges


# ---- per-worker processing ---------------------------------------------------------------------
_COUNTER = None  # shared output-shard counter (set in each worker)


def _init_worker(counter) -> None:
    global _COUNTER
    _COUNTER = counter


def _next_shard_id() -> int:
    with _COUNTER.get_lock():
        sid = _COUNTER.value
        _COUNTER.value += 1
    return sid


class _ShardWriter:
    """Writes ``<uid>-<j>.<ext>`` members; opens a new shard (global id) at the size limits."""

    def __init__(self, args: ReshardArgs):
        self.args = args
        self.tar = None
        self.count = self.size = 0
        self.total = 0
        self.shard_ids: list[int] = []

    def _open(self) -> None:
        self.close()
        sid = _next_shard_id()
        self.shard_ids.append(sid)
        self.final = Path(self.args.output_dir) / self.args.output_shard_format.format(sid)
        self.stats = Path(self.args.output_dir) / self.args.output_shard_stats_format.format(sid)
        self.tmp = self.final.with_name(f".{self.final.name}.tmp")
        self.tar = tarfile.open(self.tmp, "w")
        self.count = self.size = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self.tar is None or self.count >= self.args.shard_size or self.size >= MAX_SHARD_BYTES:
            self._open()
        now = time.time()
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, now
            info.uname = info.gname = "bigdata"
            self.tar.addfile(info, io.BytesIO(data))
            self.size += len(data)
        self.count += 1
        self.total += 1

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        os.replace(self.tmp, self.final)
        with atomic_write(self.stats, "w", encoding="utf-8") as fh:
            json.dump({"successes": self.count}, fh)
        self.tar = None


def _samples(fileobj):
    """Yield (key, {ext: bytes}) from a tar stream, grouping consecutive members by key prefix."""
    key, members = None, {}
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = os.path.basename(info.name)
            if "." not in base:
                continue
            prefix, ext = base.split(".", 1)
            prefix = os.path.join(os.path.dirname(info.name), prefix)
            if prefix != key:
                if key is not None:
                    yield key, members
                key, members = prefix, {}
            members[ext.lower()] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def _count_in(subset: np.ndarray, uid: str) -> int:
    """Occurrences of ``uid`` in the sorted subset: two binary searches, as DataComp does."""
    value = int(uid, 16)
    if value >> 128:
        raise ValueError(f"uid {uid!r} is longer than 128 bits")
    rec = np.array((value >> 64, value & 0xFFFFFFFFFFFFFFFF), dtype=UID_DTYPE)
    return int(np.searchsorted(subset, rec, side="right") - np.searchsorted(subset, rec, side="left"))


def _process(task: tuple) -> dict:
    """One worker: stream its shards, write selected copies, return counters and found uids."""
    args, shard_ids, subset_path, found_path, seed = task
    subset = np.load(subset_path, mmap_mode="r")
    writer = _ShardWriter(args)
    rng = random.Random(seed)
    buf: list = []
    found: list[str] = []
    processed = errors = 0

    def emit(item):
        writer.write(*item)

    for sid in shard_ids:
        path = _join(args.input_dir, args.shard_format.format(sid))
        with _open(path, "rb") as fh:
            for key, members in _samples(fh):
                if "json" not in members:
                    log.error("%s: sample %s has no json member; skipped", path, key)
                    errors += 1
                    continue
                processed += 1
                try:
                    uid = json.loads(members["json"])["uid"]
                    m = _count_in(subset, uid)
                except Exception as exc:  # a malformed json or uid loses that sample only
                    log.error("%s: sample %s: cannot read its uid (%s); skipped", path, key, exc)
                    errors += 1
                    continue
                if m == 0:
                    continue
                found.append(uid.zfill(32).lower())
                members = {k: v for k, v in members.items() if not k.startswith("__")}
                for j in range(m):
                    item = (f"{uid}-{j}", members)
                    if args.shuffle_bufsize > 0:
                        buf.append(item)
                        if len(buf) >= args.shuffle_bufsize:
                            emit(buf.pop(rng.randrange(len(buf))))
                    elif not args.dry_run:
                        emit(item)
                    else:
                        writer.total += 1
    rng.shuffle(buf)
    for item in buf:
        if args.dry_run:
            writer.total += 1
        else:
            emit(item)
    writer.close()
    rec = hex_to_records(found) if found else np.empty(0, dtype=UID_DTYPE)
    np.save(found_path, rec)
    return {"processed": processed, "output": writer.total, "errors": errors, "shards": writer.shard_ids}


# ---- driver ------------------------------------------------------------------------------------
@dataclass
class ReshardResult:
    output_dir: str
    subset_count: int
    processed_count: int
    output_count: int
    output_shard_count: int
    missing_count: int
    wall_time_s: float


def _prepare_output(args: ReshardArgs) -> Path:
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ClipsiftError(f"{out}: output directory is not empty; pass --overwrite or choose another folder")
        for entry in out.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _sorted_subset_copy(args: ReshardArgs, scratch: Path) -> tuple[Path, int]:
    """The subset as a sorted .npy in scratch space (workers memory-map it)."""
    arr = read_subset(args.subset_file)
    if not is_sorted(arr):
        log.warning("%s is not sorted; DataComp's resharder would silently lose samples, clipsift sorts it first", args.subset_file)
    srt = sort_records(np.asarray(arr))
    path = scratch / "subset_sorted.npy"
    np.save(path, srt)
    return path, len(arr)


def reshard(args: ReshardArgs) -> ReshardResult:
    """Run the resharder; returns the counters written to meta.json."""
    t0 = time.perf_counter()
    if args.apply_blur or args.inject_blur_metadata or args.blur_metadata_map:
        raise ClipsiftError("clipsift reshard does not implement DataComp's face-blur options; shards from img2dataset are already blurred at download")
    if args.shard_size < 1:
        raise ClipsiftError("--shard-size must be at least 1")
    if not Path(args.subset_file).is_file():
        raise SubsetError(f"{args.subset_file}: subset file not found")
    num_shards = args.num_shards if args.num_shards is not None else guess_num_shards(args)
    ids, sizes = shard_sizes(args, num_shards)
    workers = args.num_workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, len(ids) or 1))
    ranges = split_work(ids, sizes, workers)
    out = _prepare_output(args) if not args.dry_run else Path(args.output_dir)
    scratch = Path(args.output_dir) / ".reshard-tmp" if not args.dry_run else Path(_scratch_dir())
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        if not args.dry_run:
            shutil.copyfile(args.subset_file, out / "sample_ids.npy")
        subset_path, subset_count = _sorted_subset_copy(args, scratch)
        tasks = [(args, r, str(subset_path), str(scratch / f"found_{i}.npy"), i) for i, r in enumerate(ranges)]
        ctx = mp.get_context("fork") if os.name == "posix" else mp.get_context("spawn")
        counter = ctx.Value("q", 0)
        results = []
        bar = progress(total=len(tasks), desc="reshard", unit="worker")
        if len(tasks) <= 1:
            _init_worker(counter)
            results = [_process(t) for t in tasks]
        else:
            with ctx.Pool(len(tasks), initializer=_init_worker, initargs=(counter,)) as pool:
                for res in pool.imap(_process, tasks):
                    results.append(res)
                    bar.update(1)
        bar.close()
        processed = sum(r["processed"] for r in results)
        output = sum(r["output"] for r in results)
        shard_count = int(counter.value)
        found = [np.load(t[3]) for t in tasks]
        found_all = unique_sorted(sort_records(np.concatenate(found))) if found else np.empty(0, dtype=UID_DTYPE)
        uniq = unique_sorted(np.load(subset_path, mmap_mode="r"))
        missing = uniq[~isin_sorted(uniq, found_all)]
        # DataComp warns with len(subset) - output_count (duplicates of a missing uid count each)
        not_found = subset_count - output
        if not_found:
            log.warning("%d images from the subset were not found in the input shards (%d distinct uids)", not_found, len(missing))
        wall = time.perf_counter() - t0
        result = ReshardResult(str(args.output_dir), subset_count, processed, output, shard_count, len(missing), round(wall, 3))
        if not args.dry_run:
            meta = {k: str(v) for k, v in asdict(args).items()}
            meta.update({
                "processed_count": processed,
                "output_count": output,
                "blur_count": 0,
                "blur_time": 0.0,
                "output_shard_count": shard_count,
                "worker_success": len(results),
                "cwd": os.getcwd(),
            })
            write_json(out / "meta.json", meta, indent=None)
            np.save(out / "missing_uids.npy", missing)
            write_json(out / "reshard_report.json", {
                **asdict(result),
                "not_found_count": not_found,
                "missing_uids_file": "missing_uids.npy",
                "missing_examples": [str(u) for u in records_to_hex(missing[:20])],
            })
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="clipsift-reshard-")
