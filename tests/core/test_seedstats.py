"""The seed-noise rule shared by the demo table, the leaderboard page and the validity benchmark."""

import math

import pytest

from clipsift.seedstats import gap_from_stats, mean_std, seed_gap


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
