"""Seeds and uncertainty: mean ± std over seeds, and when a difference is within seed noise.

One rule for the demo table, the leaderboard page and ``benchmarks/validity_tiny.py``: two methods
differ only when their means are more than ``TIE_SIGMAS`` × the larger of their two seed stds apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    """``diff`` = mean(a) − mean(b); ``bound`` = TIE_SIGMAS × the larger seed std."""

    diff: float
    bound: float

    @property
    def verdict(self) -> str:
        return "wins" if self.diff > self.bound else "loses" if self.diff < -self.bound else "tied"

    @property
    def tied(self) -> bool:
        return self.verdict == "tied"

    def text(self) -> str:
        return f"{self.verdict} ({self.diff:+.3f}, 2σ {self.bound:.3f})"


def gap_from_stats(mean_a: float, std_a: float | None, mean_b: float, std_b: float | None) -> SeedGap:
    """The rule from two (mean, std) pairs; a missing std counts as 0."""
    return SeedGap(mean_a - mean_b, TIE_SIGMAS * max(std_a or 0.0, std_b or 0.0))


def seed_gap(a: Sequence[float | None], b: Sequence[float | None]) -> SeedGap | None:
    """The rule from two methods' per-seed scores; None when either side has fewer than two scores."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if sa is None or sb is None:
        return None
    return gap_from_stats(ma, sa, mb, sb)
