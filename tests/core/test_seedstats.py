"""The seed-noise rule shared by the demo table, the leaderboard page and the validity benchmark."""

import math

import pytest

from clipsift.seedstats import LEARNABLE_MIN_SEEDS, gap_from_stats, mean_std, paired_gap, seed_gap


def test_mean_std_is_the_sample_std_and_skips_missing_values():
    assert mean_std([]) == (None, None)
    assert mean_std([None, 0.5]) == (0.5, None)
    m, s = mean_std([0.1, None, 0.3])
    assert m == pytest.approx(0.2) and s == pytest.approx(math.sqrt(0.02))


def test_a_difference_counts_beyond_two_times_the_larger_seed_std():
    # world 1's five oracle and no_filter Concepts scores (docs/tiny_track.md): +0.086, 2σ 0.105
    oracle, no_filter = [0.353, 0.218, 0.241, 0.252, 0.287], [0.212, 0.141, 0.178, 0.158, 0.231]
    gap = seed_gap(oracle, no_filter)
    assert gap.bound == pytest.approx(2 * mean_std(oracle)[1]) and gap.tied
    assert gap.text() == "tied (+0.086, 2σ 0.105)"
    far = seed_gap([0.30, 0.34, 0.32], [0.20, 0.21, 0.19])
    assert far.verdict == "wins" and seed_gap([0.20, 0.21, 0.19], [0.30, 0.34, 0.32]).verdict == "loses"
    assert far.bound == pytest.approx(2 * 0.02) and far.diff == pytest.approx(0.12)


def test_the_rule_from_means_and_stds_matches_the_rule_from_scores():
    a, b = [0.40, 0.42], [0.39, 0.41]
    from_stats = gap_from_stats(*mean_std(a), *mean_std(b))
    assert (from_stats.diff, from_stats.bound) == pytest.approx((seed_gap(a, b).diff, seed_gap(a, b).bound))
    assert from_stats.tied and gap_from_stats(0.5, None, 0.4, None).verdict == "wins"  # no std: any gap counts


def test_fewer_than_two_scores_on_a_side_gives_no_verdict():
    assert seed_gap([0.3], [0.2, 0.21]) is None
    assert seed_gap([0.3, None], [0.2, 0.21]) is None


def _paired(lead, spread, noise, seeds=range(10)):
    """Scores whose seeds share a factor (spread) plus a small per-run noise, a leading by ``lead``."""
    shared = {s: 0.2 + spread * ((-1) ** s) * (1 + s % 3) / 2 for s in seeds}
    a = {s: shared[s] + lead + noise * ((s * 7) % 5 - 2) for s in seeds}
    return a, shared


def test_a_lead_shared_seed_by_seed_is_learnable_while_single_runs_tie():
    a, b = _paired(lead=0.08, spread=0.06, noise=0.01)
    assert seed_gap(list(a.values()), list(b.values())).tied  # single runs overlap
    gap = paired_gap(a, b)
    assert gap.n == 10 and gap.diff == pytest.approx(0.08)
    diffs = [a[s] - b[s] for s in range(10)]
    assert gap.se == pytest.approx(mean_std(diffs)[1] / math.sqrt(10))
    assert gap.beats and gap.t > 2
    assert gap.text().startswith("beats (+0.080, 2 SE ")


def test_no_lead_or_too_few_seeds_is_not_learnable():
    a, b = _paired(lead=0.0, spread=0.06, noise=0.01)
    flat = paired_gap(a, b)
    assert not flat.beats and flat.text().startswith("does not beat")
    a, b = _paired(lead=0.08, spread=0.06, noise=0.01, seeds=range(5))
    few = paired_gap(a, b)
    assert few.t > 2 and not few.beats and few.text().startswith(f"too few seeds (< {LEARNABLE_MIN_SEEDS})")


def test_only_seeds_both_sides_finished_are_paired():
    a, b = _paired(lead=0.05, spread=0.03, noise=0.005, seeds=range(12))
    a[10], b[11] = None, None
    a[99] = 1.0  # no partner
    assert paired_gap(a, b).n == 10
    assert paired_gap({0: 0.3}, {0: 0.2}) is None
    const = paired_gap({s: 0.3 for s in range(10)}, {s: 0.2 for s in range(10)})
    assert const.t == math.inf and const.beats
