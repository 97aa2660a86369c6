"""``score`` filter: DataComp's selection rules on an external per-uid score (DFN, FLYT, HYPE, ...).

The score file (parquet ``uid`` + ``score``, or a folder of them) is joined to the pool by uid in
bounded memory (:mod:`clipsift.filters.scores.join`); then ``score >= threshold`` or the top
``fraction`` by DataComp's rule (:mod:`clipsift.baselines.scores`, ``clip_score``'s rule, so the
same values give the same subset). Pool rows without a score are counted and handled by
``missing``: ``error`` (default), ``drop`` (left out, and not counted in N) or ``fill``
(given ``fill_value``). Repeated uids in the file are handled by ``duplicates``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from clipsift.baselines.scores import at_least
from clipsift.budget import require_one
from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection
from clipsift.filters.scores.join import DUPLICATE_RULES, score_join
from clipsift.filters.scores.rules import fraction_threshold_parts
from clipsift.params import Param

MISSING_RULES = ("error", "drop", "fill")

SOURCE_PARAMS = (
    Param("column", str, "score", "score column of the file"),
    Param("missing", str, "error", "pool rows absent from the file: error, drop or fill (with fill_value)", choices=MISSING_RULES),
    Param("fill_value", float, None, "score given to pool rows absent from the file (missing=fill)"),
    Param("duplicates", str, "error", "a uid repeated in the file: error, or combine by first, max, min, mean", choices=DUPLICATE_RULES),
)


def check_missing(owner) -> None:
    if owner.missing == "fill" and owner.fill_value is None:
        raise ParamError(f"{owner.name}: missing=fill needs fill_value=NUMBER")
    if owner.missing != "fill" and owner.fill_value is not None:
        raise ParamError(f"{owner.name}: fill_value is only used with missing=fill")


def missing_error(name: str, path, stats) -> ParamError:
    return ParamError(
        f"{path}: {stats.missing} of {stats.pool_rows} pool rows have no score (first: uid {stats.first_missing}); "
        f"set missing=drop to leave them out or missing=fill with fill_value=NUMBER ({name})"
    )


def resolve_missing(vals: np.ndarray, found: np.ndarray, missing: str, fill_value) -> tuple[np.ndarray, np.ndarray]:
    """(values, rows that take part) after the missing rule (pure, per bucket)."""
    if missing == "fill":
        return np.where(found, vals, fill_value), np.ones(len(vals), dtype=bool)
    return vals, found


class ScoreFilter(Filter):
    name = "score"
    description = "External per-uid score file joined by uid (bounded memory): score >= threshold, or the top fraction by DataComp's rule."
    params = (
        Param("scores", str, None, "parquet file or folder with columns uid and score (e.g. released DFN scores)"),
        *SOURCE_PARAMS,
        Param("threshold", float, None, "keep score >= threshold (compared in the file's dtype)"),
        Param("fraction", float, None, "threshold = the (int(N*fraction)+1)-th largest score; ties kept", min=0.0, max=1.0),
    )
    columns = ("uid",)

    def validate(self) -> None:
        if not self.scores:
            raise ParamError("score: give scores=PATH (a parquet file or folder with uid and score columns)")
        require_one(self, "fraction", "threshold")
        check_missing(self)

    def select(self, ctx: RunContext) -> Selection:
        buckets, stats, close = score_join(ctx, self.scores, self.column, self.duplicates, unsorted_ok=True)
        sorter = ctx.uid_sorter(ctx.num_candidates, self.name)
        tmp = Path(tempfile.mkdtemp(prefix="clipsift-score-", dir=ctx.workdir))
        details = {"scores": str(self.scores), "column": self.column}
        try:
            n_scored, parts = 0, []
            for b, (uids, vals, found) in enumerate(buckets):
                vals, take = resolve_missing(vals, found, self.missing, self.fill_value)
                if not take.all():
                    uids, vals = uids[take], vals[take]
                n_scored += len(uids)
                if self.threshold is not None:
                    sorter.add(uids[at_least(vals.astype(stats.dtype), self.threshold)])
                elif len(uids):
                    np.save(tmp / f"{b:04d}.u.npy", uids)
                    np.save(tmp / f"{b:04d}.v.npy", vals)
                    parts.append(b)
            if stats.missing and self.missing == "error":
                raise missing_error(self.name, self.scores, stats)
            dtype = np.dtype(stats.dtype)
            if self.threshold is not None:
                details["threshold"] = self.threshold
            else:
                t = fraction_threshold_parts(lambda: (np.load(tmp / f"{b:04d}.v.npy") for b in parts), n_scored, self.fraction, dtype)
                for b in parts:
                    vals = np.load(tmp / f"{b:04d}.v.npy").astype(dtype)
                    sorter.add(np.load(tmp / f"{b:04d}.u.npy")[at_least(vals, t)])
                details.update(threshold=float(t), threshold_dtype=str(dtype), fraction=self.fraction)
        except BaseException:
            sorter.close()
            raise
        finally:
            close()
            shutil.rmtree(tmp, ignore_errors=True)
        kept = sorter.count
        counters = {"input": stats.pool_rows, "scored": n_scored, "kept": kept, "dropped": stats.pool_rows - kept, **stats.counters()}
        return Selection(sorter=sorter, counters=counters, details=details)
