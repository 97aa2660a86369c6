"""One budget rule for filters that keep a number of rows: ``fraction`` or ``count`` of ``n``.

``fraction`` gives ``int(n * fraction)`` in IEEE double, as DataComp computes it
(``int(100 * 0.29) == 28``). A ``count`` above ``n`` cannot be met: the filter keeps ``n``, says so
in a warning and records the shortfall in the manifest details, instead of silently keeping fewer.
"""

from __future__ import annotations

from clipsift.errors import ParamError
from clipsift.log import get_logger

log = get_logger("budget")


def keep_count(
    n: int, fraction: float | None = None, count: int | None = None, *, owner: str, details: dict | None = None,
    of: str = "candidates",
) -> int:
    """Rows to keep out of ``n``; a short count is warned about and written to ``details["shortfall"]``."""
    if (fraction is None) == (count is None):
        raise ParamError(f"{owner}: give exactly one of fraction or count")
    if fraction is not None:
        return int(n * fraction)
    count = int(count)
    if count <= n:
        return count
    log.warning("%s: count=%d asked, but only %d %s are left; keeping %d (%d short)", owner, count, n, of, n, count - n)
    if details is not None:
        details["shortfall"] = {"asked": count, "available": int(n), "kept": int(n), "short": count - int(n), "of": of}
    return int(n)
