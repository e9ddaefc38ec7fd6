"""FedPer: the classifier head stays on each client; the body is FedAvg-aggregated."""
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.personalized.client import PersonalizedClient
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.registry import Algorithm, register_algorithm


class FedPerServer(PersonalizedServer):
    default_personal_blocks = ("classifier",)


register_algorithm(Algorithm("fedper", FedPerServer, PersonalizedClient, classification_model,
                             "FedPer: personal classifier head, FedAvg body"))
