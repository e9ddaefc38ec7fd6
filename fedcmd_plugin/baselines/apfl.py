"""APFL (Deng et al. 2020): each client keeps a local model v and a mixing weight alpha (kept, never aggregated)
and is tested with the mixed model alpha v + (1 - alpha) w, w being the global model, which is FedAvg-aggregated.

Per batch, as in the paper's updates: w takes a step on its own loss (FedAvg's local training); v takes a step on
the mixed model's loss (gradient alpha * grad f(mixed)); with apfl.adaptive, alpha takes a step of apfl.alpha_lr on
the mixed model's loss too (gradient <v - w, grad f(mixed)>) and is clipped to [0, 1].
Choices: v starts from the first global model the client receives and alpha from apfl.alpha; the mixed model
takes v's buffers (BatchNorm statistics), which are the ones updated while it trains; the mixed model tested and
checkpointed uses the latest global w; a client that never trained is tested with the global model; the round's
train_loss is the sum of the two losses the batch minimises.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.baselines.common import as_kept, personal_model
from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.messages import Report, Settings
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm

ALPHA = "apfl.alpha"  # kept-state name of a client's mixing weight (a 0-dim tensor)


def parameter_names(model):
    return [name for name, _ in model.named_parameters()]


def mixed_model(shared, kept, parameters):
    """The state of alpha v + (1 - alpha) w over `parameters` (names), with v's buffers; `shared` is w's state."""
    personal = personal_model(kept)
    return {**personal, **agg.mixture(personal, shared, kept[ALPHA], parameters)}


@dataclass(frozen=True)
class APFLSettings(Settings):
    alpha: float  # the initial mixing weight of the personal model
    adaptive: bool  # whether each client learns its alpha
    alpha_lr: float  # the step of alpha's gradient descent


@dataclass(frozen=True)
class APFLReport(Report):
    alpha: float  # the client's mixing weight after the round


class APFLServer(FederatedServer):
    personal_models = True

    def setup(self, model, clients):
        self.parameter_keys = parameter_names(model)
        super().setup(model, clients)

    def algorithm_settings(self):
        apfl = self.conf.apfl
        step = self.conf.client.optimizer.lr if apfl.alpha_lr is None else apfl.alpha_lr
        return APFLSettings(float(apfl.alpha), bool(apfl.adaptive), float(step))

    def client_own_state(self, cid, kept):
        """The model it is tested with, alpha v + (1 - alpha) w, whole ({} before it trained: the global model)."""
        return mixed_model(self.shared_state(), kept, self.parameter_keys) if personal_model(kept) else {}

    def post_train(self):
        super().post_train()
        alphas = [u.algorithm.alpha for u in self.round_uploads if u.algorithm is not None]
        if alphas:
            self.recorder.log_round(self._current_round, {"alpha_mean": float(np.mean(alphas))})


class APFLClient(FederatedClient):
    settings_type = APFLSettings
    report_type = APFLReport
    personal = None  # v's tensors while the client trains

    def train(self, conf, device="cpu"):
        settings = self.dispatch.algorithm
        self.parameter_keys = parameter_names(self.model)
        received = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        start = personal_model(self.kept) or received
        self.personal = {key: value.detach().clone().requires_grad_(key in self.parameter_keys)
                         for key, value in start.items()}
        alpha = self.kept.get(ALPHA, torch.tensor(settings.alpha, device=self.device))
        self.alpha = alpha.detach().clone().requires_grad_(settings.adaptive)
        groups = [{"params": list(self.model.parameters())}, {"params": [self.personal[k] for k in self.parameter_keys]}]
        if settings.adaptive:
            groups.append({"params": [self.alpha], "lr": settings.alpha_lr, "momentum": 0.0, "weight_decay": 0.0})
        self.model.train()
        try:
            self.run_epochs(self.make_optimizer(groups), self.local_epochs(self.dispatch), "train")
            self.kept.update(as_kept(self.personal))
            self.kept[ALPHA] = self.alpha.detach().clamp(0.0, 1.0)
        finally:
            self.personal = None

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        upload.algorithm = APFLReport(float(self.kept[ALPHA]))
        return upload

    def train_batch(self, x, y, epoch, batch_index):
        """w's own loss plus the mixed model's, in which w is detached: w learns from its own loss only."""
        own = super().train_batch(x, y, epoch, batch_index)
        if self.personal is None:  # fine-tuning before a test: the plain loss
            return own
        with torch.no_grad():
            self.alpha.clamp_(0.0, 1.0)
        shared = {name: p.detach() for name, p in self.model.named_parameters()}
        mixed = {**self.personal, **agg.mixture(self.personal, shared, self.alpha, self.parameter_keys)}
        return own + F.cross_entropy(functional_call(self.model, mixed, (x,)), y)

    def load_personalised(self, dispatch):
        super().load_personalised(dispatch)
        if ALPHA in self.kept:
            self.model.load_state_dict(mixed_model(self.model.state_dict(), self.kept, parameter_names(self.model)))


register_algorithm(Algorithm("apfl", APFLServer, APFLClient, classification_model,
                             "APFL: each client mixes its local model with the global one, alpha learned"))
