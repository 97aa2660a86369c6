"""``clipsift reshard``: a subset file + img2dataset shards -> training shards (DataComp's resharder).

Semantics kept from DataComp's ``resharder.py``: each input sample's ``json`` uid is looked up in
the sorted subset with two binary searches; a uid present m times is written m times with keys
``<uid>-0 .. <uid>-(m-1)`` and its members copied byte for byte; output shards ``{:08d}.tar``
(ids contiguous from 0, taken from a shared counter when a shard opens) with ``_stats.json``;
``sample_ids.npy`` (a byte copy of the subset) and ``meta.json`` (stringified arguments plus
counters). Workers split the input by cumulative sample counts and stream tar members one sample
at a time, so memory does not grow with shard size. Added: ``reshard_report.json`` and
``missing_uids.npy`` name the subset uids that no input shard contained.

Safety (clipsift's, not DataComp's): the output is built in a hidden sibling folder and renamed
into place at the end, so a failed run leaves nothing behind and never touches what was there;
an output folder that overlaps the input folder or holds the subset file is refused; ``--overwrite``
replaces only a folder that clipsift reshard wrote (listed in its ``.clipsift-reshard.json``).
Broken input (truncated or corrupt tar, a sample without ``.json``/``.txt``, an unreadable folder
or stats file), a full disk, an empty subset or one that selects no sample stop with one line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import tarfile
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipsift import __version__
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
MARKER = ".clipsift-reshard.json"  # lists the files a finished run wrote (what --overwrite may replace)
_NOT_DATACOMP = ("allow_incomplete",)  # flags left out of meta.json (DataComp's argument list)


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
    allow_incomplete: bool = False  # DataComp's leniency: skip samples without json, copy those without txt


# ---- file access (local paths or fsspec URLs) --------------------------------------------------
def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _REMOTE.match(root) else os.path.join(root, name)


def _local(path: str) -> str | None:
    """The local path of a folder or file argument (``file://`` URLs included); None for other URLs."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if _REMOTE.match(path) else path


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


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


# ---- input discovery ---------------------------------------------------------------------------
def check_input_dir(args: ReshardArgs) -> None:
    """A missing, non-folder or unreadable ``-i`` is one line (not "no shard found")."""
    local = _local(args.input_dir)
    if local is None:
        return
    try:
        with os.scandir(local) as it:  # opens the folder; reads one entry at most
            next(it, None)
    except FileNotFoundError:
        raise ClipsiftError(f"{args.input_dir}: input folder not found; pass the folder of img2dataset shards with -i") from None
    except NotADirectoryError:
        raise ClipsiftError(f"{args.input_dir}: not a folder; -i takes the folder of img2dataset shards ({{:08d}}.tar + _stats.json)") from None
    except OSError as exc:
        raise ClipsiftError(f"{args.input_dir}: cannot read the input folder ({_why(exc)}); give this user read access to it (chmod u+rx) or copy the shards to a readable folder") from None


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


def _read_json(path: str, what: str, fix: str):
    try:
        with _open(path, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ClipsiftError(f"{path}: unreadable {what} ({_why(exc)}); {fix}") from None


def shard_sizes(args: ReshardArgs, num_shards: int) -> tuple[list[int], list[int]]:
    """(shard ids, sizes) of the shards that can be used: sizes from the table, else _stats.json."""
    table = {}
    table_path = _join(args.input_dir, args.shard_table)
    if _exists(table_path):
        table = _read_json(table_path, "shard table", "it must be a JSON object {\"00000000.tar\": size, ...}: fix it or delete it (sizes then come from the _stats.json files)")
        if not isinstance(table, dict):
            raise ClipsiftError(f"{table_path}: shard table is not a JSON object; fix it or delete it (sizes then come from the _stats.json files)")
    ids, sizes = [], []
    for sid in range(args.first_shard, args.first_shard + num_shards):
        name = args.shard_format.format(sid)
        if name in table:
            try:
                sizes.append(int(table[name]))
            except (TypeError, ValueError):
                raise ClipsiftError(f"{table_path}: size of {name} is {table[name]!r}, not a whole number; fix it or delete the table") from None
            ids.append(sid)
            continue
        stats = _join(args.input_dir, args.shard_stats_format.format(sid))
        if _exists(stats) and _exists(_join(args.input_dir, name)):
            fix = "it must be img2dataset's JSON with a \"successes\" count: re-download the shard or fix the file"
            doc = _read_json(stats, "stats file", fix)
            try:
                sizes.append(int(doc["successes"]))
            except (TypeError, ValueError, KeyError):
                raise ClipsiftError(f"{stats}: stats file has no whole-number \"successes\"; {fix}") from None
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


def _init_worker(counter, forked: bool = False) -> None:
    global _COUNTER
    _COUNTER = counter
    if forked and hasattr(signal, "pthread_sigmask"):  # see _start_pool
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _start_pool(ctx, n: int, counter):
    """A worker pool whose workers always die on ``Pool.terminate()``.

    The CLI turns SIGTERM into a Python-level handler, and CPython drops a signal that a child
    receives between fork and its after-fork reinit: a worker just forked when another worker's
    error makes the pool terminate ignored its SIGTERM and the run hung in join() forever. SIGTERM
    is blocked while the workers are forked (they inherit the mask) and each worker restores the
    default action before unblocking it, so a SIGTERM sent early stays pending until then.
    """
    if not hasattr(signal, "pthread_sigmask"):
        return ctx.Pool(n, initializer=_init_worker, initargs=(counter,))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return ctx.Pool(n, initializer=_init_worker, initargs=(counter, True))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _next_shard_id() -> int:
    with _COUNTER.get_lock():
        sid = _COUNTER.value
        _COUNTER.value += 1
    return sid


def _write_error(output_dir: str, name: str, exc: OSError) -> ClipsiftError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free space on that disk or pass another -o" if full else "check that its parent folder is writable or pass another -o"
    return ClipsiftError(f"{output_dir}: {_why(exc)} while writing {name}; {fix} (nothing was left there; rerun as before)")


class _ShardWriter:
    """Writes ``<uid>-<j>.<ext>`` members; opens a new shard (global id) at the size limits."""

    def __init__(self, args: ReshardArgs, build_dir: str):
        self.args = args
        self.dir = Path(build_dir)
        self.tar = None
        self.count = self.size = 0
        self.total = 0
        self.shard_ids: list[int] = []
        self.final = self.dir

    def _open(self) -> None:
        self.close()
        sid = _next_shard_id()
        self.shard_ids.append(sid)
        self.final = self.dir / self.args.output_shard_format.format(sid)
        self.stats = self.dir / self.args.output_shard_stats_format.format(sid)
        self.tmp = self.final.with_name(f".{self.final.name}.tmp")
        self.tar = tarfile.open(self.tmp, "w")
        self.count = self.size = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        try:
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
        except OSError as exc:
            raise _write_error(self.args.output_dir, self.final.name, exc) from None
        self.count += 1
        self.total += 1

    def close(self) -> None:
        if self.tar is None:
            return
        try:
            self.tar.close()
            os.replace(self.tmp, self.final)
            with atomic_write(self.stats, "w", encoding="utf-8") as fh:
                json.dump({"successes": self.count}, fh)
        except OSError as exc:
            raise _write_error(self.args.output_dir, self.final.name, exc) from None
        self.tar = None


def _tar_ended_cleanly(tar: tarfile.TarFile) -> bool:
    """Whether a stream-mode read stopped at an end-of-archive block, not at a cut-off file.

    tarfile ends iteration silently when a header is missing or short (a file truncated between
    members); it reads one whole zero block at a real end. The stream position tells them apart.
    """
    try:
        return tar.fileobj.tell() - tar.offset >= tarfile.BLOCKSIZE
    except (AttributeError, OSError):  # not a stream-mode archive: nothing to tell
        return True


def _read_shard(path: str):
    """Yield (key, {ext: bytes}) from one input tar, grouping consecutive members by key prefix.

    A shard that cannot be opened, is not a tar, or is cut off (inside a member or between
    members) is one error line naming the file and the last member read.
    """
    try:
        fh = _open(path, "rb")
    except OSError as exc:
        raise ClipsiftError(f"{path}: cannot read this input shard ({_why(exc)}); fix its permissions or re-download it") from None
    last = None
    with fh:
        try:
            with tarfile.open(fileobj=fh, mode="r|*") as tar:
                key, members = None, {}
                for info in tar:
                    last = info.name
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
                if not _tar_ended_cleanly(tar):
                    raise tarfile.ReadError("the file ends without tar's end-of-archive block")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            where = f" after member {last}" if last else " at its start"
            raise ClipsiftError(f"{path}: truncated or corrupt tar ({_why(exc)}{where}); re-download this shard, or delete it and its _stats.json") from None
    if key is not None:
        yield key, members


def _count_in(subset: np.ndarray, uid: str) -> int:
    """Occurrences of ``uid`` in the sorted subset: two binary searches, as DataComp does."""
    value = int(uid, 16)
    if value >> 128:
        raise ValueError(f"uid {uid!r} is longer than 128 bits")
    rec = np.array((value >> 64, value & 0xFFFFFFFFFFFFFFFF), dtype=UID_DTYPE)
    return int(np.searchsorted(subset, rec, side="right") - np.searchsorted(subset, rec, side="left"))


_LENIENT = "or pass --allow-incomplete to skip such samples as DataComp's resharder does"


def _process(task: tuple) -> dict:
    """One worker: stream its shards, write selected copies, return counters and found uids."""
    args, shard_ids, subset_path, found_path, seed, build_dir = task
    subset = np.load(subset_path, mmap_mode="r")
    writer = _ShardWriter(args, build_dir)
    rng = random.Random(seed)
    buf: list = []
    found: list[str] = []
    processed = errors = 0

    def emit(item):
        writer.write(*item)

    for sid in shard_ids:
        path = _join(args.input_dir, args.shard_format.format(sid))
        for key, members in _read_shard(path):
            if "json" not in members or "txt" not in members:
                if not args.allow_incomplete:
                    lack = "json" if "json" not in members else "txt"
                    have = ", ".join(f".{e}" for e in sorted(members)) or "none"
                    raise ClipsiftError(f"{path}: sample {key} has no .{lack} member (it has {have}); re-download this shard, {_LENIENT}")
                if "json" not in members:
                    log.error("%s: sample %s has no json member; skipped", path, key)
                    errors += 1
                    continue
            processed += 1
            try:
                uid = json.loads(members["json"])["uid"]
                m = _count_in(subset, uid)
            except Exception as exc:  # a malformed json or uid
                if not args.allow_incomplete:
                    raise ClipsiftError(f"{path}: member {key}.json: cannot read its uid ({exc}); re-download this shard, {_LENIENT}") from None
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


# ---- output folder -----------------------------------------------------------------------------
@dataclass
class ReshardResult:
    output_dir: str
    subset_count: int
    processed_count: int
    output_count: int
    output_shard_count: int
    missing_count: int
    wall_time_s: float


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def output_path(args: ReshardArgs) -> Path:
    """The real (symlink-free) output folder, refused when it overlaps an input."""
    local = _local(args.output_dir)
    if local is None:
        raise ClipsiftError(f"{args.output_dir}: clipsift reshard writes to a local folder; reshard to a local -o, then copy the folder")
    out = Path(os.path.realpath(local))
    if out.parent == out:
        raise ClipsiftError(f"{args.output_dir}: cannot write the output into the filesystem root; pass a folder below it with -o")
    inp = _local(args.input_dir)
    if inp is not None:
        inp = Path(os.path.realpath(inp))
        if out == inp:
            raise ClipsiftError(f"{args.output_dir}: -o is the input folder {args.input_dir}; write the output to a folder of its own")
        if _inside(out, inp):
            raise ClipsiftError(f"{args.output_dir}: -o is inside the input folder {args.input_dir}; write the output to a folder outside it")
        if _inside(inp, out):
            raise ClipsiftError(f"{args.output_dir}: -o contains the input folder {args.input_dir}; write the output to a folder of its own")
    sub = _local(args.subset_file)
    if sub is not None and _inside(Path(os.path.realpath(sub)), out):
        raise ClipsiftError(f"{args.output_dir}: -o contains the subset file {args.subset_file}; copy the subset elsewhere or write the output to another folder")
    return out


def _own_files(out: Path) -> set[str] | None:
    """The file names a finished clipsift reshard listed in ``out``'s marker; None without one."""
    try:
        doc = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("written_by") == "clipsift reshard" else None
    if not isinstance(files, list) or not all(isinstance(f, str) and f and "/" not in f and f not in (".", "..") for f in files):
        return None
    return set(files)


def existing_output(out: Path, args: ReshardArgs) -> list[str] | None:
    """What a run may replace at ``out``: None (absent), [] (an empty folder) or the names of a
    previous clipsift reshard output (only with --overwrite); anything else is refused."""
    if not os.path.lexists(out):
        return None
    if not out.is_dir():
        raise ClipsiftError(f"{args.output_dir}: exists and is not a folder; pass a folder path with -o")
    try:
        with os.scandir(out) as it:
            entries = {e.name: e.is_file(follow_symlinks=False) for e in it}
    except OSError as exc:
        raise ClipsiftError(f"{args.output_dir}: cannot read the output folder ({_why(exc)}); fix its permissions or pass another -o") from None
    if not entries:
        return []
    if not args.overwrite:
        raise ClipsiftError(f"{args.output_dir}: output directory is not empty; pass --overwrite (replaces a previous clipsift reshard output only) or choose another folder")
    own = _own_files(out)
    if own is None:
        raise ClipsiftError(f"{args.output_dir}: not empty and not written by clipsift reshard (no {MARKER}); --overwrite replaces only clipsift reshard's own output: empty the folder yourself or choose another -o")
    foreign = sorted(n for n, is_file in entries.items() if not is_file or (n not in own and n != MARKER))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ClipsiftError(f"{args.output_dir}: holds {foreign[0]}{more}, which clipsift reshard did not write; --overwrite replaces only its own files: move them away or choose another -o")
    return sorted(entries)


def _swap_in(build: Path, out: Path, args: ReshardArgs) -> None:
    """Rename the finished ``build`` folder to ``out``; a previous clipsift output is then deleted
    file by file (only the files it listed), so nothing else can be lost."""
    old_files = existing_output(out, args)  # again: the folder may have changed during the run
    if not old_files:  # absent, or an empty folder (rename replaces an empty directory)
        os.replace(build, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.reshard-old-", dir=out.parent))
    os.replace(out, old)
    try:
        os.replace(build, out)
    except BaseException:
        os.replace(old, out)
        raise
    for name in old_files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(old / name)
    try:
        os.rmdir(old)
    except OSError:
        log.warning("%s: left in place: files appeared in the old output during the run", old)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first (a failed run removes them)."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    return missing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- driver ------------------------------------------------------------------------------------
def _load_subset(args: ReshardArgs) -> np.ndarray:
    arr = read_subset(args.subset_file)
    if len(arr) == 0:
        raise SubsetError(f"{args.subset_file}: subset holds 0 uids, so resharding it would write an empty training set; pass a subset that selects samples")
    return arr


def _sorted_subset_copy(args: ReshardArgs, arr: np.ndarray, scratch: Path) -> Path:
    """The subset as a sorted .npy in scratch space (workers memory-map it)."""
    if not is_sorted(arr):
        log.warning("%s is not sorted; DataComp's resharder would silently lose samples, clipsift sorts it first", args.subset_file)
    srt = sort_records(np.asarray(arr))
    path = scratch / "subset_sorted.npy"
    np.save(path, srt)
    return path


def reshard(args: ReshardArgs) -> ReshardResult:
    """Run the resharder; returns the counters written to meta.json."""
    t0 = time.perf_counter()
    if args.apply_blur or args.inject_blur_metadata or args.blur_metadata_map:
        raise ClipsiftError("clipsift reshard does not implement DataComp's face-blur options; shards from img2dataset are already blurred at download")
    if args.shard_size < 1:
        raise ClipsiftError("--shard-size must be at least 1")
    if not Path(args.subset_file).is_file():
        raise SubsetError(f"{args.subset_file}: subset file not found")
    out = None if args.dry_run else output_path(args)
    check_input_dir(args)
    arr = _load_subset(args)
    if out is not None:
        existing_output(out, args)  # refuse early, before any work
    num_shards = args.num_shards if args.num_shards is not None else guess_num_shards(args)
    ids, sizes = shard_sizes(args, num_shards)
    if not ids:
        raise ClipsiftError(f"{args.input_dir}: none of the {num_shards} input shards has a known size (no {args.shard_table} entry, no _stats.json); check -i, --shard-format and --shard-stats-format")
    workers = args.num_workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, len(ids) or 1))
    ranges = split_work(ids, sizes, workers)
    created: list[Path] = []
    build = None
    try:
        if out is None:
            scratch = Path(tempfile.mkdtemp(prefix="clipsift-reshard-"))
        else:
            created = _missing_folders(out.parent)
            out.parent.mkdir(parents=True, exist_ok=True)
            build = Path(tempfile.mkdtemp(prefix=f".{out.name}.reshard-", suffix=".tmp", dir=out.parent))
            scratch = build / ".scratch"
            scratch.mkdir()
    except OSError as exc:
        for folder in created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise _write_error(args.output_dir, "its temporary folder", exc) from None
    writing = "the output"
    try:
        if build is not None:
            os.chmod(build, 0o777 & ~_umask())  # mkdtemp makes 0700; the output gets the usual permissions
            writing = "sample_ids.npy"
            shutil.copyfile(args.subset_file, build / "sample_ids.npy")
        writing = "its scratch files"
        subset_path = _sorted_subset_copy(args, arr, scratch)
        subset_count = len(arr)
        tasks = [(args, r, str(subset_path), str(scratch / f"found_{i}.npy"), i, str(build)) for i, r in enumerate(ranges)]
        ctx = mp.get_context("fork") if os.name == "posix" else mp.get_context("spawn")
        counter = ctx.Value("q", 0)
        results = []
        bar = progress(total=len(tasks), desc="reshard", unit="worker")
        try:
            if len(tasks) <= 1:
                _init_worker(counter)
                results = [_process(t) for t in tasks]
            else:
                with _start_pool(ctx, len(tasks), counter) as pool:
                    for res in pool.imap(_process, tasks):
                        results.append(res)
                        bar.update(1)
        finally:
            bar.close()
        processed = sum(r["processed"] for r in results)
        output = sum(r["output"] for r in results)
        if output == 0:
            raise ClipsiftError(f"{args.subset_file}: none of its {subset_count} uids is in the input shards of {args.input_dir} "
                                f"({processed} samples read), so there is nothing to train on; check that -s and -i come from the same pool")
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
        if build is not None:
            writing = "meta.json"
            meta = {k: str(v) for k, v in asdict(args).items() if k not in _NOT_DATACOMP}
            meta.update({
                "processed_count": processed,
                "output_count": output,
                "blur_count": 0,
                "blur_time": 0.0,
                "output_shard_count": shard_count,
                "worker_success": len(results),
                "cwd": os.getcwd(),
            })
            write_json(build / "meta.json", meta, indent=None)
            writing = "missing_uids.npy"
            np.save(build / "missing_uids.npy", missing)
            writing = "reshard_report.json"
            write_json(build / "reshard_report.json", {
                **asdict(result),
                "not_found_count": not_found,
                "missing_uids_file": "missing_uids.npy",
                "missing_examples": [str(u) for u in records_to_hex(missing[:20])],
            })
            shutil.rmtree(scratch)
            writing = MARKER
            write_json(build / MARKER, {"written_by": "clipsift reshard", "clipsift_version": __version__,
                                        "files": sorted(n for n in os.listdir(build) if n != MARKER)})
            writing = "the output folder"
            _swap_in(build, out, args)
        return result
    except OSError as exc:
        raise _write_error(args.output_dir, writing, exc) from None
    finally:
        if build is not None:
            shutil.rmtree(build, ignore_errors=True)  # gone already after a successful swap
            for folder in created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only the ones this run made, and only if still empty
        else:
            shutil.rmtree(scratch, ignore_errors=True)
