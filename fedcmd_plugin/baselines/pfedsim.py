"""pFedSim: after FedAvg warm-up rounds, each client keeps its classifier head and receives a body aggregated
with weights from the similarity of the clients' classifiers (the head is the signature, not sent back)."""
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.personalized.client import PersonalizedClient, SignatureSettings
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.registry import Algorithm, register_algorithm


class PFedSimServer(PersonalizedServer):
    def warming_up(self):
        return self._current_round < self.conf.personalization.warmup_rounds

    def personal_blocks(self):
        return [] if self.warming_up() else super().personal_blocks()

    def algorithm_settings(self):
        if self.warming_up():
            return SignatureSettings("warmup")
        return SignatureSettings("personalised", "value", tuple(self.personal_keys()))

    def aggregate(self, uploads):
        if self.warming_up():
            return super().aggregate(uploads)
        body = [k for k in self.state_keys if k not in set(self.personal_keys())]
        self.aggregate_by_similarity(uploads, body, [u.extra["signature"] for u in uploads])


class PFedSimClient(PersonalizedClient):
    settings_type = SignatureSettings


register_algorithm(Algorithm("pfedsim", PFedSimServer, PFedSimClient, classification_model,
                             "pFedSim: personal head, body aggregated by classifier similarity"))
