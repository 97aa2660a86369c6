"""One budget rule for filters that keep a number of rows: ``fraction`` or ``count`` of ``n``.

``fraction`` gives ``int(n * fraction)`` in IEEE double, as DataComp computes it
(``int(100 * 0.29) == 28``). A ``count`` above ``n`` cannot be met: the filter keeps ``n``, says so
in a warning and records the shortfall in the manifest details, instead of silently keeping fewer.
"""

from __future__ import annotations

from clipsift.errors import ParamError
from clipsift.log import get_logger
from clipsift.params import Param

log = get_logger("budget")


def keep_count(
    n: int, fraction: float | None = None, count: int | None = None, *, owner: str, details: dict | None = None,
    of: str = "candidates",
) -> int:
    """Rows to keep out of ``n``; a short count is warned about and written to ``details["shortfall"]``."""
    if (fraction is None) == (count is None):
        raise ParamError(f"{owner}: give exactly one of fraction or count")
    if fraction is not None:
        return fraction_count(n, fraction)
    count = int(count)
    if count <= n:
        return count
    log.warning("%s: count=%d asked, but only %d %s are left; keeping %d (%d short)", owner, count, n, of, n, count - n)
    if details is not None:
        details["shortfall"] = {"asked": count, "available": int(n), "kept": int(n), "short": count - int(n), "of": of}
    return int(n)


def fraction_count(n: int, fraction: float) -> int:
    """``int(n * fraction)`` in IEEE double: DataComp's (and the seed methods') row budget."""
    return int(n * fraction)


def budget_params(of: str = "candidate rows", *, count: bool = True, threshold: str | None = None) -> tuple[Param, ...]:
    """The one budget parameter group: ``fraction`` (``int(N * fraction)`` of ``of``) or ``count``,
    plus ``threshold`` (its help text) for filters that can also cut by score."""
    out = [Param("fraction", float, None, f"keep int(N*fraction) of the {of}", min=0.0, max=1.0)]
    if count:
        out.append(Param("count", int, None, f"keep this many of the {of}", min=0))
    if threshold:
        out.append(Param("threshold", float, None, threshold))
    return tuple(out)


def require_one(owner, *names: str) -> str:
    """The one budget parameter ``owner`` was given among ``names``; exactly one must be set."""
    given = [n for n in names if getattr(owner, n, None) is not None]
    if len(given) != 1:
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        raise ParamError(f"{owner.name}: give exactly one of {listed}")
    return given[0]
