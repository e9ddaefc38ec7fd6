"""FedProx (Li et al. 2020): FedAvg whose clients minimise loss + mu/2 ||w - w_global||^2, the proximal term
keeping local models near the global model they started from (fedprox.mu; 0 gives FedAvg's clients)."""
from fedcmd_plugin.baselines.common import RegularisedClient, parameters_of
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm


class FedProxServer(FederatedServer):
    def round_meta(self):
        return {"fedprox": {"mu": float(self.conf.fedprox.mu)}}


class FedProxClient(RegularisedClient):
    def train(self, conf, device="cpu"):
        with self.regularised(self.dispatch.meta["fedprox"]["mu"], parameters_of(self.model)):
            super().train(conf, device)


register_algorithm(Algorithm("fedprox", FedProxServer, FedProxClient, classification_model,
                             "FedProx: FedAvg with a proximal term towards the global model"))
