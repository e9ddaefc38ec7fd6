"""FedBN: BatchNorm parameters and statistics stay on each client; everything else is FedAvg-aggregated.
Use a model with BatchNorm (lenet5_bn or cnn); on a model without it FedBN is FedAvg."""
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.personalized.client import PersonalizedClient
from fedcmd_plugin.personalized.layers import bn_keys
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.registry import Algorithm, register_algorithm


class FedBNServer(PersonalizedServer):
    def setup(self, model, clients):
        self.batch_norm_keys = bn_keys(model)
        super().setup(model, clients)

    def personal_keys(self):
        return self.batch_norm_keys


register_algorithm(Algorithm("fedbn", FedBNServer, PersonalizedClient, classification_model,
                             "FedBN: local BatchNorm layers, FedAvg elsewhere"))
