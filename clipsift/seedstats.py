"""Seeds and uncertainty: mean ± std over seeds, and when two methods' difference is within seed noise.

One rule, used by the demo table, the leaderboard page and ``benchmarks/validity_tiny.py``: a
difference counts only when it exceeds ``TIE_SIGMAS`` seed standard deviations of the difference.

Runs that share a seed share their initialisation (open_clip seeds torch before it builds the
model), and at small scales that shared start is the larger part of the seed noise: the seed that
is ahead for one subset tends to be ahead for every subset. So when two methods have at least two
seeds in common the difference is taken seed by seed (a paired comparison, as in common random
numbers) and its std is the std of those per-seed differences; the shared factor cancels. Without
two common seeds the rule falls back to 2 × the larger of the two methods' seed stds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TIE_SIGMAS = 2.0


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1) of the values that are not None; std None for one value."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    m = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


@dataclass(frozen=True)
class SeedGap:
    """``diff`` = a − b; ``bound`` = TIE_SIGMAS seed stds of it; ``paired`` says how the std was taken."""

    diff: float
    bound: float
    paired: bool
    seeds: int

    @property
    def verdict(self) -> str:
        return "wins" if self.diff > self.bound else "loses" if self.diff < -self.bound else "tied"

    @property
    def tied(self) -> bool:
        return self.verdict == "tied"

    def text(self) -> str:
        how = f"paired over {self.seeds} seeds" if self.paired else "unpaired"
        return f"{self.verdict} ({self.diff:+.3f}, 2σ {self.bound:.3f}, {how})"


def _seeded(runs: Iterable[tuple[object, float | None]]) -> tuple[list[float], dict | None]:
    """The values, and {seed: value} when every run has its own seed (else None: nothing to pair on)."""
    runs = [(s, float(v)) for s, v in runs if v is not None]
    seeds = [s for s, _ in runs]
    by_seed = dict(runs) if None not in seeds and len(set(seeds)) == len(seeds) else None
    return [v for _, v in runs], by_seed


def seed_gap(a: Iterable[tuple[object, float | None]], b: Iterable[tuple[object, float | None]]) -> SeedGap | None:
    """Compare two methods from their (seed, score) runs; None when either side has fewer than two scores.

    Runs without a recorded seed (None), or a side with a seed twice, are compared unpaired.
    """
    (va, sa), (vb, sb) = _seeded(a), _seeded(b)
    if len(va) < 2 or len(vb) < 2:
        return None
    shared = sorted(sa.keys() & sb.keys(), key=str) if sa is not None and sb is not None else []
    if len(shared) >= 2:
        diff, std = mean_std([sa[s] - sb[s] for s in shared])
        return SeedGap(diff, TIE_SIGMAS * std, True, len(shared))
    (ma, da), (mb, db) = mean_std(va), mean_std(vb)
    return unpaired_gap(ma, da, mb, db, min(len(va), len(vb)))


def unpaired_gap(mean_a: float, std_a: float, mean_b: float, std_b: float, seeds: int = 0) -> SeedGap:
    """The fallback when only means and stds are known: 2 × the larger of the two seed stds."""
    return SeedGap(mean_a - mean_b, TIE_SIGMAS * max(std_a, std_b), False, seeds)
