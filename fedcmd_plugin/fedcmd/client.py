"""FedCMD's client: during selection it scores every block on a few batches per epoch (from the activations of
the training forward pass itself) and votes by the server's rule; afterwards it keeps the chosen layer and
reports that layer's update so the server can weigh clients by similarity."""
from dataclasses import dataclass

import torch.nn.functional as F

from fedcmd_plugin.fedcmd import selection
from fedcmd_plugin.federation.messages import Settings
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


class FedCMDClient(PersonalizedClient):
    settings_type = FedCMDSettings

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
            upload.meta["vote"] = rule.vote(self.batch_scores)
            upload.meta["batch_scores"] = {name: [s[name].tolist() for s in self.batch_scores]
                                           for name in selection.DISTANCES}
        self.scoring = None
        return upload
