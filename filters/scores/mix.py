"""Per-uid score sources and score mixing (``mix`` filter).

A source gives one number per candidate uid:

* ``column:NAME`` — a numeric column of the pool's parquet (e.g. ``clip_l14_similarity_score``);
* ``scores:PATH`` or ``scores:PATH#COLUMN`` — an external per-uid file (parquet ``uid`` + ``score``,
  or a folder of them), joined by uid (:mod:`clipsift.filters.scores.join`);
* ``filter:NAME key=value ...`` — a registered filter that returns per-uid scores in its
  :class:`~clipsift.filter.Selection` (``negclip``, ``normsim``; run with ``threshold=-inf`` unless
  a fraction or threshold is given, so every candidate is scored).

``inputs`` lists sources separated by ``;``. Each is normalised over the candidates
(``normalise``: ``rank`` → average rank / n in (0, 1], ``zscore`` → (v - mean) / std, ``none``) and
the weighted sum ``sum_j w_j norm_j(v)`` is the mixed score; ``mix`` then keeps ``score >=
threshold`` or the top ``fraction`` by DataComp's rule. A candidate that a source does not score
is handled by ``missing``: ``error``, ``drop``, or ``fill`` (that component becomes ``fill_value``
after normalisation). NaN scores count as missing.

Mixing holds the candidates' uids and one float64 per source and row in memory (16 + 8k bytes a
row); a single external score file is better served by the bounded-memory ``score`` filter.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

import numpy as np

from clipsift.baselines.common import float_column
from clipsift.baselines.scores import at_least, fraction_threshold
from clipsift.budget import require_one
from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection
from clipsift.filters.scores.join import DUPLICATE_RULES, _keys, pool_uids, score_join
from clipsift.params import Param
from clipsift.uids import UID_DTYPE, records_to_hex, sort_order

NORMALISE = ("rank", "zscore", "none")
NO_THRESHOLD = -float(np.finfo(np.float32).max)  # finite in float32 and float64, below every score


@dataclass
class Source:
    kind: str  # column | scores | filter
    target: str  # column name, path, or filter name
    column: str = "score"
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "filter":
            return "filter:" + " ".join([self.target] + [f"{k}={v}" for k, v in self.params.items()])
        if self.kind == "scores":
            return f"scores:{self.target}#{self.column}"
        return f"column:{self.target}"


def parse_inputs(text: str, owner: str = "mix") -> list[Source]:
    """``column:NAME; scores:PATH[#COLUMN]; filter:NAME k=v ...`` -> sources."""
    out = []
    for i, item in enumerate(p.strip() for p in (text or "").split(";")):
        if not item:
            continue
        kind, sep, rest = item.partition(":")
        kind, rest = kind.strip(), rest.strip()
        if not sep or kind not in ("column", "scores", "filter") or not rest:
            raise ParamError(
                f"{owner}: input {i} {item!r}: write column:NAME, scores:PATH[#COLUMN] or filter:NAME [key=value ...]"
            )
        if kind == "column":
            out.append(Source("column", rest))
        elif kind == "scores":
            path, _, col = rest.partition("#")
            out.append(Source("scores", path.strip(), col.strip() or "score"))
        else:
            words = shlex.split(rest)
            params = {}
            for w in words[1:]:
                if "=" not in w:
                    raise ParamError(f"{owner}: input {i} {item!r}: filter parameters are key=value")
                k, v = w.split("=", 1)
                params[k] = v
            out.append(Source("filter", words[0], params=params))
    if not out:
        raise ParamError(f"{owner}: give inputs, e.g. inputs=\"column:clip_l14_similarity_score; scores:dfn_scores/\"")
    return out


def parse_weights(text: str | None, n: int, owner: str) -> np.ndarray:
    if not text:
        return np.ones(n)
    try:
        w = np.array([float(x) for x in text.replace(";", ",").split(",") if x.strip()])
    except ValueError:
        raise ParamError(f"{owner}: weights={text!r}: give numbers separated by commas") from None
    if len(w) != n:
        raise ParamError(f"{owner}: {len(w)} weights for {n} inputs; give one weight per input")
    if not np.all(np.isfinite(w)):
        raise ParamError(f"{owner}: weights must be finite numbers")
    return w


# ---------------------------------------------------------------- gathering (per shard: pure)


class _ColumnStep:
    def __init__(self, column: str):
        self.column = column

    def __call__(self, batch):
        return batch.uids, np.asarray(float_column(batch, self.column), dtype=np.float64)


def align(uids_sorted: np.ndarray, src_uids: np.ndarray, src_vals: np.ndarray) -> np.ndarray:
    """Values of ``src`` at ``uids_sorted`` (NaN where absent); ``src_uids`` in any order."""
    if not len(src_uids):
        return np.full(len(uids_sorted), np.nan)
    order = sort_order(src_uids)
    ref = _keys(src_uids[order])
    q = _keys(uids_sorted)
    pos = np.searchsorted(ref, q)
    pos_c = np.minimum(pos, len(ref) - 1)
    hit = (pos < len(ref)) & (ref[pos_c] == q)
    return np.where(hit, np.asarray(src_vals, dtype=np.float64)[order][pos_c], np.nan)


def candidate_uids(ctx: RunContext) -> np.ndarray:
    parts = list(ctx.map_shards(pool_uids, columns=("uid",), desc="candidate uids", threads=True))
    u = np.concatenate(parts) if parts else np.empty(0, UID_DTYPE)
    return u[sort_order(u)] if len(u) else u


def source_values(ctx: RunContext, src: Source, uids: np.ndarray, duplicates: str, log=None) -> np.ndarray:
    """One float64 per sorted candidate uid (NaN: no score)."""
    if src.kind == "column":
        parts = list(ctx.map_shards(_ColumnStep(src.target), columns=("uid", src.target), desc=f"column {src.target}", threads=True))
        su = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, UID_DTYPE)
        sv = np.concatenate([p[1] for p in parts]) if parts else np.empty(0)
        return align(uids, su, sv)
    if src.kind == "scores":
        buckets, _, close = score_join(ctx, src.target, src.column, duplicates)
        try:
            vals = [v for _, v, _ in buckets]
        finally:
            close()
        return np.concatenate(vals) if vals else np.empty(0)  # buckets come in the same sorted order
    scorer = scoring_filter(src)
    scorer.keep_scores = True  # the kept rows' scores in memory (negclip otherwise streams its uids to disk)
    sel = scorer.select(ctx)
    if sel.scores is None:
        raise ParamError(f"filter {src.target} returns no per-uid scores; use a scoring filter (negclip, normsim) or a score file")
    return align(uids, sel.uids, sel.scores)


def scoring_filter(src: Source):
    """The filter of a ``filter:`` input, set to score every candidate unless told otherwise."""
    from clipsift.registry import create_filter, get_filter_class

    params = dict(src.params)
    declared = {p.name for p in get_filter_class(src.target).params}
    if "threshold" in declared and not ({"threshold", "fraction", "count"} & set(params)):
        params["threshold"] = NO_THRESHOLD
    try:
        return create_filter(src.target, params)
    except ParamError as exc:
        raise ParamError(f"input filter:{src.target}: {exc}") from None


def normalise(values: np.ndarray, how: str) -> np.ndarray:
    """Normalise the finite values; NaN stays NaN."""
    out = np.full(len(values), np.nan)
    ok = np.isfinite(values) if how != "none" else ~np.isnan(values)
    v = values[ok]
    if not len(v):
        return out
    if how == "rank":
        from scipy.stats import rankdata

        out[ok] = rankdata(v, method="average") / len(v)
    elif how == "zscore":
        sd = v.std()
        out[ok] = (v - v.mean()) / sd if sd > 0 else 0.0
    else:
        out[ok] = v
    return out


def combine(columns: list[np.ndarray], weights: np.ndarray, how: str, missing: str, fill_value) -> tuple[np.ndarray, np.ndarray]:
    """(mixed score, rows that take part) from per-source raw values (pure)."""
    n = len(columns[0]) if columns else 0
    total = np.zeros(n)
    take = np.ones(n, dtype=bool)
    for w, col in zip(weights, columns):
        z = normalise(col, how)
        absent = np.isnan(z)
        if missing == "fill":
            z = np.where(absent, fill_value, z)
        else:
            take &= ~absent
        total += w * np.where(np.isnan(z), 0.0, z)
    return total, take


class MixedScoreFilter(Filter):
    """Base of the filters that select from a mixed per-uid score (``mix``, ``scs``)."""

    mix_params = (
        Param("inputs", str, None, "score sources separated by ';': column:NAME, scores:PATH[#COLUMN], filter:NAME [k=v ...]"),
        Param("weights", str, None, "one weight per input, comma-separated (default: all 1)"),
        Param("normalise", str, "rank", "per-input normalisation before the weighted sum: rank, zscore or none", choices=NORMALISE),
        Param("missing", str, "error", "a candidate that an input does not score: error, drop or fill", choices=("error", "drop", "fill")),
        Param("fill_value", float, None, "normalised value given to a missing input (missing=fill)"),
        Param("duplicates", str, "error", "a uid repeated in a score file: error, first, max, min or mean", choices=DUPLICATE_RULES),
    )
    columns = ("uid",)

    def validate(self) -> None:
        self.sources = parse_inputs(self.inputs, self.name)
        self.weight_array = parse_weights(self.weights, len(self.sources), self.name)
        if self.missing == "fill" and self.fill_value is None:
            raise ParamError(f"{self.name}: missing=fill needs fill_value=NUMBER")
        for s in self.sources:  # a scoring filter's parameters are checked now, not after the other inputs ran
            if s.kind == "filter":
                scoring_filter(s)

    def input_columns(self):
        return ("uid",) + tuple(s.target for s in self.sources if s.kind == "column")

    def mixed_scores(self, ctx: RunContext) -> tuple[np.ndarray, np.ndarray, dict]:
        """(sorted candidate uids that take part, their mixed scores, details for the manifest)."""
        uids = candidate_uids(ctx)
        cols = [source_values(ctx, s, uids, self.duplicates) for s in self.sources]
        score, take = combine(cols, self.weight_array, self.normalise, self.missing, self.fill_value)
        absent = int(len(uids) - take.sum())
        if absent and self.missing == "error":
            first = int(np.flatnonzero(~take)[0])
            which = [s.describe() for s, c in zip(self.sources, cols) if np.isnan(c[first])]
            raise ParamError(
                f"{self.name}: {absent} of {len(uids)} candidates lack a score from some input (first: uid "
                f"{records_to_hex(uids[first:first + 1])[0]} in {', '.join(which)}); set missing=drop or missing=fill"
            )
        per_input = [
            {"input": s.describe(), "weight": float(w), "scored": int(np.count_nonzero(~np.isnan(c)))}
            for s, w, c in zip(self.sources, self.weight_array, cols)
        ]
        details = {"inputs": per_input, "normalise": self.normalise, "candidates": len(uids), "without_score": absent}
        return uids[take], score[take], details


class MixFilter(MixedScoreFilter):
    name = "mix"
    description = "Weighted sum of rank- or z-normalised per-uid scores (pool columns, score files, scoring filters); threshold or top fraction."
    params = (
        *MixedScoreFilter.mix_params,
        Param("threshold", float, None, "keep mixed score >= threshold"),
        Param("fraction", float, None, "the top fraction by DataComp's rule (ties kept) of the scored candidates", min=0.0, max=1.0),
    )

    def validate(self) -> None:
        super().validate()
        require_one(self, "fraction", "threshold")

    def select(self, ctx: RunContext) -> Selection:
        uids, score, details = self.mixed_scores(ctx)
        t = self.threshold if self.fraction is None else fraction_threshold(score, self.fraction)
        keep = at_least(score, t)
        details.update(threshold=float(t), fraction=self.fraction)
        n = ctx.num_candidates
        counters = {"input": n, "scored": len(uids), "kept": int(keep.sum()), "dropped": n - int(keep.sum())}
        return Selection(uids[keep], counters=counters, details=details, scores=score[keep])
