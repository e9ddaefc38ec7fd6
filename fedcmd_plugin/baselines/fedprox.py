"""FedProx (Li et al. 2020): FedAvg whose clients minimise loss + mu/2 ||w - w_global||^2, the proximal term
keeping local models near the global model they started from (fedprox.mu; 0 gives FedAvg's clients)."""
from dataclasses import dataclass

from fedcmd_plugin.baselines.common import RegularisedClient, parameters_of
from fedcmd_plugin.federation.messages import Settings
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm


@dataclass(frozen=True)
class FedProxSettings(Settings):
    mu: float  # weight of the proximal term mu/2 ||w - w_global||^2


class FedProxServer(FederatedServer):
    def algorithm_settings(self):
        return FedProxSettings(float(self.conf.fedprox.mu))


class FedProxClient(RegularisedClient):
    settings_type = FedProxSettings

    def train(self, conf, device="cpu"):
        with self.regularised(self.dispatch.algorithm.mu, parameters_of(self.model)):
            super().train(conf, device)


register_algorithm(Algorithm("fedprox", FedProxServer, FedProxClient, classification_model,
                             "FedProx: FedAvg with a proximal term towards the global model"))
