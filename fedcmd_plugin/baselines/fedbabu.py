"""FedBABU: the head stays at its shared random initialisation during federated training (only the body is
trained and FedAvg-aggregated); each client fine-tunes before its personalised test (client.finetune_epoch)."""
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.personalized.client import PersonalizedClient
from fedcmd_plugin.registry import Algorithm, register_algorithm

HEAD_PREFIX = "blocks.classifier."


class FedBABUServer(FederatedServer):
    def finetune_epochs(self):
        """FedBABU's head is only useful after fine-tuning: at least one epoch before each test."""
        return max(1, self.conf.client.finetune_epoch)


class FedBABUClient(PersonalizedClient):
    def train(self, conf, device="cpu"):
        self.model.train()
        head = [name for name, _ in self.model.named_parameters() if name.startswith(HEAD_PREFIX)]
        self.run_epochs(self.make_optimizer(self.parameters_except(head)), self.local_epochs(self.dispatch), "body")


register_algorithm(Algorithm("fedbabu", FedBABUServer, FedBABUClient, classification_model,
                             "FedBABU: body-only federated training, fine-tuned before testing"))
