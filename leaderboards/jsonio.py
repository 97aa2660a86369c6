"""Strict JSON for the leaderboards: outputs never hold NaN/Infinity, inputs name what is wrong.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no other JSON parser reads;
every JSON file or line written under ``clipsift leaderboard`` goes through :func:`dumps`.
"""

from __future__ import annotations

import json
import math

from clipsift.errors import ClipsiftError


def nonfinite_key(obj, prefix: str = "") -> str | None:
    """Dotted key of the first NaN/Infinity float inside ``obj`` (None when all are finite)."""
    if isinstance(obj, float):
        return prefix or "<top level>" if not math.isfinite(obj) else None
    if isinstance(obj, dict):
        items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = nonfinite_key(value, key)
        if found is not None:
            return found
    return None


def dumps(obj, what: str = "JSON output", **kwargs) -> str:
    """``json.dumps(obj, allow_nan=False, ...)``; a non-finite number is one ClipsiftError line."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        key = nonfinite_key(obj)
        if key is None:
            raise
        raise ClipsiftError(
            f"{what}: {key} is not a finite number (NaN/Infinity is not valid JSON); "
            "fix the input it came from"
        ) from None
