"""FedCMD layer scoring on a case solved by hand, plus sampling, votes, tallies and tie rules."""
import numpy as np
import pytest
import torch

from fedcmd_plugin.fedcmd.selection import (
    block_scores, choose_block, decide, normalised_sample, round_vote, tally,
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
    scores = block_scores(x, y, outputs, num_classes=10)
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
    assert scores.shape == (5,) and np.isfinite(scores).all() and (scores >= 0).all()
    np.testing.assert_array_equal(scores, again)
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
