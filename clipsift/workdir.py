"""Scratch folders for runs, and reclaiming the ones killed runs leave behind.

Without ``--workdir`` each run gets its own ``clipsift-work-*`` folder under TMPDIR holding an
owner file: process id, its start time, boot id and host. A run that ends, fails or is interrupted
removes its folder; a run that is killed (SIGKILL, OOM killer, power loss) cannot, so every new
run looks at its siblings first:

* a folder whose owner process is gone (same host; pid not running, or running since another
  time, or the machine rebooted since) is removed, with a warning giving its size;
* a folder without an owner file (made by an older clipsift, or by a library user's RunContext)
  older than an hour is reported with its size, never removed: it may still be in use.

A ``--workdir`` given by the user is kept: filters cache resumable state there (clipcov's grouped
rows, prepared external embeddings). A run leaves a marker ``.clipsift-run-*.json`` (its owner
record) in it while it runs. A new run that finds the marker of a dead run, and no live one,
removes the per-run scratch folders (``NAME-xxxxxxxx``: dbp, semdedup, ssp stores) changed since
the dead run started, with a warning giving their size; other such folders are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import weakref
from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.io import _name_write_error
from clipsift.log import get_logger

PREFIX = "clipsift-work-"
REPORT_PREFIXES = (PREFIX, "clipsift-cand-")  # the executor's candidate folders carry no owner: reported only
OWNER_FILE = ".clipsift-owner.json"
RUN_MARKER = ".clipsift-run-"  # + pid-token.json, in a user's --workdir
SCRATCH_NAME = re.compile(r"^[^.].*-[0-9a-f]{8}$")  # filters' per-run folders: f"{desc}-{uuid4().hex[:8]}"
REPORT_AGE_S = 3600
_SIZE_SCAN_LIMIT = 100_000  # entries; a size is a hint, not worth a long walk

log = get_logger("workdir")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """Process start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def owner_record() -> dict:
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "boot_id": _boot_id(), "host": socket.gethostname(), "created": time.time()}


def owner_alive(rec: dict) -> bool | None:
    """True/False when it can be told from here, None when the owner ran on another host."""
    if rec.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if rec.get("boot_id") and boot and rec["boot_id"] != boot:
        return False
    try:
        pid = int(rec["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError):
        return None
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    start = _start_time(pid)
    return not (rec.get("start") is not None and start is not None and start != rec["start"])


def folder_size(path: Path) -> int:
    total, seen, stack = 0, 0, [str(path)]
    while stack and seen < _SIZE_SCAN_LIMIT:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    seen += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def reclaim_stale(base: str | os.PathLike) -> dict:
    """Remove work folders of dead runs under ``base``; report ownerless old ones. Returns counts."""
    base = Path(base)
    out = {"reclaimed": 0, "reclaimed_bytes": 0, "reported": 0}
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(REPORT_PREFIXES) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return out
    orphans = []
    for entry in entries:
        path = Path(entry.path)
        try:
            with open(path / OWNER_FILE) as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            rec = None
        if isinstance(rec, dict) and entry.name.startswith(PREFIX):
            if owner_alive(rec) is not False:
                continue
            size = folder_size(path)
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                log.warning("%s: work folder of a killed run (pid %s), %s, could not be removed; remove it by hand", path, rec.get("pid"), _mb(size))
                continue
            out["reclaimed"] += 1
            out["reclaimed_bytes"] += size
            log.warning("reclaimed %s: work folder of a run that was killed (pid %s), %s", path, rec.get("pid"), _mb(size))
            continue
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if age > REPORT_AGE_S:
            orphans.append((age, path))
    if orphans:  # one line for all of them: a run should not open with a page of warnings
        out["reported"] = len(orphans)
        oldest, example = max(orphans)
        log.warning(
            "%d work folder(s) without an owner under %s (%s in all, oldest changed %.0f h ago, e.g. %s); "
            "remove them if no clipsift run is using them",
            len(orphans), base, _mb(sum(folder_size(p) for _, p in orphans)), oldest / 3600, example.name,
        )
    return out


def reclaim_user_workdir(base: str | os.PathLike) -> dict:
    """In a user's --workdir: scratch folders of runs that were killed (see the module text)."""
    base = Path(base)
    out = {"reclaimed": 0, "reclaimed_bytes": 0, "reported": 0}
    dead, live = [], 0
    try:
        markers = [Path(e.path) for e in os.scandir(base) if e.name.startswith(RUN_MARKER) and e.name.endswith(".json")]
    except OSError:
        return out
    for m in markers:
        try:
            rec = json.loads(m.read_text())
        except (OSError, ValueError):
            rec = None
        alive = owner_alive(rec) if isinstance(rec, dict) else False
        if alive is False:
            dead.append((m, rec if isinstance(rec, dict) else {}))
        else:
            live += 1
    if live:  # another run uses this folder now: its scratch folders are not ours to judge
        return out
    created = [r["created"] for _, r in dead if isinstance(r.get("created"), (int, float))]
    since = min(created) if created else None  # a marker cut short by the kill: report, never remove
    try:
        entries = list(os.scandir(base))
    except OSError:
        return out
    for entry in entries:
        if not (SCRATCH_NAME.match(entry.name) and entry.is_dir(follow_symlinks=False)):
            continue
        path = Path(entry.path)
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        size = folder_size(path)
        if since is not None and mtime >= since - 1:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                out["reclaimed"] += 1
                out["reclaimed_bytes"] += size
                log.warning("reclaimed %s: scratch folder of a run that was killed, %s", path, _mb(size))
                continue
        if time.time() - mtime > REPORT_AGE_S or since is not None:
            out["reported"] += 1
            log.warning("%s: scratch folder left by an interrupted run, %s; remove it if no clipsift run is using it", path, _mb(size))
    for m, _ in dead:
        with contextlib.suppress(OSError):
            m.unlink()
    return out


def _check_base(base: Path, where: str) -> None:
    try:
        if base.exists() and not base.is_dir():
            raise ClipsiftError(f"{where}: is a file, not a folder; give a folder for scratch data")
        base.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ClipsiftError(f"{where}: a parent of this folder is a file; give a folder for scratch data") from None
    except PermissionError:
        raise ClipsiftError(f"{where}: cannot create the folder (permission denied); give a writable folder") from None
    if not os.access(base, os.W_OK | os.X_OK):
        raise ClipsiftError(f"{where}: folder is not writable; give a writable folder for scratch data")


class _Finalized:
    """A folder with a finalizer: ``cleanup()``, or leaving the ``with`` block, runs it once."""

    path: Path
    _finalizer: weakref.finalize

    def cleanup(self) -> None:
        self._finalizer()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.cleanup()


class UserWorkDir(_Finalized):
    """A user's --workdir: kept after the run (resumable caches), marked while a run uses it."""

    def __init__(self, base: str | os.PathLike, flag: str = "--workdir"):
        self.path = Path(base)
        _check_base(self.path, f"{flag} {base}")
        reclaim_stale(self.path)
        reclaim_user_workdir(self.path)
        self._marker = self.path / f"{RUN_MARKER}{os.getpid()}-{os.urandom(4).hex()}.json"
        self._marker.write_text(json.dumps(owner_record()))
        self._finalizer = weakref.finalize(self, _unlink_quiet, str(self._marker))


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class WorkDir(_Finalized):
    """A run's scratch folder with its owner file; removed by ``cleanup()``, at garbage collection
    or at interpreter exit, whichever comes first (a drop-in for ``tempfile.TemporaryDirectory``)."""

    def __init__(self, base: str | os.PathLike | None = None, flag: str = "--workdir"):
        where = f"{flag} {base}" if base is not None else f"TMPDIR {tempfile.gettempdir()}"
        base = Path(base) if base is not None else Path(tempfile.gettempdir())
        _check_base(base, where)
        reclaim_stale(base)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        self.name = str(self.path)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.name, ignore_errors=True)
        try:
            with open(self.path / OWNER_FILE, "w") as fh:
                json.dump(owner_record(), fh)
        except BaseException as exc:
            self.cleanup()
            _name_write_error(exc, self.path / OWNER_FILE)
            raise


@contextlib.contextmanager
def run_workdir(base: str | os.PathLike | None = None, flag: str = "--workdir"):
    """``with run_workdir(args.workdir) as path:`` the user's folder (kept, marked while in use), or
    without one a fresh ``clipsift-work-*`` folder under TMPDIR (removed afterwards)."""
    holder = WorkDir() if base is None else UserWorkDir(base, flag)
    with holder as path:
        yield path
