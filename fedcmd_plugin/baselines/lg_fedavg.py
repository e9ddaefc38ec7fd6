"""LG-FedAvg: local representation layers stay on each client; only the top (classifier) is shared."""
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.personalized.client import PersonalizedClient
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.registry import Algorithm, register_algorithm


class LGFedAvgServer(PersonalizedServer):
    def personal_blocks(self):
        body = [b for b in self.block_names if b != "classifier"]
        return self.configured_blocks("personalization.personal_blocks", self.conf.personalization.personal_blocks,
                                      body)


register_algorithm(Algorithm("lg_fedavg", LGFedAvgServer, PersonalizedClient, classification_model,
                             "LG-FedAvg: local body layers, global classifier"))
