"""The filter plugin contract.

A filter is a small class with declared parameters (:class:`~clipsift.params.Param`), declared
inputs (parquet ``columns``, npz ``embedding_keys``, optional ``requires`` packages) and one method,
``select(ctx)``, that returns a :class:`Selection`. What it computes stays apart from how it runs:
per-shard work goes through ``ctx.map_shards`` (an executor runs it), global reductions are small.

Rule filters (the DataComp baselines included) subclass :class:`RowFilter` and implement
``keep(batch) -> bool mask`` (optionally with per-reason drop counts); every filter reports the
same counters (:func:`row_counters`).
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import pickle
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clipsift.embcheck import DropCounts
from clipsift.errors import MissingDependencyError
from clipsift.executor import LocalExecutor, map_shards
from clipsift.log import get_logger
from clipsift.params import Param, resolve_params
from clipsift.uids import UID_DTYPE, sort_records, uids_digest
from clipsift.uidsort import SortedUidParts, UidSorter


class Selection:
    """A filter's result: sorted uid records, counters, and details for the manifest.

    The records are either an array (sorted here) or a sorter (:class:`~clipsift.uidsort.SortedUidParts`,
    or :class:`~clipsift.uidsort.UidSorter` on local disk) that
    streams them sorted from disk, so a whole-pool result never has to sit in memory.
    """

    def __init__(self, uids=None, counters=None, details=None, scores=None, *, sorter: UidSorter | SortedUidParts | None = None):
        if (uids is None) == (sorter is None):
            raise ValueError("Selection needs exactly one of uids or sorter")
        self.counters: dict[str, Any] = counters if counters is not None else {}
        self.details: dict[str, Any] = details if details is not None else {}
        self.scores = None  # optional, aligned with ``uids``
        self.file_sha256: str | None = None  # sha256 of the written .npy, when computed while writing
        self._sorter = sorter
        self._uids = None
        if uids is None:
            if scores is not None:
                raise ValueError("scores need in-memory uids")
            return
        uids = np.asarray(uids, dtype=UID_DTYPE)
        if scores is None:
            self._uids = sort_records(uids)
        else:
            order = np.lexsort((uids["f1"], uids["f0"]))
            self._uids, self.scores = uids[order], np.asarray(scores)[order]

    @property
    def uids(self) -> np.ndarray:
        if self._uids is None:
            self._uids = self._sorter.to_array()
        return self._uids

    def __len__(self) -> int:
        return len(self._uids) if self._uids is not None else self._sorter.count

    def close(self) -> None:
        """Free what the sorter holds on disk (parts kept in a run folder stay for a rerun)."""
        sorter = self._sorter
        if sorter is not None and getattr(sorter, "scratch_owned", True):
            sorter.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def sorted_chunks(self, rows: int = 1 << 20):
        """The sorted records in chunks, streamed from disk when a sorter holds them."""
        if self._uids is None:
            yield from self._sorter.sorted_chunks()
            return
        for start in range(0, len(self._uids), rows):
            yield self._uids[start : start + rows]

    def write(self, path) -> tuple[Path, str]:
        """Write the sorted records as a DataComp ``.npy`` (atomically); returns (path, sha256 of records)."""
        if self._uids is None:
            written = self._sorter.write_npy(path)
            self.file_sha256 = getattr(self._sorter, "file_sha256", None)  # hashed while writing
            return written
        from clipsift.subset import write_subset

        return write_subset(path, self._uids), uids_digest(self._uids)


@dataclass
class RunContext:
    """Where and on what a filter runs: the pool, the executor, the candidate rows, scratch space."""

    pool: Any
    executor: LocalExecutor = field(default_factory=LocalExecutor)
    candidates: Any = None  # CandidateRows (per-shard masks), sorted unique uid records, or None: the whole pool
    workdir: Path | None = None
    device: str = "auto"
    bad_embeddings: str = "error"  # rows with non-finite or zero-norm embeddings: "error" | "drop"
    dropped: dict = field(default_factory=DropCounts)  # rows left out while reading, by reason (manifest)
    run_dir: Any = None  # a RunFolder (clipsift.stagecache): per-shard results kept, a killed run resumes

    def __post_init__(self):
        if self.workdir is None:  # a scratch folder with an owner file: a killed run's is reclaimed later
            from clipsift.workdir import WorkDir

            self._tmp = WorkDir()
            self.workdir = Path(self._tmp.name)
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def num_candidates(self) -> int:
        return self.pool.num_rows if self.candidates is None else len(self.candidates)

    def map_shards(self, fn, *, columns=(), keys=(), desc: str = "", threads: bool = False, uids: bool = True,
                   resources: dict | None = None):
        """Run ``fn(ShardBatch)`` on every shard (restricted to the candidates), in shard order.

        ``threads=True``: ``fn`` is light numpy/pyarrow work that releases the GIL, so the local
        executor runs it in threads (a cluster executor runs it as tasks like any step). ``uids=False``: ``fn`` does not look at uids (a pass
        over a score column), so they are not read unless candidates restrict the rows.
        ``resources``: what one task needs, e.g. ``{"num_gpus": 1}`` (clipsift.devices.task_resources).
        """
        return map_shards(
            self.pool, fn, columns=columns, keys=keys, candidates=self.candidates, executor=self.executor, desc=desc,
            threads=threads, bad_embeddings=self.bad_embeddings, dropped=self.dropped, stages=self.run_dir, uids=uids,
            resources=resources,
        )

    def scratch_url(self, name: str) -> str:
        """A folder for intermediate per-shard data that every task can reach: inside the run folder
        (shared storage) when there is one, else in the work folder."""
        if self.run_dir is not None:
            return f"{self.run_dir.url}/scratch/{name}"
        return str(Path(self.workdir) / name)

    def scratch_dir(self, name: str) -> Path:
        """A folder on a file system every task can reach, for stores that are memory-mapped (the
        grouped stores of the density and ClipCov filters): inside the run folder when it is a
        path (a shared file system on a cluster), else in the work folder."""
        if self.run_dir is not None:
            from clipsift.stagecache import url_fs

            fs, path = url_fs(self.run_dir.url)
            if fs is None:
                return Path(path) / "scratch" / name
        return Path(self.workdir) / name

    def step_url(self, name: str, key=None) -> str:
        """A scratch folder URL for one step's per-shard files. ``key`` (anything picklable that
        names the step) makes it the same in a rerun on the same inputs, so stored map results
        keep pointing at their files; without it the folder is new."""
        tag = uuid.uuid4().hex[:16]
        if key is not None:
            from clipsift.executor import _pool_identity
            from clipsift.stagecache import candidates_digest

            try:
                h = hashlib.sha256(pickle.dumps(key, protocol=5))
                h.update(f"{candidates_digest(self.candidates)}:{_pool_identity(self.pool)}".encode())
                tag = h.hexdigest()[:16]
            except Exception:  # noqa: BLE001 - not picklable: a fresh folder
                pass
        return self.scratch_url(f"{name}-{tag}")

    def uid_sorter(self, expected_rows: int, name: str = "uids", key=None) -> SortedUidParts:
        """Where kept uids go: parts on shared storage sorted by tasks into DataComp's ``.npy``
        (:class:`~clipsift.uidsort.SortedUidParts`); ``key`` as for :meth:`step_url`."""
        sorter = SortedUidParts(self.step_url(f"uids-{name}", key), expected_rows, self.executor)
        # parts in a run folder stay (stored map results point at them: a rerun reuses both);
        # parts in the work folder go with the selection that holds them
        sorter.scratch_owned = self.run_dir is None
        return sorter

    def with_candidates(self, candidates) -> RunContext:
        return RunContext(
            self.pool, self.executor, candidates, self.workdir, self.device, self.bad_embeddings, self.dropped,
            self.run_dir,
        )

    def torch_device(self) -> str:
        """Resolve ``auto`` to ``cuda`` when a GPU is present, else ``cpu``; an unusable device is one line."""
        from clipsift.devices import resolve_device

        return resolve_device(self.device)


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


def row_counters(seen: int, kept: int, dropped_by=None, **extra) -> dict:
    """The counters every filter reports, named the same way everywhere: ``input`` rows seen,
    ``kept``, ``dropped`` (= input - kept) and ``dropped_<reason>`` per reason when known."""
    out = {"input": int(seen), "kept": int(kept), "dropped": int(seen) - int(kept)}
    for reason, n in (dropped_by or {}).items():
        out[f"dropped_{reason}"] = int(n)
    out.update(extra)
    return out


def _decision(owner: str, decided, n: int) -> tuple[np.ndarray, dict]:
    """``keep``'s answer as (mask, rows dropped per reason), checked against the batch."""
    mask, reasons = decided if isinstance(decided, tuple) else (decided, None)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"{owner}.keep returned shape {mask.shape} for {n} rows")
    return mask, dict(reasons or {})


class RowFilter(Filter):
    """A filter that decides each row from that row alone: implement ``keep``.

    This is the one contract for rule filters (the DataComp baselines included):

    * ``prepare(ctx)`` runs once in the driver before the shards (load assets, resolve a global
      threshold) and returns manifest details; what it stores on ``self`` travels to the tasks.
    * ``keep(batch)`` runs per shard and returns a boolean mask, or ``(mask, dropped_by)`` where
      ``dropped_by`` maps a reason to the rows it dropped (``{"image_size": 12}``).
    * The counters are :func:`row_counters`: ``input``, ``kept``, ``dropped``, ``dropped_<reason>``.
    """

    threads: ClassVar[bool] = False  # True when keep() is numpy/pyarrow work that releases the GIL

    def prepare(self, ctx: RunContext) -> dict:
        """Driver-side set-up before the shards run; returns manifest details."""
        return {}

    @abc.abstractmethod
    def keep(self, batch):
        """Boolean mask over ``batch`` rows (True keeps the row), or ``(mask, dropped_by)``."""

    def task_resources(self) -> dict | None:
        """What one ``keep`` task needs beyond a CPU (set after ``prepare``), e.g. one GPU."""
        return None

    def decide(self, batch) -> tuple[np.ndarray, Counter, int]:
        """Map step: the kept uids of one shard, rows dropped per reason, rows seen."""
        mask, reasons = _decision(self.name, self.keep(batch), len(batch))
        return (batch.uids if mask.all() else batch.uids[mask]), reasons, len(batch)

    def select(self, ctx: RunContext) -> Selection:
        details = self.prepare(ctx)
        return collect_rows(ctx, self.decide, columns=self.input_columns(), keys=self.input_keys(), desc=self.name,
                            threads=self.threads, details=details, resources=self.task_resources())


def _decide_to_part(step, writer, batch):
    """Map step: decide one shard's rows and write its kept uids as a part on shared storage."""
    kept, reasons, seen = step(batch)
    return writer.write(f"{batch.shard.rank:06d}", kept), reasons, seen


def collect_rows(ctx: RunContext, step, *, columns=(), keys=(), desc: str = "", threads: bool = False,
                 details: dict | None = None, extra: dict | None = None, resources: dict | None = None) -> Selection:
    """Run a row step (``batch -> (kept uids, dropped_by, rows seen)``) over the shards. Each task
    writes its kept uids as a part on shared storage and returns only counts; the parts are sorted
    by tasks into the output (:class:`~clipsift.uidsort.SortedUidParts`): the kept uids never
    pass through the driver."""
    sorter = ctx.uid_sorter(ctx.num_candidates, desc or "rows", key=step)
    task = partial(_decide_to_part, step, sorter.writer)
    dropped_by, seen = Counter(), 0
    for part, reasons, n in ctx.map_shards(task, columns=columns, keys=keys, desc=desc, threads=threads, resources=resources):
        sorter.add_part(part)
        dropped_by.update(reasons)
        seen += n
    counters = row_counters(seen, sorter.count, dropped_by, **(extra or {}))
    return Selection(sorter=sorter, counters=counters, details=details or {})
