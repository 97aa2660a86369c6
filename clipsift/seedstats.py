"""Seeds and uncertainty: mean ± std over seeds, and when a difference is within seed noise.

Two rules, for two questions:

* **Ties** (``seed_gap``; the demo table, the leaderboard page, ``validity_tiny.py``'s tables): would
  another seed flip the order of two runs? Two methods differ only when their means are more than
  ``TIE_SIGMAS`` × the larger of their two single-run seed stds apart.
* **Learnability** (``paired_gap``; the oracle table of ``validity_tiny.py``): does a task see the
  data's quality at all, i.e. is the *expected* score of the clean subset higher? The mean of the
  per-seed differences must exceed ``TIE_SIGMAS`` standard errors (its seed std / √n) over at least
  ``LEARNABLE_MIN_SEEDS`` seeds. Runs with the same seed start from the same weights, so the
  difference is taken seed by seed. docs/tiny_track.md measures why the tie rule cannot answer this
  question on the tiny track: the clean subset's lead there is 1.1–1.3 single-run stds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TIE_SIGMAS = 2.0
LEARNABLE_MIN_SEEDS = 10


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


@dataclass(frozen=True)
class PairedGap:
    """``diff`` = mean over shared seeds of a − b; ``se`` = std of those differences / √n."""

    diff: float
    se: float
    n: int

    @property
    def t(self) -> float:
        """diff / se (±inf for a constant nonzero difference, 0 for none)."""
        if self.se > 0:
            return self.diff / self.se
        return math.copysign(math.inf, self.diff) if self.diff else 0.0

    @property
    def enough_seeds(self) -> bool:
        return self.n >= LEARNABLE_MIN_SEEDS

    @property
    def beats(self) -> bool:
        """a's expected score is higher: diff > TIE_SIGMAS × se, with enough seeds to say so."""
        return self.enough_seeds and self.t > TIE_SIGMAS

    def text(self) -> str:
        word = "beats" if self.beats else (f"too few seeds (< {LEARNABLE_MIN_SEEDS})" if not self.enough_seeds
                                           else "does not beat")
        t = f"{self.t:.1f}" if abs(self.t) < 1000 else f"{'>' if self.t > 0 else '<-'}1000"
        return f"{word} ({self.diff:+.3f}, 2 SE {TIE_SIGMAS * self.se:.3f}, t {t}, {self.n} seeds)"


def paired_gap(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> PairedGap | None:
    """The learnability rule from two methods' scores keyed by seed; None under two shared seeds."""
    seeds = sorted(s for s in a.keys() & b.keys() if a[s] is not None and b[s] is not None)
    if len(seeds) < 2:
        return None
    m, s = mean_std([a[k] - b[k] for k in seeds])
    return PairedGap(m, s / math.sqrt(len(seeds)), len(seeds))
