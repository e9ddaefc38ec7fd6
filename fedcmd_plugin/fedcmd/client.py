"""FedCMD's client: during selection it scores every candidate block on a few batches per epoch (from the
activations of the training forward pass itself) and votes; afterwards it keeps the chosen layer and reports
that layer's update so the server can weigh clients by similarity."""
import numpy as np
import torch.nn.functional as F

from fedcmd_plugin.fedcmd import selection
from fedcmd_plugin.federation.seeding import client_generator
from fedcmd_plugin.personalized.client import PersonalizedClient


class FedCMDClient(PersonalizedClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scoring = False  # only local training in the selection phase scores blocks (not fine-tuning)

    def pre_train(self):
        self.choices, self.score_sum, self.scored = [], None, 0
        meta = self.dispatch.meta
        self.scoring = bool(meta.get("score"))
        if self.scoring:
            self.score_generator = client_generator(meta, self.cid, "layer-scores")

    def train_batch(self, x, y, epoch, batch_index):
        meta = self.dispatch.meta
        if not self.scoring or batch_index >= meta["score_batches"]:
            return super().train_batch(x, y, epoch, batch_index)
        logits, outputs = self.model(x, return_blocks=True)
        scores = selection.block_scores(x, y, outputs, logits.shape[1], meta["max_values"], self.score_generator)
        self.choices.append(selection.choose_block(scores, meta["candidates"]))
        self.score_sum = scores if self.score_sum is None else self.score_sum + scores
        self.scored += 1
        return F.cross_entropy(logits, y)

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        if self.choices:
            upload.meta["vote"] = selection.round_vote(self.choices)
            upload.meta["scores"] = np.asarray(self.score_sum / self.scored, dtype=float).tolist()
        self.scoring = False
        return upload
