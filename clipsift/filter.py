"""The filter plugin contract.

A filter is a small class with declared parameters (:class:`~clipsift.params.Param`), declared
inputs (parquet ``columns``, npz ``embedding_keys``, optional ``requires`` packages) and one method,
``select(ctx)``, that returns a :class:`Selection`. What it computes stays apart from how it runs:
per-shard work goes through ``ctx.map_shards`` (an executor runs it), global reductions are small.

Most rule-based filters subclass :class:`RowFilter` and implement ``keep(batch) -> bool mask``.
"""

from __future__ import annotations

import abc
import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clipsift.errors import MissingDependencyError
from clipsift.executor import LocalExecutor, map_shards
from clipsift.log import get_logger
from clipsift.params import Param, resolve_params
from clipsift.uids import UID_DTYPE, sort_records


@dataclass
class Selection:
    """A filter's result: sorted uid records, counters, and details for the manifest."""

    uids: np.ndarray
    counters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = None  # optional, aligned with ``uids``

    def __post_init__(self):
        if self.scores is None:
            self.uids = sort_records(np.asarray(self.uids, dtype=UID_DTYPE))
        else:
            order = np.lexsort((self.uids["f1"], self.uids["f0"]))
            self.uids, self.scores = self.uids[order], np.asarray(self.scores)[order]

    def __len__(self) -> int:
        return len(self.uids)


@dataclass
class RunContext:
    """Where and on what a filter runs: the pool, the executor, the candidate rows, scratch space."""

    pool: Any
    executor: LocalExecutor = field(default_factory=LocalExecutor)
    candidates: np.ndarray | None = None  # sorted unique uid records, or None for the whole pool
    workdir: Path | None = None
    device: str = "auto"

    def __post_init__(self):
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="clipsift-work-")
            self.workdir = Path(self._tmp.name)
        self.workdir = Path(self.workdir)

    @property
    def num_candidates(self) -> int:
        return self.pool.num_rows if self.candidates is None else len(self.candidates)

    def map_shards(self, fn, *, columns=(), keys=(), desc: str = ""):
        """Run ``fn(ShardBatch)`` on every shard (restricted to the candidates), in shard order."""
        return map_shards(
            self.pool, fn, columns=columns, keys=keys, candidates=self.candidates, executor=self.executor, desc=desc
        )

    def with_candidates(self, candidates: np.ndarray | None) -> RunContext:
        return RunContext(self.pool, self.executor, candidates, self.workdir, self.device)

    def torch_device(self) -> str:
        """Resolve ``auto`` to ``cuda`` when a GPU is present, else ``cpu``."""
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"


class Filter(abc.ABC):
    """Base class of every filter plugin."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    columns: ClassVar[tuple[str, ...]] = ()
    embedding_keys: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()  # importable module names, checked at construction

    def __init__(self, **params):
        self._check_requires()
        self._params = resolve_params(self.params, params, self.name or type(self).__name__)
        for key, value in self._params.items():
            setattr(self, key, value)
        self.validate()
        self.log = get_logger(f"filters.{self.name}")

    def _check_requires(self) -> None:
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(
                    f"filter {self.name} needs the Python package providing {module!r}; install it (pip install ...)"
                )

    def validate(self) -> None:
        """Cross-parameter checks; raise ParamError. Single parameters are checked by their Param."""
        return None

    def get_params(self) -> dict:
        return dict(self._params)

    def input_columns(self) -> tuple[str, ...]:
        """Parquet columns read (override when they depend on parameters)."""
        return tuple(self.columns)

    def input_keys(self) -> tuple[str, ...]:
        """npz embedding keys read (override when they depend on parameters)."""
        return tuple(self.embedding_keys)

    def describe(self) -> dict:
        return {"filter": self.name, "params": self.get_params()}

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("log", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.log = get_logger(f"filters.{self.name}")

    @abc.abstractmethod
    def select(self, ctx: RunContext) -> Selection:
        """Choose rows of ``ctx.pool`` (among ``ctx.candidates`` when set)."""


class RowFilter(Filter):
    """A filter that decides each row from that row alone: implement ``keep``."""

    @abc.abstractmethod
    def keep(self, batch) -> np.ndarray:
        """Boolean mask over ``batch`` rows: True keeps the row."""

    def _map_shard(self, batch):
        mask = np.asarray(self.keep(batch), dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"{self.name}.keep returned shape {mask.shape} for {len(batch)} rows")
        # sorted per shard (in the worker), so the global sort only merges runs
        return sort_records(batch.uids[mask]), len(batch)

    def select(self, ctx: RunContext) -> Selection:
        parts, seen = [], 0
        for uids, n in ctx.map_shards(self._map_shard, columns=self.input_columns(), keys=self.input_keys(), desc=self.name):
            parts.append(uids)
            seen += n
        uids = np.concatenate(parts) if parts else np.empty(0, dtype=UID_DTYPE)
        return Selection(uids, counters={"input": seen, "kept": len(uids), "dropped": seen - len(uids)})
