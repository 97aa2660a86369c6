"""``scs`` filter: Soft Cap Sampling (M-FLYT, Shechter & Carmon 2025, arXiv 2503.08805).

Rules (docs/scores.md, written from the authors' public implementation, formll/FLYT
``examples.ipynb``): logits ``z_i = s_i / temperature``; until ``count`` samples are drawn, draw
``min(batch_size, remaining)`` distinct candidates with probabilities ``softmax(z)`` (successive
sampling without replacement), then lower the logit of every drawn candidate by
``repetition_penalty``. A candidate drawn m times appears m times in the subset (DataComp's
filtering track allows repeats; the resharder writes the copies).

Sampling without replacement with probabilities ``softmax(z)`` is done with the Gumbel-top-k
trick: the ``b`` largest ``z_i + G_i`` (``G_i`` standard Gumbel) are a draw from exactly that
distribution. The noise of round r comes from ``numpy.random.Generator(PCG64(SeedSequence([seed,
r])))`` over the candidates in uid order, so the subset depends only on the seed, the parameters
and the candidates' (uid, score) pairs, never on shard layout or workers.

Cost: every round is O(N) over the scored candidates (``count / batch_size`` rounds), memory
about 40 bytes per candidate.
"""

from __future__ import annotations

import numpy as np

from clipsift.errors import ParamError
from clipsift.filter import RunContext, Selection
from clipsift.filters.scores.mix import MixedScoreFilter
from clipsift.params import Param

DEFAULT_PENALTY = 0.15  # M-FLYT's medium-scale submission (mflyt_medium_scs015)
DEFAULT_BATCH = 100_000  # the authors' default batch_size


def gumbel(seed: int, round_: int, n: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(round_)])))
    u = rng.random(n)  # in [0, 1)
    with np.errstate(divide="ignore"):
        return -np.log(-np.log(u))  # u = 0 gives -inf: never drawn ahead of a finite key


def soft_cap_counts(scores: np.ndarray, total: int, penalty: float, batch_size: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """How many times each candidate is drawn (pure; ``scores`` in canonical uid order)."""
    n = len(scores)
    counts = np.zeros(n, dtype=np.int64)
    if n == 0 or total <= 0:
        return counts
    z = np.asarray(scores, dtype=np.float64) / temperature
    drawn, r = 0, 0
    while drawn < total:
        b = min(batch_size, total - drawn, n)
        keys = z + gumbel(seed, r, n)
        pick = np.argpartition(-keys, b - 1)[:b] if b < n else np.arange(n)
        counts[pick] += 1
        z[pick] -= penalty
        drawn += b
        r += 1
    return counts


class ScsFilter(MixedScoreFilter):
    name = "scs"
    description = "Soft Cap Sampling (M-FLYT): softmax sampling of a per-uid score with a repetition penalty; a subset with repeats."
    params = (
        *(
            Param("normalise", str, "none", p.help, choices=p.choices) if p.name == "normalise" else p
            for p in MixedScoreFilter.mix_params
        ),
        Param("count", int, None, "samples to draw (the subset's size with repeats), e.g. the scale's samples seen", min=1),
        Param("fraction", float, None, "samples to draw as a multiple of the scored candidates: int(fraction*N) (may exceed 1)", min=0.0),
        Param("repetition_penalty", float, DEFAULT_PENALTY, "logit decrease of a candidate each time it is drawn", min=0.0),
        Param("batch_size", int, DEFAULT_BATCH, "candidates drawn (without replacement) per round", min=1),
        Param("temperature", float, 1.0, "logits are score / temperature (authors: 1, the score is the logit)", min=1e-12),
        Param("seed", int, 0, "random seed", min=0),
    )

    def validate(self) -> None:
        super().validate()
        if (self.count is None) == (self.fraction is None):
            raise ParamError("scs: give exactly one of count or fraction")

    def select(self, ctx: RunContext) -> Selection:
        uids, score, details = self.mixed_scores(ctx)
        if not np.all(np.isfinite(score)):
            raise ParamError("scs: a mixed score is not finite (inf in an input?); fix the inputs or use normalise=rank")
        total = self.count if self.count is not None else int(self.fraction * len(uids))
        if total and not len(uids):
            raise ParamError("scs: no candidate has a score; nothing to sample from")
        counts = soft_cap_counts(score, total, self.repetition_penalty, self.batch_size, self.temperature, self.seed)
        picked = np.flatnonzero(counts)
        hist = np.bincount(counts[picked]) if len(picked) else np.zeros(1, np.int64)
        details.update(
            samples=int(total), rounds=-(-int(total) // max(1, min(self.batch_size, len(uids) or 1))),
            distinct=int(len(picked)), max_repeats=int(counts.max(initial=0)),
            repeats_histogram={int(k): int(v) for k, v in enumerate(hist) if k and v},
        )
        n = ctx.num_candidates
        counters = {"input": n, "scored": len(uids), "kept": int(total), "distinct": int(len(picked)), "dropped": n - int(len(picked))}
        return Selection(np.repeat(uids, counts), counters=counters, details=details)
