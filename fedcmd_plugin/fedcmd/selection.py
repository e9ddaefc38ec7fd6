"""FedCMD's personalized-layer selection: score blocks by Wasserstein distances, vote, tally and decide.

A block's score is |d_x(l) - d_y(l)| with d_x(l) = |W(P_l, P_x) - W(P_{l-1}, P_x)| and d_y likewise for the
labels (P_0 = P_x): the block whose move towards the labels best matches its move away from the input gets the
lowest score. Every tie (between blocks or between votes) goes to the earliest block, so all clients and the
server break ties the same way without sharing any randomness.
"""
from collections import Counter

import numpy as np
import torch


def _sample(t, max_values, generator):
    """Up to `max_values` values of `t` as float64 numpy, drawn uniformly with replacement when there are more.

    Drawing with replacement keeps the cost independent of the size of a block's output.
    """
    if max_values < 1:
        raise ValueError(f"max_values must be positive, got {max_values}")
    flat = t.detach().reshape(-1)
    if flat.numel() > max_values:
        index = torch.randint(flat.numel(), (max_values,), generator=generator)
        flat = flat[index.to(flat.device)]
    return flat.to("cpu", torch.float64).numpy()


def normalised_sample(t, max_values, generator=None):
    """Up to `max_values` random values of `t`, min-max scaled to [0, 1] (a constant tensor gives zeros)."""
    values = _sample(t, max_values, generator)
    if values.size == 0:
        raise ValueError("cannot take a distribution of an empty tensor")
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def block_scores(x, y, block_outputs, num_classes, max_values=1024, generator=None):
    """|d_x(l) - d_y(l)| for every block l, from one batch's input `x`, labels `y` and the blocks' outputs."""
    import ot  # imported here: loading POT takes seconds and only the selection phase needs it

    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    p_x = normalised_sample(x, max_values, generator)
    p_y = _sample(y, max_values, generator) / (num_classes - 1)
    to_x = [0.0]  # W(P_0, P_x) with P_0 = P_x
    to_y = [ot.wasserstein_1d(p_x, p_y)]
    for output in block_outputs:
        p_l = normalised_sample(output, max_values, generator)
        to_x.append(ot.wasserstein_1d(p_l, p_x))
        to_y.append(ot.wasserstein_1d(p_l, p_y))
    d_x = np.abs(np.diff(np.asarray(to_x, dtype=np.float64)))
    d_y = np.abs(np.diff(np.asarray(to_y, dtype=np.float64)))
    return np.abs(d_x - d_y)


def choose_block(scores, candidates):
    """The candidate block index with the lowest score (ties -> earliest block)."""
    candidates = sorted(set(candidates))
    if not candidates:
        raise ValueError("no candidate blocks to choose from")
    if candidates[0] < 0 or candidates[-1] >= len(scores):
        raise ValueError(f"candidate blocks {candidates} out of range for {len(scores)} scores")
    return min(candidates, key=lambda index: scores[index])


def round_vote(choices):
    """A client's vote for the round: its most frequent per-batch choice (ties -> earliest block)."""
    counts = Counter(choices)
    if not counts:
        raise ValueError("no choices to vote from")
    return min(counts, key=lambda block: (-counts[block], block))


def tally(votes, num_blocks):
    """Votes per block index, as a list of `num_blocks` counts."""
    counts = [0] * num_blocks
    for vote in votes:
        if not 0 <= vote < num_blocks:
            raise ValueError(f"vote {vote} is not a block index below {num_blocks}")
        counts[vote] += 1
    return counts


def decide(counts):
    """The personalized block: most votes, ties -> earliest block; no votes at all is an error."""
    if not any(counts):
        raise ValueError("cannot decide the personalized layer: no votes were cast")
    return max(range(len(counts)), key=lambda block: (counts[block], -block))
