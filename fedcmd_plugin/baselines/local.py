"""Local-only: every client trains its own model on its own data; nothing is aggregated."""
from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm


class LocalServer(FederatedServer):
    has_global_model = False

    def personal_keys(self):
        return list(self.initial_state)

    def aggregate(self, uploads):
        """Nothing is shared."""


register_algorithm(Algorithm("local", LocalServer, FederatedClient, classification_model,
                             "Local-only: each client trains alone (no aggregation)"))
