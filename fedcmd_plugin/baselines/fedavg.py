"""FedAvg: EasyFL's own behaviour (sample-weighted average of the whole model) on the plugin's round."""
from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm


class FedAvgServer(FederatedServer):
    """The base round already is FedAvg."""


class FedAvgClient(FederatedClient):
    """The base client already trains the whole model."""


register_algorithm(Algorithm("fedavg", FedAvgServer, FedAvgClient, classification_model,
                             "FedAvg: one global model, sample-weighted averaging"))
