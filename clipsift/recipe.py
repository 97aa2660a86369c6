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

from clipsift.candidates import CandidateRows
from clipsift.errors import ParamError
from clipsift.filter import RunContext, Selection, row_counters
from clipsift.registry import create_filter
from clipsift.subset import combine_streams


class Chain:
    """Run steps in order, each on the previous step's selection."""

    def __init__(self, steps, name: str = "chain"):
        if not steps:
            raise ParamError("a pipeline needs at least one step")
        self.steps, self.name = list(steps), name

    def describe(self) -> dict:
        return {"pipeline": self.name, "steps": [s.describe() for s in self.steps]}

    def select(self, ctx: RunContext) -> Selection:
        """Each step runs on the rows the previous one kept; what passes between steps is one
        candidate mask per shard on shared storage (:mod:`clipsift.candidates`), never a uid array."""
        stages, sel, seen, masks = [], None, ctx.num_candidates, []
        try:
            for i, step in enumerate(self.steps):
                sel = step.select(ctx)
                stages.append({**step.describe(), "input": ctx.num_candidates, "output": len(sel), "counters": sel.counters})
                if i + 1 < len(self.steps):
                    masks.append(CandidateRows.from_sorted_uids(ctx, sel.sorted_chunks(), ctx.scratch_url("candidates"), expected=len(sel)))
                    ctx = ctx.with_candidates(masks[-1])
        finally:
            for rows in masks:
                rows.release(ctx)
        sel.counters, sel.details = row_counters(seen, len(sel)), {"stages": stages}
        return sel


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
        """The branches' sorted outputs merged as streams (bounded memory), into the sorted writer."""
        sels = [b.select(ctx) for b in self.branches]
        stream = sels[0].sorted_chunks()
        for s in sels[1:]:
            stream = combine_streams(self.op, stream, s.sorted_chunks())
        sorter = ctx.uid_sorter(ctx.num_candidates, self.op)
        for chunk in stream:
            sorter.add(chunk)
        counters = row_counters(ctx.num_candidates, sorter.count, branches=[len(s) for s in sels])
        return Selection(sorter=sorter, counters=counters)


MAX_DEPTH = 16  # nested chain/intersect/union levels
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a small text file; refuse to read /dev/zero or a data file
_KINDS = ("filter", "intersect", "union", "chain")


def build_step(spec: dict, where: str, depth: int = 0):
    """One recipe entry: ``{filter, params}`` or ``{intersect|union: [entries]}`` or ``{chain: [...]}``."""
    if not isinstance(spec, dict):
        raise ParamError(f"{where}: each step must be a table, got {type(spec).__name__}")
    if depth > MAX_DEPTH:
        raise ParamError(f"{where}: steps nested more than {MAX_DEPTH} levels deep; flatten the recipe")
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) != 1:
        raise ParamError(f"{where}: a step needs exactly one of filter, intersect, union, chain")
    kind = kinds[0]
    extra = set(spec) - {kind, "params"}
    if extra:
        raise ParamError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; a step has {kind} and params")
    if kind == "filter":
        name = spec["filter"]
        if not isinstance(name, str):
            raise ParamError(f"{where}: filter must be a filter name (a string), got {type(name).__name__}")
        params = spec.get("params", {})
        if not isinstance(params, dict):
            raise ParamError(f"{where} ({name}): params must be a table (params = {{ key = value }}), got {type(params).__name__}")
        try:
            return create_filter(name, params)
        except ParamError as exc:
            raise ParamError(f"{where}: {exc}") from None
    if "params" in spec:
        raise ParamError(f"{where}: params belong to a filter step, not to {kind}")
    branches = spec[kind]
    if not isinstance(branches, list):
        raise ParamError(f"{where}: {kind} must be an array of steps, got {type(branches).__name__}")
    subs = [build_step(s, f"{where}.{kind}[{i}]", depth + 1) for i, s in enumerate(branches)]
    try:
        return Chain(subs, name=where) if kind == "chain" else Combine(kind, subs)
    except ParamError as exc:
        raise ParamError(f"{where}: {exc}") from None


def read_recipe(path: str | Path) -> str:
    """The recipe's text; a missing, unreadable, oversized or non-UTF-8 file is one ParamError line."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ParamError(f"{path}: recipe is a folder; give a .toml file")
        if path.exists() and not path.is_file():  # a FIFO or device would block or never end
            raise ParamError(f"{path}: recipe is not a regular file; give a .toml file")
        with open(path, "rb") as fh:
            data = fh.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise ParamError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise ParamError(f"{path}: cannot read the recipe ({exc.strerror or exc}); check the path and its permissions") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise ParamError(f"{path}: recipe is larger than {MAX_RECIPE_BYTES >> 20} MiB; is this the right file?")
    try:
        return data.decode("utf-8-sig")  # a BOM from a Windows editor is fine
    except UnicodeDecodeError as exc:
        raise ParamError(f"{path}: recipe is not UTF-8 text (byte {exc.start}); save it as UTF-8 TOML") from None


def parse_recipe(text: str, path: str | Path = "<recipe>"):
    """Build a runnable step (a filter, a Chain or a Combine) from TOML text; errors name ``path``."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ParamError(f"{path}: invalid TOML ({exc}); fix the recipe") from None
    except RecursionError:
        raise ParamError(f"{path}: invalid TOML (tables or arrays nested too deeply); fix the recipe") from None
    extra = set(data) - {"name", "step"}
    if extra:
        raise ParamError(f"{path}: unknown top-level key(s) {', '.join(sorted(extra))}; a recipe has name and [[step]] tables")
    steps = data.get("step")
    if not isinstance(steps, list) or not steps:
        raise ParamError(f"{path}: a recipe needs at least one [[step]] table")
    name = data.get("name", path.stem)
    if not isinstance(name, str):
        raise ParamError(f"{path}: name must be a string")
    try:
        built = [build_step(s, f"step[{i}]") for i, s in enumerate(steps)]
    except ParamError as exc:
        raise ParamError(f"{path}: {exc}") from None
    except RecursionError:
        raise ParamError(f"{path}: a step is nested too deeply; flatten the recipe") from None
    return built[0] if len(built) == 1 else Chain(built, name=name)


def load_recipe(path: str | Path):
    """Parse a TOML recipe file into a runnable step (a filter, a Chain or a Combine)."""
    return parse_recipe(read_recipe(path), path)
