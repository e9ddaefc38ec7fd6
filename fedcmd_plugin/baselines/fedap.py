"""FedAP (Lu et al., 2022): personalised aggregation weighted by how alike the clients' BatchNorm statistics are.

Pre-training: the first `fedap.pretrain_rounds` rounds are plain FedAvg. Then the global model stays the
pretrained one (the starting point of every client's personalised model). In its first round after pre-training
each client, before training, computes with that pretrained model (eval mode) the per-channel mean and variance of
the features entering each BatchNorm layer over all its training samples and uploads them once. The server's
distance between clients i and j is the sum over BN layers of the 2-Wasserstein distance between the diagonal
Gaussians of those statistics, and its weights W_ij are proportional to 1 / d_ij, scaled to 1 - momentum, with
W_ii = `fedap.model_momentum`. Each uploader gets w_i = sum_j W_ij theta_j over all non-BatchNorm entries; its
BatchNorm layers stay on the client (as in FedBN).

Choices: the statistics are the population mean and variance over all of a client's training samples (the
reference code pools per-batch unbiased variances); the pretrained model comes from FedAvg over the clients rather
than from a separate pooled pre-training set; W is computed over each round's uploaders (with every client in
every round, as in the paper's experiments, that is the paper's full matrix).
"""
from dataclasses import dataclass, replace

import torch

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.baselines.common import flatten_states, nested_states
from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.federation.messages import Settings
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.personalized.client import PersonalizedClient
from fedcmd_plugin.personalized.layers import BATCH_NORMS, bn_keys
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.registry import Algorithm, register_algorithm

STATISTICS = ("mean", "var")  # upload extras "mean/<layer>" and "var/<layer>"


def check_config(conf):
    """Pre-training must leave a personalised round (the section's own ranges are checked with the config)."""
    fedap = conf.fedap
    if not 1 <= fedap.pretrain_rounds < conf.server.rounds:
        raise ConfigError(f"config key 'fedap.pretrain_rounds' must be in 1..server.rounds - 1 (FedAvg pre-training, "
                          f"then at least one personalised round); got {fedap.pretrain_rounds!r} with server.rounds="
                          f"{conf.server.rounds}")


def fedap_model(conf, info):
    check_config(conf)
    model = classification_model(conf, info)
    if not batch_norm_layers(model):
        raise ConfigError(f"algorithm 'fedap' weighs clients by their BatchNorm statistics: config key 'model' must "
                          f"name a model with BatchNorm layers (lenet5_bn, cnn), got {conf.model!r}")
    return model


def batch_norm_layers(model):
    """Names of the model's BatchNorm modules, in model order."""
    return [name for name, module in model.named_modules() if isinstance(module, BATCH_NORMS)]


def batch_norm_statistics(model, layers, batches):
    """{"mean/<layer>", "var/<layer>": float32 tensors}: per channel, the mean and population variance of the
    features entering each BatchNorm layer in `layers` over every sample of `batches`, the model in eval mode."""
    modules = dict(model.named_modules())
    sums = {}

    def recorder(name):
        def record(module, inputs):
            x = inputs[0].detach().to(torch.float64)
            dims = [d for d in range(x.dim()) if d != 1]  # all but the channel dimension
            count, total, squares = sums.get(name, (0, 0.0, 0.0))
            sums[name] = (count + x.numel() // x.shape[1], total + x.sum(dims), squares + (x * x).sum(dims))
        return record

    handles = [modules[name].register_forward_pre_hook(recorder(name)) for name in layers]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    statistics = {}
    for name in layers:
        count, total, squares = sums[name]
        mean = total / count
        statistics[f"mean/{name}"] = mean.to(torch.float32)
        statistics[f"var/{name}"] = (squares / count - mean * mean).clamp_min(0.0).to(torch.float32)
    return statistics


@dataclass(frozen=True)
class FedAPSettings(Settings):
    phase: str  # pretrain (FedAvg) | personalised
    bn_statistics: tuple[str, ...] = ()  # BatchNorm layers whose statistics the client reports, before training

    def expected_extras(self, layout):
        extras, minimum = {}, {}
        for layer in self.bn_statistics:  # per-channel mean and variance (>= 0) of each layer asked for
            shape = layout[f"{layer}.running_mean"][1]
            extras[f"mean/{layer}"] = extras[f"var/{layer}"] = ("float32", shape)
            minimum[f"var/{layer}"] = 0.0
        return extras, minimum


class FedAPServer(PersonalizedServer):
    def setup(self, model, clients):
        self.batch_norm_keys = bn_keys(model)
        self.layers = batch_norm_layers(model)
        super().setup(model, clients)
        self.statistics = {}  # cid -> its uploaded BatchNorm statistics

    def pretraining(self):
        return self._current_round < self.conf.fedap.pretrain_rounds

    def personal_keys(self):
        return [] if self.pretraining() else self.batch_norm_keys

    def algorithm_settings(self):
        return FedAPSettings("pretrain" if self.pretraining() else "personalised")

    def training_dispatch(self, cid, dispatch):
        """After pre-training, a client that has not reported its statistics is asked for them."""
        dispatch = super().training_dispatch(cid, dispatch)
        if not self.pretraining() and cid not in self.statistics:
            dispatch.algorithm = replace(dispatch.algorithm, bn_statistics=tuple(self.layers))
        return dispatch

    def client_statistics(self, cid):
        """[(mean, var)] per BatchNorm layer of client `cid`."""
        stats = self.statistics[cid]
        return [(stats[f"mean/{layer}"], stats[f"var/{layer}"]) for layer in self.layers]

    def aggregate(self, uploads):
        if self.pretraining():
            return super().aggregate(uploads)
        for upload in uploads:
            if upload.cid not in self.statistics:
                self.statistics[upload.cid] = {f"{kind}/{layer}": upload.extra[f"{kind}/{layer}"].clone()
                                               for kind in STATISTICS for layer in self.layers}
        if not uploads:
            return
        stats = [self.client_statistics(u.cid) for u in uploads]
        distances = [[agg.gaussian_wasserstein(a, b) for b in stats] for a in stats]
        weights = agg.fedap_weights(distances, self.conf.fedap.model_momentum)
        shared = [key for key in self.state_keys if key not in set(self.batch_norm_keys)]
        for upload, state in zip(uploads, agg.personalised_aggregates([u.state for u in uploads], weights, shared)):
            self.client_states.setdefault(upload.cid, {}).update(state)

    def algorithm_state(self):
        """The clients' statistics and their personalised aggregates (the global model is the pretrained one)."""
        return {"statistics": flatten_states(self.statistics), "client_states": flatten_states(self.client_states)}

    def load_algorithm_state(self, state):
        self.statistics = nested_states(state["statistics"], self.client_order)
        self.client_states = nested_states(state["client_states"], self.client_order)


class FedAPClient(PersonalizedClient):
    settings_type = FedAPSettings

    def pre_train(self):
        """When asked, the BatchNorm statistics of the model as received (the pretrained one), before training."""
        layers = list(self.dispatch.algorithm.bn_statistics)
        self.statistics = batch_norm_statistics(
            self.model, layers, self.train_data.batches(self.cid, self.conf.test_batch_size, None, self.device)) \
            if layers else {}

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        upload.extra.update(self.statistics)
        return upload


register_algorithm(Algorithm("fedap", FedAPServer, FedAPClient, fedap_model,
                             "FedAP: FedAvg pre-training, then aggregation weighted by BatchNorm-statistics "
                             "similarity with local BatchNorm layers"))
