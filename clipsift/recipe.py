"""Pipelines of filters: chains (each step runs on the survivors of the previous one) and
combinations (branches on the same input, joined by intersection or union), loaded from TOML.

A recipe file::

    name = "basic then clip score"
    [[step]]
    filter = "basic_filter"
    [[step]]
    filter = "clip_score"
    params = { arch = "l14", fraction = 0.3 }
    [[step]]
    union = [ { filter = "random", params = { fraction = 0.5, seed = 1 } },
              { filter = "clip_score", params = { arch = "b32", threshold = 0.3 } } ]
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from clipsift.errors import ParamError
from clipsift.filter import RunContext, Selection
from clipsift.registry import create_filter
from clipsift.subset import combine
from clipsift.uids import unique_sorted


class Chain:
    """Run steps in order, each on the previous step's selection."""

    def __init__(self, steps, name: str = "chain"):
        if not steps:
            raise ParamError("a pipeline needs at least one step")
        self.steps, self.name = list(steps), name

    def describe(self) -> dict:
        return {"pipeline": self.name, "steps": [s.describe() for s in self.steps]}

    def select(self, ctx: RunContext) -> Selection:
        stages, sel = [], None
        for step in self.steps:
            sel = step.select(ctx)
            stages.append({**step.describe(), "input": ctx.num_candidates, "output": len(sel), "counters": sel.counters})
            ctx = ctx.with_candidates(unique_sorted(sel.uids))
        return Selection(sel.uids, counters={"output": len(sel)}, details={"stages": stages})


class Combine:
    """Run branches on the same input and join them (``intersect`` or ``union``)."""

    def __init__(self, op: str, branches):
        if op not in ("intersect", "union"):
            raise ParamError(f"unknown combination {op!r}; use intersect or union")
        if len(branches) < 2:
            raise ParamError(f"{op} needs at least two branches")
        self.op, self.branches = op, list(branches)
        self.name = op

    def describe(self) -> dict:
        return {"combine": self.op, "branches": [b.describe() for b in self.branches]}

    def select(self, ctx: RunContext) -> Selection:
        sels = [b.select(ctx) for b in self.branches]
        result = sels[0].uids
        for s in sels[1:]:
            result = combine(self.op, result, s.uids)
        return Selection(np.asarray(result), counters={"branches": [len(s) for s in sels], "output": len(result)})


def build_step(spec: dict, where: str):
    """One recipe entry: ``{filter, params}`` or ``{intersect|union: [entries]}`` or ``{chain: [...]}``."""
    if not isinstance(spec, dict):
        raise ParamError(f"{where}: each step must be a table")
    kinds = [k for k in ("filter", "intersect", "union", "chain") if k in spec]
    if len(kinds) != 1:
        raise ParamError(f"{where}: a step needs exactly one of filter, intersect, union, chain")
    kind = kinds[0]
    extra = set(spec) - {kind, "params"}
    if extra:
        raise ParamError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    if kind == "filter":
        return create_filter(spec["filter"], spec.get("params", {}))
    subs = [build_step(s, f"{where}.{kind}[{i}]") for i, s in enumerate(spec[kind])]
    return Chain(subs, name=where) if kind == "chain" else Combine(kind, subs)


def load_recipe(path: str | Path):
    """Parse a TOML recipe into a runnable step (a filter, a Chain or a Combine)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: recipe file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParamError(f"{path}: invalid TOML ({exc}); fix the recipe") from None
    steps = data.get("step")
    if not isinstance(steps, list) or not steps:
        raise ParamError(f"{path}: a recipe needs at least one [[step]] table")
    try:
        built = [build_step(s, f"step[{i}]") for i, s in enumerate(steps)]
    except ParamError as exc:
        raise ParamError(f"{path}: {exc}") from None
    name = data.get("name", path.stem)
    return built[0] if len(built) == 1 else Chain(built, name=name)
