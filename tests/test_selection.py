"""FedCMD layer scoring on a case solved by hand, plus sampling, votes, tallies and tie rules."""
import numpy as np
import pytest
import torch

from fedcmd_plugin.fedcmd.selection import (
    Rule, block_scores, choose_block, decide, diagnostic_rules, normalised_sample, round_vote, score_statistics,
    tally, tied_at_minimum, vote_margin,
)
from fedcmd_plugin.models import LeNet5


def two_valued(fraction_high, n=20, low=-2.0, high=5.0):
    """A tensor whose min-max normalised distribution is Bernoulli(fraction_high) on {0, 1}."""
    ones = round(fraction_high * n)
    return torch.tensor([high] * ones + [low] * (n - ones)).reshape(n // 2, 2)


def test_hand_solved_case_picks_the_matching_block():
    # On {0, 1}, W1(Bernoulli(p), Bernoulli(q)) = |p - q|. Input p_x = 0.2, labels p_y = 0.6 and blocks
    # p_l = 0.9, 0.4, 0.5, 0.1 give W to x: 0, .7, .2, .3, .1 and W to y: .4, .3, .2, .1, .5, so
    # d_x = .7, .5, .1, .2 and d_y = .1, .1, .1, .4: scores .6, .4, 0, .2 -> block 2.
    x = two_valued(0.2, n=10, low=-3.0, high=5.0)
    y = torch.tensor([9] * 6 + [0] * 4)
    outputs = [two_valued(p) for p in (0.9, 0.4, 0.5, 0.1)]
    scores = block_scores(x, y, outputs, num_classes=10)["exact"]
    np.testing.assert_allclose(scores, [0.6, 0.4, 0.0, 0.2], atol=1e-9)
    assert choose_block(scores, range(4)) == 2
    assert choose_block(scores, [0, 1, 3]) == 3


def test_scores_for_a_real_model_are_one_per_block():
    torch.manual_seed(0)
    model = LeNet5(image_size=8)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    _, outputs = model(x, return_blocks=True)
    scores = block_scores(x, y, outputs, 10, max_values=64, generator=torch.Generator().manual_seed(1))
    again = block_scores(x, y, outputs, 10, max_values=64, generator=torch.Generator().manual_seed(1))
    for distance in ("exact", "mean"):
        assert scores[distance].shape == (5,) and np.isfinite(scores[distance]).all()
        np.testing.assert_array_equal(scores[distance], again[distance])
    with pytest.raises(ValueError):
        block_scores(x, y, outputs, 1)


def test_normalised_sample_range_and_small_inputs_kept_whole():
    np.testing.assert_allclose(normalised_sample(torch.tensor([[2.0, 4.0], [6.0, 3.0]]), 10), [0, 0.5, 1, 0.25])
    np.testing.assert_array_equal(normalised_sample(torch.full((3, 3), 7.0), 100), np.zeros(9))
    sample = normalised_sample(torch.randn(50, 40) * 9 + 3, 10_000)
    assert sample.dtype == np.float64 and sample.min() == 0.0 and sample.max() == 1.0


def test_subsampling_is_bounded_and_seeded():
    t = torch.randn(5000)
    first = normalised_sample(t, 128, torch.Generator().manual_seed(3))
    second = normalised_sample(t, 128, torch.Generator().manual_seed(3))
    other = normalised_sample(t, 128, torch.Generator().manual_seed(4))
    assert first.shape == (128,) and 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    with pytest.raises(ValueError):
        normalised_sample(t, 0)


def test_choose_block_ties_and_bad_candidates():
    scores = np.array([0.1, 0.5, 0.05, 0.05])
    assert choose_block(scores, [3, 1, 2]) == 2
    assert choose_block(scores, [0, 1]) == 0
    with pytest.raises(ValueError):
        choose_block(scores, [])
    with pytest.raises(ValueError):
        choose_block(scores, [4])


def test_round_vote_most_frequent_with_earliest_tie():
    assert round_vote([2, 2, 0]) == 2
    assert round_vote([3, 1, 3, 1, 2]) == 1
    with pytest.raises(ValueError):
        round_vote([])


def test_tally_and_decide():
    counts = tally([0, 2, 2, 1, 4], 5)
    assert counts == [1, 1, 2, 0, 1]
    assert decide(counts) == 2
    assert decide([0, 3, 3, 1]) == 1
    with pytest.raises(ValueError):
        tally([5], 5)
    with pytest.raises(ValueError):
        decide([0, 0, 0])


def test_mean_distance_is_blind_to_spread_where_exact_transport_is_not():
    # x: {0, 1, 0, 1}; labels 9, 9, 9, 0 -> {1, 1, 1, 0}; one block with values {0, .5, .5, 1} (same mean as x).
    # Exact: W(l, x) = .25, W(x, y) = .25, W(l, y) = .25 -> d_x = .25, d_y = 0 -> score .25.
    # Means: .5, .75, .5 -> W(l, x) = 0, W(x, y) = W(l, y) = .25 -> d_x = d_y = 0 -> score 0.
    x = torch.tensor([0.0, 1.0, 0.0, 1.0])
    y = torch.tensor([9, 9, 9, 0])
    scores = block_scores(x, y, [torch.tensor([0.0, 0.5, 0.5, 1.0])], num_classes=10)
    np.testing.assert_allclose(scores["exact"], [0.25], atol=1e-12)
    np.testing.assert_allclose(scores["mean"], [0.0], atol=1e-12)


def test_preferred_block_wins_only_ties():
    scores = np.array([0.3, 0.0, 0.0, 0.2])
    assert choose_block(scores, range(4)) == 1
    assert choose_block(scores, range(4), preferred=2) == 2
    assert choose_block(scores, range(4), preferred=3) == 1  # not among the lowest
    assert choose_block(scores, [0, 1, 3], preferred=2) == 1  # not a candidate


def test_rule_votes_from_batches_and_diagnostic_rules():
    batches = [{"exact": np.array([0.1, 0.2, 0.3]), "mean": np.array([0.5, 0.0, 0.0])},
               {"exact": np.array([0.4, 0.2, 0.3]), "mean": np.array([0.5, 0.0, 0.0])},
               {"exact": np.array([0.4, 0.5, 0.3]), "mean": np.array([0.0, 0.1, 0.0])}]
    assert Rule("exact", (0, 1, 2)).vote(batches) == 0  # choices 0, 1, 2: a three-way tie -> earliest
    assert Rule("mean", (0, 1, 2)).vote(batches) == 1  # choices 1, 1, 0
    assert Rule("mean", (0, 1, 2), preferred=2).vote(batches) == 2  # choices 2, 2, 0
    assert Rule("exact", (1, 2)).vote(batches) == 1  # choices 1, 1, 2
    rules = diagnostic_rules(["conv1", "conv2", "fc1", "fc2", "classifier"])
    assert len(rules) == 8
    assert rules["mean/last3/prefer-fc2"] == Rule("mean", (2, 3, 4), 3)
    assert rules["exact/all/earliest"] == Rule("exact", (0, 1, 2, 3, 4), None)


def test_vote_margin_and_score_statistics():
    margin = vote_margin([40, 31, 29], ["fc1", "conv2", "fc2"])
    assert margin["winner"] == "fc1" and margin["runner_up"] == "conv2"
    assert margin["margin"] == (40 - 31) / 100 and margin["total_votes"] == 100
    assert vote_margin([5, 5], ["a", "b"])["margin"] == 0.0
    stats = score_statistics([[1.0, 2.0], [3.0, 2.0]], ["a", "b"])
    assert stats["a"] == {"mean": 2.0, "std": 1.0, "n": 2} and stats["b"]["std"] == 0.0


def test_ties_within_rounding_count_as_ties():
    scores = np.array([0.2, 1e-17, 0.0, 0.3])
    assert tied_at_minimum(scores, range(4)) and not tied_at_minimum(scores, [0, 2, 3])
    assert choose_block(scores, range(4), preferred=1) == 1  # 1e-17 vs 0: a tie, so the preference decides
    assert choose_block(scores, range(4)) == 2
