"""Filter registry: every filter, ours and third parties', comes from the ``clipsift.filters``
entry-point group, so adding one never touches the core. A plugin that reuses a built-in name is
ignored with a warning."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution, entry_points

from clipsift.errors import ParamError
from clipsift.log import get_logger

GROUP = "clipsift.filters"
log = get_logger("registry")


@lru_cache(maxsize=1)
def _own_entry_points() -> dict:
    """clipsift's own filters, read from its distribution alone (a full scan reads every
    installed package's metadata: milliseconds on each CLI call)."""
    try:
        return {ep.name: ep for ep in distribution("clipsift").entry_points.select(group=GROUP)}
    except PackageNotFoundError:  # running from a source tree without an install
        return {}


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    found = dict(_own_entry_points())  # built-in names are never shadowed by a plugin
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            log.warning("filter %s declared twice (%s, %s); using the first", ep.name, found[ep.name].value, ep.value)
            continue
        found[ep.name] = ep
    return found


def refresh() -> None:
    """Forget cached entry points (after installing a plugin in the same process)."""
    _entry_points.cache_clear()
    _own_entry_points.cache_clear()


def available() -> list[str]:
    return sorted(_entry_points())


def get_filter_class(name: str):
    eps = _own_entry_points()
    if name not in eps:
        eps = _entry_points()
    if name not in eps:
        raise ParamError(f"unknown filter {name!r}; available: {', '.join(available())} (see `clipsift filters`)")
    cls = eps[name].load()
    if not getattr(cls, "name", None):
        cls.name = name
    return cls


def create_filter(name: str, params: dict | None = None):
    """Instantiate a registered filter with validated parameters."""
    return get_filter_class(name)(**(params or {}))
