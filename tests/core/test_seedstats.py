"""The seed-noise rule shared by the demo, the leaderboard page and the validity benchmark."""

import math

import pytest

from clipsift.seedstats import mean_std, seed_gap, unpaired_gap

# World 1's five oracle and no_filter Concepts scores (docs/tiny_track.md): the seed that is ahead for
# one subset is ahead for the other, because a seed fixes the initialisation.
ORACLE = [0.353, 0.218, 0.241, 0.252, 0.287]
NO_FILTER = [0.212, 0.141, 0.178, 0.158, 0.231]


def test_mean_std_is_the_sample_std_and_skips_missing_values():
    assert mean_std([]) == (None, None)
    assert mean_std([None, 0.5]) == (0.5, None)
    m, s = mean_std([0.1, None, 0.3])
    assert m == pytest.approx(0.2) and s == pytest.approx(math.sqrt(0.02))


def test_shared_seeds_pair_and_cancel_the_shared_factor():
    paired = seed_gap(list(enumerate(ORACLE)), list(enumerate(NO_FILTER)))
    assert paired.paired and paired.seeds == 5
    diffs = [a - b for a, b in zip(ORACLE, NO_FILTER)]
    assert paired.diff == pytest.approx(sum(diffs) / 5)
    assert paired.bound == pytest.approx(2 * mean_std(diffs)[1])
    assert paired.verdict == "wins" and paired.bound < 0.07
    # the same scores with one side's seeds reassigned so that its best seed meets the other's worst
    order = sorted(range(5), key=ORACLE.__getitem__)
    reversed_ranks = dict(zip(order, sorted(NO_FILTER, reverse=True)))
    crossed = seed_gap(list(enumerate(ORACLE)), list(reversed_ranks.items()))
    assert crossed.diff == pytest.approx(paired.diff) and crossed.verdict == "tied"


def test_without_two_shared_seeds_the_rule_is_two_times_the_larger_std():
    gap = seed_gap([(0, 0.30), (1, 0.34)], [(2, 0.20), (3, 0.21)])
    assert not gap.paired
    assert gap.bound == pytest.approx(2 * mean_std([0.30, 0.34])[1])
    assert gap.verdict == "wins" and gap.text().startswith("wins (+0.115, 2σ 0.057, unpaired")
    by_stats = unpaired_gap(0.32, mean_std([0.30, 0.34])[1], 0.205, mean_std([0.20, 0.21])[1], 2)
    assert (by_stats.diff, by_stats.bound, by_stats.paired) == pytest.approx((gap.diff, gap.bound, False))
    # runs without a recorded seed, or a seed used twice on one side, never pair
    assert not seed_gap([(None, 0.3), (None, 0.34)], [(None, 0.2), (None, 0.21)]).paired
    assert not seed_gap([(0, 0.3), (0, 0.34)], [(0, 0.2), (1, 0.21)]).paired


def test_fewer_than_two_scores_on_a_side_gives_no_verdict():
    assert seed_gap([(0, 0.3)], [(0, 0.2), (1, 0.21)]) is None
    assert seed_gap([(0, 0.3), (1, None)], [(0, 0.2), (1, 0.21)]) is None


def test_ties_are_symmetric_and_losses_mirror_wins():
    a, b = [(0, 0.40), (1, 0.42), (2, 0.41)], [(0, 0.39), (1, 0.43), (2, 0.40)]
    assert seed_gap(a, b).tied and seed_gap(b, a).tied
    c = [(0, 0.20), (1, 0.23), (2, 0.21)]
    assert seed_gap(a, c).verdict == "wins" and seed_gap(c, a).verdict == "loses"
