"""Server machinery shared by the personalised algorithms: block-based key sets, per-client server state and
similarity-weighted per-client aggregation."""
import torch

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.personalized.layers import keys_of_blocks
from fedcmd_plugin.personalized.similarity import SimilarityMemory
from fedcmd_plugin.tracking import plots


HEATMAP_CLIENTS = 100  # the similarity heat map shows at most this many clients (those with most partners)


class PersonalizedServer(FederatedServer):
    has_global_model = False
    default_personal_blocks = ("classifier",)

    def setup(self, model, clients):
        if not hasattr(model, "block_names"):
            raise ConfigError(f"algorithm {self.conf.algorithm!r} needs a model made of named blocks "
                              f"(lenet5, lenet5_bn, cnn, mlp); config key 'model' is {self.conf.model!r}")
        self.block_names = list(model.block_names)
        self.block_of = model.block_of
        self.state_keys = list(model.state_dict())
        self.client_states = {}  # cid -> the keys the server aggregated for that client alone
        super().setup(model, clients)
        self.similarity = SimilarityMemory()

    def algorithm_state(self):
        return {**super().algorithm_state(), "client_states": self.client_states,
                "similarity": self.similarity.state()}

    def load_algorithm_state(self, state):
        super().load_algorithm_state(state)
        self.client_states = state["client_states"]
        self.similarity.load_state(state["similarity"])

    # ----- key sets ----------------------------------------------------------------------------------------------
    def keys_of(self, blocks):
        return keys_of_blocks(self.state_keys, self.block_of, blocks)

    def configured_blocks(self, key, value, default):
        blocks = list(default if value is None else value)
        unknown = [b for b in blocks if b not in self.block_names]
        if unknown:
            raise ConfigError(f"config key '{key}' names unknown blocks {unknown}; the model's blocks are "
                              f"{', '.join(self.block_names)}")
        return blocks

    def personal_blocks(self):
        return self.configured_blocks("personalization.personal_blocks", self.conf.personalization.personal_blocks,
                                      self.default_personal_blocks)

    def personal_keys(self):
        return self.keys_of(self.personal_blocks())

    # ----- dispatch and aggregation ----------------------------------------------------------------------------
    def own_state(self, cid):
        return dict(self.client_states.get(cid, {}))

    def aggregate_by_similarity(self, uploads, keys, signatures):
        """Each uploading client i gets w_i = sum_j Phi_ij w_j / sum_j Phi_ij over `keys`, with Phi the clipped
        cosine similarity of the clients' signature vectors; the global copy of `keys` gets plain FedAvg."""
        if not keys or not uploads:
            return
        phi = agg.similarity_matrix(torch.stack([s.reshape(-1) for s in signatures]))
        weights = agg.normalise_rows(phi, self.conf.personalization.similarity_norm)
        mixed = agg.personalised_aggregates([u.state for u in uploads], weights, keys)
        for upload, state in zip(uploads, mixed):
            self.client_states.setdefault(upload.cid, {}).update(state)
        self.update_global(uploads, keys)
        self.record_similarity(uploads, phi)

    def record_similarity(self, uploads, phi):
        self.similarity.record([u.cid for u in uploads], phi.double().cpu().tolist())
        self.recorder.image("similarity/round", phi.double().clamp(0, 1).cpu().numpy(), self._current_round)

    def finish(self):
        if len(self.similarity):
            output = self.conf.output
            document = {"clients": len(self.client_order), **self.similarity.summary(self.client_order,
                                                                                   output.similarity_top_k)}
            if output.full_similarity:
                document["matrix"] = {"clients": self.client_order,
                                      "values": self.similarity.dense(self.client_order).round(4).tolist()}
            self.recorder.write_json("similarity.json", document)
            path = self.recorder.plot_path("similarity")
            if path:
                shown = self.similarity.busiest(self.client_order, HEATMAP_CLIENTS)
                plots.matrix(self.similarity.dense(shown), shown, path,
                             f"client similarity (latest value of each pair; {len(shown)} clients with most partners)")
        super().finish()
