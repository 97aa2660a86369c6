"""Output files: atomic writes that end up with normal permissions (temporary files are 0600)."""

from __future__ import annotations

import os
from pathlib import Path

from clipsift.io import atomic_write


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str | os.PathLike) -> Path:
    """Give a finished output the permissions a plain ``open()`` would (pages get served/shared)."""
    path = Path(path)
    mode = 0o777 if path.is_dir() else 0o666
    os.chmod(path, mode & ~_umask())
    if path.is_dir():
        for p in path.rglob("*"):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_umask())
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text and make it readable."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return make_readable(path)
