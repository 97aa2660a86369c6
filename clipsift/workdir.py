"""Scratch folders for runs, and reclaiming the ones killed runs leave behind.

Each run gets its own ``clipsift-work-*`` folder (under ``--workdir`` or TMPDIR) holding an owner
file: process id, its start time, boot id and host. A run that ends, fails or is interrupted
removes its folder; a run that is killed (SIGKILL, OOM killer, power loss) cannot, so every new
run looks at its siblings first:

* a folder whose owner process is gone (same host; pid not running, or running since another
  time, or the machine rebooted since) is removed, with a warning giving its size;
* a folder without an owner file (made by an older clipsift, or by a library user's RunContext)
  older than an hour is reported with its size, never removed: it may still be in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import weakref
from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.log import get_logger

PREFIX = "clipsift-work-"
REPORT_PREFIXES = (PREFIX, "clipsift-cand-")  # the executor's candidate folders carry no owner: reported only
OWNER_FILE = ".clipsift-owner.json"
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
            out["reported"] += 1
            log.warning(
                "%s: work folder without an owner, %s, last changed %.0f h ago; remove it if no clipsift run is using it",
                path, _mb(folder_size(path)), age / 3600,
            )
    return out


class WorkDir:
    """A run's scratch folder with its owner file; removed by ``cleanup()``, at garbage collection
    or at interpreter exit, whichever comes first (a drop-in for ``tempfile.TemporaryDirectory``)."""

    def __init__(self, base: str | os.PathLike | None = None, flag: str = "--workdir"):
        where = f"{flag} {base}" if base is not None else f"TMPDIR {tempfile.gettempdir()}"
        base = Path(base) if base is not None else Path(tempfile.gettempdir())
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
        reclaim_stale(base)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        self.name = str(self.path)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.name, ignore_errors=True)
        try:
            with open(self.path / OWNER_FILE, "w") as fh:
                json.dump(owner_record(), fh)
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        self._finalizer()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.cleanup()


@contextlib.contextmanager
def run_workdir(base: str | os.PathLike | None = None, flag: str = "--workdir"):
    """``with run_workdir(args.workdir) as path:`` a fresh per-run folder under ``base`` (or TMPDIR)."""
    with WorkDir(base, flag) as path:
        yield path
