"""FedRep: each client first fits its own head on the received body, then updates the body with its head
fixed; the head stays local, the body is FedAvg-aggregated."""
from dataclasses import dataclass

from fedcmd_plugin.federation.messages import Settings
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.personalized.client import PersonalizedClient
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.registry import Algorithm, register_algorithm


@dataclass(frozen=True)
class FedRepSettings(Settings):
    body_epochs: int  # of the round's local epochs, those that train the body (the rest train the head)


class FedRepServer(PersonalizedServer):
    default_personal_blocks = ("classifier",)

    def algorithm_settings(self):
        return FedRepSettings(int(self.conf.personalization.body_epochs))


class FedRepClient(PersonalizedClient):
    settings_type = FedRepSettings

    def train(self, conf, device="cpu"):
        """Head epochs = local_epoch - body_epochs (at least one), then body epochs; same total passes as FedAvg."""
        self.model.train()
        head = self.personal_keys(self.dispatch)
        body_epochs = min(self.dispatch.algorithm.body_epochs, self.local_epochs(self.dispatch))
        head_epochs = max(1, self.local_epochs(self.dispatch) - body_epochs)
        self.run_epochs(self.make_optimizer(self.parameters_of(head)), head_epochs, "head")
        if body_epochs:
            self.run_epochs(self.make_optimizer(self.parameters_except(head)), body_epochs, "body")


register_algorithm(Algorithm("fedrep", FedRepServer, FedRepClient, classification_model,
                             "FedRep: local head trained first, shared body trained after"))
