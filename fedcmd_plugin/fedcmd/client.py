"""FedCMD's client: during selection it scores every block on a few batches per epoch (from the activations of
the training forward pass itself) and votes by the server's rule; afterwards it keeps the chosen layer and
reports that layer's update so the server can weigh clients by similarity."""
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F

from fedcmd_plugin.fedcmd import selection
from fedcmd_plugin.federation.messages import Report, Settings
from fedcmd_plugin.federation.seeding import client_generator
from fedcmd_plugin.personalized.client import PersonalizedClient, SignatureSettings


@dataclass(frozen=True)
class Scoring(Settings):
    """How a client scores the blocks and votes during the selection phase (`selection.Rule` and its sampling)."""
    distance: str
    candidates: tuple[int, ...]
    preferred: int | None
    max_values: int
    score_batches: int


@dataclass(frozen=True)
class FedCMDSettings(SignatureSettings):
    """phase selection (with `scoring` while the layer is not chosen yet) or decoupled (the chosen layer's
    update as the signature)."""
    scoring: Scoring | None = None

    def vote_candidates(self):
        return None if self.scoring is None else self.scoring.candidates


@dataclass(frozen=True)
class BatchScores(Report):
    """Each scored batch's score of every block under each distance (the fields are `selection.DISTANCES`)."""
    exact: tuple[tuple[float, ...], ...]
    mean: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, batch_scores):
        """From [{distance: one score per block}] of the scored batches."""
        return cls(**{name: tuple(tuple(s[name].tolist()) for s in batch_scores) for name in selection.DISTANCES})

    def batches(self):
        """[{distance: array of one score per block}] of the scored batches, as `selection.Rule.vote` reads them."""
        per_distance = {name: getattr(self, name) for name in selection.DISTANCES}
        count = len(per_distance[selection.DISTANCES[0]])
        return [{name: np.asarray(rows[b]) for name, rows in per_distance.items()} for b in range(count)]


@dataclass(frozen=True)
class FedCMDReport(Report):
    """A selection-phase client's vote (a block index) and the scores it voted from; no report otherwise."""
    vote: int
    batch_scores: BatchScores

    def mismatch(self, candidates, blocks):
        """A vote only when the request asked for one, for a candidate, with the scores it was made from."""
        if candidates is None:
            return "the upload votes although the request asked for no vote"
        if self.vote not in candidates:
            return f"vote {self.vote!r} is not one of the candidate blocks {list(candidates)}"
        scored = [getattr(self.batch_scores, distance) for distance in selection.DISTANCES]
        if not scored[0] or len({len(batches) for batches in scored}) != 1 or \
                any(len(batch) != blocks for batches in scored for batch in batches):
            return (f"batch_scores must hold the same scored batches of {blocks} scores (one per block) for each "
                    f"of {', '.join(selection.DISTANCES)}")
        return None


class FedCMDClient(PersonalizedClient):
    settings_type = FedCMDSettings
    report_type = FedCMDReport

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scoring = None  # the Scoring of the round's local training (never of fine-tuning)

    def pre_train(self):
        self.batch_scores = []
        self.scoring = self.dispatch.algorithm.scoring
        if self.scoring:
            self.score_generator = client_generator(self.dispatch.settings, self.cid, "layer-scores")

    def train_batch(self, x, y, epoch, batch_index):
        if not self.scoring or batch_index >= self.scoring.score_batches:
            return super().train_batch(x, y, epoch, batch_index)
        logits, outputs = self.model(x, return_blocks=True)
        self.batch_scores.append(selection.block_scores(x, y, outputs, logits.shape[1], self.scoring.max_values,
                                                        self.score_generator))
        return F.cross_entropy(logits, y)

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        if self.batch_scores:
            scoring = dispatch.algorithm.scoring
            rule = selection.Rule(scoring.distance, scoring.candidates, scoring.preferred)
            upload.algorithm = FedCMDReport(rule.vote(self.batch_scores), BatchScores.of(self.batch_scores))
        self.scoring = None
        return upload
