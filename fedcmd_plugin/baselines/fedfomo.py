"""FedFomo (Zhang et al., ICLR 2021): each client federates only with the clients whose models help it.

The server keeps every client's latest trained model and an affinity matrix P (row i: how much client i gained
from each other client's model). A selected client receives M = `fedfomo.models_per_round` other clients' latest
models, chosen epsilon-greedily per slot: with probability epsilon_t = max(0, epsilon - epsilon_decay * round)
the next of a random order, else the next by affinity (ties in random order), seeded by (seed, round, client).
The client scores them on a validation split held out of its training data (`fedfomo.val_ratio`, seeded, the same
in every round), weighs model n by w_n = (L(own) - L(theta_n)) / ||theta_n - own||, steps
own <- own + sum_n max(0, w_n) / sum_m max(0, w_m) (theta_n - own) (keeping its own when no w_n is positive),
trains locally on the rest, and reports w; the server adds w_n / sum_m |w_m| to P[i, n].

Choices: the distance is Euclidean over every floating-point state entry (the reference code offers L1 and L2);
epsilon decays linearly per round as in the reference code (0.3, 0.05); P's increment is normalised by the sum of
|w| rather than by |sum w| (the reference's), which explodes when gains and losses cancel. Every client's model is
its own: there is no global model, a client that never trained holds the initial model. In round 1 no client has
a model yet, so everyone trains alone first.
"""
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.baselines.common import flatten_states, nested_states
from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.messages import Settings
from fedcmd_plugin.federation.seeding import derived_seed
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm


def exploration(epsilon, decay, round_index):
    """epsilon_t: the chance that a slot explores in round `round_index` (0-based)."""
    return max(0.0, epsilon - decay * round_index)


def choose_peers(affinity, candidates, count, epsilon, rng):
    """`count` of `candidates` (column indices of the affinity row `affinity`), slot by slot: with probability
    `epsilon` the next unchosen one of a random order, else the next unchosen one by affinity (ties in random
    order). All candidates when there are no more than `count`."""
    candidates = list(candidates)
    if len(candidates) <= count:
        return candidates
    ties = rng.random(len(candidates))
    ranked = sorted(range(len(candidates)), key=lambda k: (-float(affinity[candidates[k]]), ties[k]))
    shuffled = [int(k) for k in rng.permutation(len(candidates))]
    chosen = []
    for _ in range(count):
        order = shuffled if rng.random() < epsilon else ranked
        pick = order.pop(0)
        while pick in chosen:
            pick = order.pop(0)
        chosen.append(pick)
    return [candidates[k] for k in chosen]


def validation_count(samples, ratio):
    """Samples held out for validation: round(ratio * samples), at least 1 and leaving at least 1 to train on."""
    return 0 if samples < 2 else min(samples - 1, max(1, round(ratio * samples)))


@dataclass(frozen=True)
class FedFomoSettings(Settings):
    val_ratio: float  # the share of a client's training samples held out to score the downloaded models
    peers: tuple[str, ...] = ()  # whose models this dispatch carries (in `extra`, as "<peer>/<key>")

    def expected_extras(self, layout):
        return ({"fomo_weights": ("float32", (len(self.peers),))} if self.peers else {}), {}


class FedFomoServer(FederatedServer):
    has_global_model = False

    def setup(self, model, clients):
        super().setup(model, clients)
        self.place = {cid: i for i, cid in enumerate(self.client_order)}
        self.latest = {}  # cid -> the client's latest trained state
        self.affinity = torch.zeros(len(self.client_order), len(self.client_order), dtype=torch.float64)
        self.round_peers = {}

    def models_per_dispatch(self):
        """The client's own model, M others and the initial state on first contact."""
        return self.conf.fedfomo.models_per_round + 2

    def selection(self, clients=None, clients_per_round=None):
        """The round's clients and, for each, the other clients' models it receives (the same on every rank)."""
        selected = super().selection(clients, clients_per_round)
        self.round_peers = {cid: self.peers_for(cid) for cid in selected}
        return selected

    def peers_for(self, cid):
        fomo = self.conf.fedfomo
        rng = np.random.default_rng(derived_seed(self.conf.seed, self._current_round, cid, "fedfomo"))
        candidates = [self.place[other] for other in self.client_order if other != cid and other in self.latest]
        epsilon = exploration(fomo.epsilon, fomo.epsilon_decay, self._current_round)
        chosen = choose_peers(self.affinity[self.place[cid]], candidates, fomo.models_per_round, epsilon, rng)
        return [self.client_order[k] for k in chosen]

    def algorithm_settings(self):
        return FedFomoSettings(float(self.conf.fedfomo.val_ratio))

    def own_state(self, cid):
        """The client's own latest model (the shared initial model before it first trains)."""
        return dict(self.latest.get(cid, {}))

    def training_dispatch(self, cid, dispatch):
        peers = self.round_peers.get(cid, [])
        dispatch.algorithm = replace(dispatch.algorithm, peers=tuple(peers))
        dispatch.extra = {f"{peer}/{key}": tensor for peer in peers for key, tensor in self.latest[peer].items()
                          if tensor.is_floating_point()}
        return dispatch

    def aggregate(self, uploads):
        """Nothing is averaged: each upload becomes its client's latest model, its weights go into P."""
        for upload in uploads:
            peers = self.round_peers.get(upload.cid, [])
            if peers:
                columns = [self.place[peer] for peer in peers]
                self.affinity[self.place[upload.cid], columns] += agg.affinity_increment(upload.extra["fomo_weights"])
            self.latest[upload.cid] = {key: value.detach().clone() for key, value in upload.state.items()}

    def algorithm_state(self):
        return {"affinity": self.affinity.clone(), "affinity_clients": list(self.client_order),
                "latest": flatten_states(self.latest)}

    def load_algorithm_state(self, state):
        if list(state["affinity_clients"]) != list(self.client_order):
            raise PluginError("the saved FedFomo affinity matrix belongs to another set of clients")
        self.affinity = state["affinity"].to(torch.float64).clone()
        self.latest = nested_states(state["latest"], self.client_order)


class FedFomoClient(FederatedClient):
    settings_type = FedFomoSettings

    def validation_split(self):
        """(training, validation) sample indices: a hold-out seeded by (seed, client) alone, the same every round."""
        samples = self.train_data.size(self.cid)
        held = validation_count(samples, self.dispatch.algorithm.val_ratio)
        generator = torch.Generator().manual_seed(derived_seed(self.dispatch.settings.seed, self.cid,
                                                               "fedfomo-validation"))
        order = torch.randperm(samples, generator=generator)
        return order[held:].sort().values, order[:held].sort().values

    def training_batches(self, generator, min_last):
        training, _ = self.validation_split()
        return self.train_data.batches(self.cid, self.conf.batch_size, generator, self.device, min_last, training)

    def validation_loss(self, indices):
        """Mean cross-entropy of the current model on the validation samples."""
        self.model.eval()
        loss = 0.0
        with torch.no_grad():
            for x, y in self.train_data.batches(self.cid, self.conf.test_batch_size, None, self.device,
                                                indices=indices):
                loss += F.cross_entropy(self.model(x), y, reduction="sum").item()
        return loss / len(indices)

    def pre_train(self):
        """Step towards the downloaded models that lower the validation loss (FedFomo's federated update)."""
        peers = list(self.dispatch.algorithm.peers)
        self.fomo_weights = torch.zeros(len(peers))
        _, validation = self.validation_split()
        if not peers or not len(validation):
            return
        own = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        keys = [key for key, value in own.items() if value.is_floating_point()]
        models = [{key: self.dispatch.extra[f"{peer}/{key}"].to(self.device) for key in keys} for peer in peers]
        own_loss = self.validation_loss(validation)
        losses = []
        for state in models:
            self.model.load_state_dict({**own, **state})
            losses.append(self.validation_loss(validation))
        distances = [agg.state_distance(state, own, keys) for state in models]
        weights = agg.fomo_weights(own_loss, losses, distances)
        self.model.load_state_dict({**own, **agg.fomo_update(own, models, agg.fomo_mixing(weights), keys)})
        self.fomo_weights = weights.to(torch.float32)

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        if dispatch.algorithm.peers:
            upload.extra["fomo_weights"] = self.fomo_weights
        return upload


register_algorithm(Algorithm("fedfomo", FedFomoServer, FedFomoClient, classification_model,
                             "FedFomo: each client steps towards the other clients' models that lower its "
                             "validation loss"))
