"""Crash-safe outputs: write under a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from clipsift.errors import ClipsiftError
from clipsift.log import get_logger

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

log = get_logger("io")
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # a full disk, quota or file size limit


def _name_write_error(exc: BaseException, path) -> None:
    """A failed ``write()`` reports ENOSPC without a file name; name the output it was for."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS and not exc.filename:
        exc.filename = str(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _name_write_error(exc, path)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file for writing; it replaces ``path`` when the block exits cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder next to ``path``; it becomes ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text; returns the path."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Atomically write ``obj`` as JSON (UTF-8, trailing newline)."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, sort_keys=False, default=str)
        fh.write("\n")


# ---- output paths, locks and file pairs ---------------------------------------------------------
class OutputError(ClipsiftError):
    """An output path cannot be written (a folder, under a file, not writable, busy)."""


def check_output_path(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output path before any work starts: empty, a folder, under a file, not writable.

    Returns it as a Path. A missing parent folder is fine (it is created when the file is written).
    """
    text = os.fspath(path) if path is not None else ""
    if not str(text).strip():
        raise OutputError(f"{flag} is empty; give an output file name such as subset.npy")
    if str(text).endswith(("/", os.sep)):
        raise OutputError(f"{flag} {text}: names a folder; give a file name inside it, such as {text}subset.npy")
    out = Path(text)
    if out.is_dir():
        raise OutputError(f"{flag} {out}: is a folder; give a file name inside it, such as {out / 'subset.npy'}")
    if out.exists() and not out.is_file():
        raise OutputError(f"{flag} {out}: exists and is not a regular file; choose another output path")
    _check_nearest_folder(out.absolute().parent, out, flag, "output path")
    return out


def _check_nearest_folder(start: Path, out: Path, flag: str, what: str) -> None:
    """The nearest existing ancestor of ``out`` (from ``start`` up) must be a writable folder."""
    anc = start
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{flag} {out}: {anc} is a file, not a folder; choose another {what}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: folder {anc} is not writable; choose a writable output folder")


def _temp_pattern(name: str) -> re.Pattern:
    # atomic_path's temporaries of NAME (and of NAME.json) and those nested inside atomic_pair's
    rand = r"\.[a-z0-9_]{8}\.tmp"  # mkstemp's and token_hex's 8 characters
    return re.compile(r"^\.\.?" + re.escape(name) + r"(\.json)?" + rand + r"(\.npy(" + rand + r")?)?$", re.I)


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Remove temporaries that killed writers of ``path`` left beside it. Call it only while
    holding :func:`output_lock` on ``path`` (then no live writer owns them). Returns the count."""
    path = Path(path)
    pattern, removed = _temp_pattern(path.name), 0
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return 0
    for entry in entries:
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", path, removed)
    return removed


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, flag: str = "--out"):
    """Hold an exclusive lock on ``path`` (``PATH.lock`` beside it, removed afterwards) while the
    block runs; a second writer of the same output fails at once with one line instead of mixing
    its files with ours. Stale temporaries of earlier killed writers are removed once locked."""
    path = Path(path)
    if fcntl is None:  # no flock (Windows): writes stay atomic, just not serialised
        yield None
        return
    lock = Path(f"{path}.lock")
    made, anc = [], lock.parent  # folders this run creates: removed again if it writes nothing
    while not anc.exists() and anc != anc.parent:
        made.append(anc)
        anc = anc.parent
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(
                    f"{path}: another clipsift run (pid {holder}) is writing this output (lock {lock}); "
                    f"wait for it to finish or choose another {flag}"
                ) from None
            raise
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temps(path)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
        if made and not path.exists():
            for d in made:
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only while empty


@contextlib.contextmanager
def atomic_pair(path: str | os.PathLike, companion: str | os.PathLike, suffix: str = ""):
    """Write a data file and its companion (a manifest) so that they never disagree.

    Yields ``(tmp, tmp_companion)``: ``tmp`` exists (empty) for the data, ``tmp_companion`` is a free
    name to write the companion to (or not: then no companion is left). When the block succeeds the
    old companion is removed first, then ``tmp`` becomes ``path`` and ``tmp_companion`` becomes
    ``companion``. A crash at any point leaves the old pair, or a data file without companion; never
    a new data file beside the old companion. On failure both temporaries are removed.
    """
    path, companion = Path(path), Path(companion)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    ctmp = companion.with_name(f".{companion.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp, ctmp
        with contextlib.suppress(FileNotFoundError):
            os.unlink(companion)
        os.replace(tmp, path)
        if ctmp.exists():
            os.replace(ctmp, companion)
    except BaseException as exc:
        for t in (tmp, ctmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(t)
        if isinstance(exc, OSError) and exc.filename in (str(tmp), str(ctmp)):
            exc.filename = str(path if exc.filename == str(tmp) else companion)  # name the output, not our temporary
        _name_write_error(exc, path)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (manifests name the exact file they describe)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output folder before any work: empty, a file, under a file, not writable."""
    text = os.fspath(path) if path is not None else ""
    if not str(text).strip():
        raise OutputError(f"{flag} is empty; give an output folder")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out}: is a file, not a folder; choose another output folder")
    _check_nearest_folder(out.absolute(), out, flag, "output folder")
    return out
