"""Logging set-up and progress bars shared by every command."""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm  # the plain bar: tqdm.auto would import asyncio (~20 ms on every command)

LOGGER_NAME = "clipsift"


def get_logger(name: str = "") -> logging.Logger:
    """Module logger under the ``clipsift`` hierarchy."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture, a redirected stream),
    not to the stream that was current when logging was first configured."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(verbosity: int = 0) -> None:
    """-q → warnings only, default → info, -v → debug; always to stderr."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(level)
    if not any(getattr(h, "_clipsift", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._clipsift = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
    os.environ.setdefault("CLIPSIFT_PROGRESS", "0" if verbosity < 0 else "1")


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", disable: bool = False, **kw):
    """A tqdm bar on stderr, silenced by -q or CLIPSIFT_PROGRESS=0 and when stderr is not a tty."""
    disable = disable or os.environ.get("CLIPSIFT_PROGRESS", "1") == "0" or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, leave=False, **kw)
