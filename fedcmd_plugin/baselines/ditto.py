"""Ditto (Li et al. 2021): every selected client trains the global model exactly as FedAvg does (and only that is
aggregated) and, beside it, its own model v (kept, never aggregated) on loss + lambda/2 ||v - w_global||^2 towards
the global model it received. Clients are tested, and checkpointed, with their own model.
Choices: v starts from the first global model the client receives (w^0 for clients of the first round, as in the
paper); a client that never trained is tested with the global model; ditto.personal_epochs null = the round's
local epochs (fewer for stragglers).
"""
from dataclasses import dataclass

from fedcmd_plugin.baselines.common import RegularisedClient, as_kept, parameters_of, personal_model
from fedcmd_plugin.federation.messages import Settings
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm


@dataclass(frozen=True)
class DittoSettings(Settings):
    pull: float  # ditto.lambda: the pull of the personal model towards the global one
    personal_epochs: int | None  # None: the round's local epochs


class DittoServer(FederatedServer):
    personal_models = True

    def algorithm_settings(self):
        ditto = self.conf.ditto
        return DittoSettings(float(ditto["lambda"]), ditto.personal_epochs)

    def client_own_state(self, cid, kept):
        """The client's personal model, whole ({} before it trained one: it then uses the global model)."""
        return personal_model(kept)


class DittoClient(RegularisedClient):
    settings_type = DittoSettings

    def train(self, conf, device="cpu"):
        """The personal model first (its own seeded batches), then the global model from what was received."""
        settings = self.dispatch.algorithm
        anchor = parameters_of(self.model)
        received = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        self.model.load_state_dict(personal_model(self.kept) or received)
        self.model.train()
        epochs = settings.personal_epochs or self.local_epochs(self.dispatch)
        with self.regularised(settings.pull, anchor):
            self.run_epochs(self.make_optimizer(self.model.parameters()), epochs, "personal")
        self.kept.update(as_kept(self.model.state_dict()))
        self.model.load_state_dict(received)
        super().train(conf, device)

    def load_personalised(self, dispatch):
        super().load_personalised(dispatch)
        own = personal_model(self.kept)
        if own:
            self.model.load_state_dict(own)


register_algorithm(Algorithm("ditto", DittoServer, DittoClient, classification_model,
                             "Ditto: FedAvg global model plus a regularised personal model per client"))
