"""FedCMD's personalized-layer selection: score blocks by Wasserstein distances, vote, tally and decide.

A block's score is |d_x(l) - d_y(l)| with d_x(l) = |W(P_l, P_x) - W(P_{l-1}, P_x)| and d_y likewise for the
labels (P_0 = P_x): the block whose move towards the labels best matches its move away from the input gets the
lowest score. W is exact 1-D optimal transport (``exact``), or the distance between the two distributions' means
(``mean``, the shortcut the reference code takes, which ignores their spread). Every tie (between blocks or
between votes) goes to the earliest block unless a rule prefers a block, so all clients and the server break
ties the same way without sharing any randomness.
"""
from collections import Counter
from dataclasses import dataclass

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


DISTANCES = ("exact", "mean")
TIE_TOLERANCE = 1e-12  # scores closer than this are a tie (the mean distance gives exact zeros up to rounding)


def _mean_distance(p, q):
    return abs(float(p.mean()) - float(q.mean()))


def block_scores(x, y, block_outputs, num_classes, max_values=1024, generator=None):
    """{distance: |d_x(l) - d_y(l)| for every block l} from one batch's input `x`, labels `y` and block outputs.

    Both distances are computed from the same subsampled values, so they can be compared on one run.
    """
    import ot  # imported here: loading POT takes seconds and only the selection phase needs it

    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    p_x = normalised_sample(x, max_values, generator)
    p_y = _sample(y, max_values, generator) / (num_classes - 1)
    measures = {"exact": ot.wasserstein_1d, "mean": _mean_distance}
    scores = {}
    outputs = [normalised_sample(output, max_values, generator) for output in block_outputs]
    for name, distance in measures.items():
        to_x = [0.0] + [distance(p_l, p_x) for p_l in outputs]  # W(P_0, P_x) = 0 with P_0 = P_x
        to_y = [distance(p_x, p_y)] + [distance(p_l, p_y) for p_l in outputs]
        d_x = np.abs(np.diff(np.asarray(to_x, dtype=np.float64)))
        d_y = np.abs(np.diff(np.asarray(to_y, dtype=np.float64)))
        scores[name] = np.abs(d_x - d_y)
    return scores


def choose_block(scores, candidates, preferred=None):
    """The candidate block index with the lowest score; ties go to `preferred` when it is among the lowest,
    else to the earliest block."""
    candidates = sorted(set(candidates))
    if not candidates:
        raise ValueError("no candidate blocks to choose from")
    if candidates[0] < 0 or candidates[-1] >= len(scores):
        raise ValueError(f"candidate blocks {candidates} out of range for {len(scores)} scores")
    best = min(candidates, key=lambda index: scores[index])
    if preferred in candidates and scores[preferred] <= scores[best] + TIE_TOLERANCE:
        return preferred
    return best


def tied_at_minimum(scores, candidates):
    """Whether two or more candidate blocks share the lowest score (within TIE_TOLERANCE)."""
    lowest = min(scores[i] for i in candidates)
    return sum(1 for i in candidates if scores[i] <= lowest + TIE_TOLERANCE) > 1


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


@dataclass(frozen=True)
class Rule:
    """How a client turns its per-batch scores into a vote: which distance, which blocks, which tie preference."""
    distance: str
    candidates: tuple
    preferred: int = None

    def vote(self, batch_scores):
        """The round's vote from [{distance: scores}] of the scored batches."""
        return round_vote([choose_block(s[self.distance], self.candidates, self.preferred) for s in batch_scores])


def diagnostic_rules(block_names):
    """The rules worth comparing on one run (the selection phase trains the same whatever the rule):
    both distances x {every block, the reference's last three blocks} x {no preference, ties to the penultimate
    block}. For LeNet-5 the reference's rule is mean / fc1, fc2, classifier / ties to fc2."""
    n = len(block_names)
    sets = {"all": tuple(range(n)), "last3": tuple(range(max(0, n - 3), n))}
    preferences = {"earliest": None, f"prefer-{block_names[n - 2]}": n - 2} if n >= 2 else {"earliest": None}
    return {f"{distance}/{set_name}/{pref_name}": Rule(distance, blocks, pref)
            for distance in DISTANCES for set_name, blocks in sets.items()
            for pref_name, pref in preferences.items()}


def vote_margin(counts, block_names):
    """Winner, runner-up and the margin between them as a share of all votes (0 = a tie, 1 = unanimous)."""
    order = sorted(range(len(counts)), key=lambda b: (-counts[b], b))
    total = sum(counts)
    runner = order[1] if len(order) > 1 else None
    runner_votes = counts[runner] if runner is not None else 0
    return {"winner": block_names[order[0]], "winner_votes": counts[order[0]],
            "runner_up": block_names[runner] if runner is not None else None, "runner_up_votes": runner_votes,
            "total_votes": total, "margin": (counts[order[0]] - runner_votes) / total if total else 0.0}


def score_statistics(rows, block_names):
    """{block: {mean, std, n}} over score vectors `rows` (one per client and round)."""
    if not rows:
        return {}
    values = np.asarray(rows, dtype=np.float64)
    return {name: {"mean": float(values[:, i].mean()), "std": float(values[:, i].std()), "n": len(rows)}
            for i, name in enumerate(block_names)}
