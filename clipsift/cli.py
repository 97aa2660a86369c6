"""The ``clipsift`` command line: core commands plus groups registered by entry points.

A package adds a command group by declaring, in its pyproject.toml::

    [project.entry-points."clipsift.commands"]
    mygroup = "mypackage.cli:register"

where ``register(subparsers)`` adds parsers to ``subparsers`` (an argparse sub-parsers action) and
sets ``func=handler`` on each through ``set_defaults``; ``handler(args) -> int`` returns the exit
code. User errors raise :class:`clipsift.errors.ClipsiftError`; the CLI prints its one line on stderr
and exits 1. Usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
from importlib.metadata import entry_points

from clipsift import __version__
from clipsift.errors import ClipsiftError
from clipsift.log import configure_logging, get_logger

log = get_logger("cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipsift",
        description="DataComp-compatible data filtering for CLIP pretraining.",
    )
    parser.add_argument("--version", action="version", version=f"clipsift {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from clipsift import commands

    commands.register(sub)
    for ep in sorted(entry_points(group="clipsift.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            log.warning("command plugin %s could not be loaded: %s", ep.name, exc)
            continue
        register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit): unwinds like Ctrl-C, so the run's work folder,
    temporaries and output lock are removed instead of left behind."""


def _sigterm_handler(owner: int):
    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker inherited this: die as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    return handler


def _default_sigterm_in_child() -> None:
    """A forked worker must die on SIGTERM at once: a Python-level handler runs only between
    bytecodes, so a child blocked in C (a lock, a pipe) would ignore ``Pool.terminate()`` and
    the parent would wait for it forever."""
    if getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "handler":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_AT_FORK = []


@contextlib.contextmanager
def _terminate_cleanly():
    installed = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        if not _AT_FORK and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_default_sigterm_in_child)
            _AT_FORK.append(True)
        installed = signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
    try:
        yield
    finally:
        if installed is not None:
            signal.signal(signal.SIGTERM, installed)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        with _terminate_cleanly():
            return int(args.func(args) or 0)
    except ClipsiftError as exc:
        log.debug("error", exc_info=True)
        print(f"clipsift: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        line = os_error_line(exc, args)
        if line is None:
            raise
        log.debug("error", exc_info=True)
        print(f"clipsift: error: {line}", file=sys.stderr)
        return 1
    except Terminated:
        print("clipsift: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("clipsift: interrupted", file=sys.stderr)
        return 130


_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
}
_ACCESS_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def _free(path: str) -> str | None:
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        n = shutil.disk_usage(p).free
    except OSError:
        return None
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return None


def _find_os_error(exc: BaseException, table: dict) -> OSError | None:
    """The OSError with an errno of ``table`` in ``exc``'s chain (worker errors arrive wrapped)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in table:
            return exc
        if isinstance(exc, OSError) and table is _DISK_ERRNOS and "No space left on device" in str(exc):
            exc.errno = errno.ENOSPC  # pyarrow and others report ENOSPC in the message alone
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_line(exc: OSError, args=None) -> str | None:
    """One line for a full, read-only or forbidden disk: the path, the cause and the fix, with the
    free space where this command writes (its output, --workdir, TMPDIR). None for other errors."""
    disk = _find_os_error(exc, _DISK_ERRNOS)
    if disk is not None:
        where = disk.filename or "writing"
        places = []
        for label in ("out", "save_path", "workdir"):
            value = getattr(args, label, None)
            if isinstance(value, str) and value:
                free = _free(value)
                places.append(f"--{label} {value}" + (f" ({free} free)" if free else ""))
        tmp = tempfile.gettempdir()
        free = _free(tmp)
        places.append(f"TMPDIR {tmp}" + (f" ({free} free)" if free else ""))
        cause = _DISK_ERRNOS[disk.errno]
        code = errno.errorcode.get(disk.errno, str(disk.errno))
        fix = {
            errno.EROFS: "write somewhere writable",
            errno.EFBIG: "raise the file size limit (ulimit -f) or use a file system that allows larger files",
        }.get(disk.errno, "free space there")
        return f"{where}: {cause} ({code}); {fix}, or point the output, --workdir or TMPDIR at another disk [{'; '.join(places)}]"
    denied = _find_os_error(exc, _ACCESS_ERRNOS)
    if denied is not None and denied.filename:
        return f"{denied.filename}: {_ACCESS_ERRNOS[denied.errno]}; check the path and its permissions"
    return None


if __name__ == "__main__":
    sys.exit(main())
