"""FedCMD's client: during selection it scores every block on a few batches per epoch (from the activations of
the training forward pass itself) and votes by the server's rule; afterwards it keeps the chosen layer and
reports that layer's update so the server can weigh clients by similarity."""
import torch.nn.functional as F

from fedcmd_plugin.fedcmd import selection
from fedcmd_plugin.federation.seeding import client_generator
from fedcmd_plugin.personalized.client import PersonalizedClient


class FedCMDClient(PersonalizedClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scoring = False  # only local training in the selection phase scores blocks (not fine-tuning)

    def pre_train(self):
        self.batch_scores = []
        meta = self.dispatch.meta
        self.scoring = bool(meta.get("score"))
        if self.scoring:
            self.score_generator = client_generator(meta, self.cid, "layer-scores")

    def train_batch(self, x, y, epoch, batch_index):
        meta = self.dispatch.meta
        if not self.scoring or batch_index >= meta["score_batches"]:
            return super().train_batch(x, y, epoch, batch_index)
        logits, outputs = self.model(x, return_blocks=True)
        self.batch_scores.append(selection.block_scores(x, y, outputs, logits.shape[1], meta["max_values"],
                                                        self.score_generator))
        return F.cross_entropy(logits, y)

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        if self.batch_scores:
            meta = dispatch.meta
            rule = selection.Rule(meta["distance"], tuple(meta["candidates"]), meta.get("preferred"))
            upload.meta["vote"] = rule.vote(self.batch_scores)
            upload.meta["batch_scores"] = {name: [s[name].tolist() for s in self.batch_scores]
                                           for name in selection.DISTANCES}
        self.scoring = False
        return upload
