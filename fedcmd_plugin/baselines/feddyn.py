"""FedDyn (Acar et al. 2021, Algorithm 1): dynamic regularisation, so that the clients' local optima agree with
the global one.

Client k (kept: its linear-term state g_k, zero at first) minimises L_k(w) - <g_k, w> + alpha/2 ||w - w_server||^2
from the server model w_server, then sets g_k <- g_k - alpha (w_k - w_server). The server keeps h (zero at first):
h <- h - alpha/m sum_k (w_k - w_server) over the round's clients, m = every client of the federation, and
w_server <- mean_k w_k - h / alpha.
Choices: the mean is the paper's plain mean over the round's clients (server.aggregation_strategy is not used);
the regulariser and h cover the model's parameters, while buffers (BatchNorm statistics) are plainly averaged;
the local problem is solved inexactly by the configured local epochs of SGD, as in the paper's experiments.
"""
from dataclasses import dataclass

import torch

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.baselines.common import RegularisedClient, parameters_of
from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation.messages import Settings
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm

GRADIENT = "feddyn.gradient."  # kept-state names of a client's linear-term state, one per parameter


@dataclass(frozen=True)
class FedDynSettings(Settings):
    alpha: float  # weight of the dynamic regulariser


class FedDynServer(FederatedServer):
    def setup(self, model, clients):
        self.h = {name: torch.zeros_like(p.detach()) for name, p in model.named_parameters()}
        super().setup(model, clients)

    def alpha(self):
        return float(self.conf.feddyn.alpha)

    def algorithm_settings(self):
        return FedDynSettings(self.alpha())

    def aggregate(self, uploads):
        if not uploads:
            return
        state = self._model.state_dict()
        states = [u.state for u in uploads]
        buffers = [key for key in state if key not in self.h]
        state.update(agg.weighted_average(states, [1.0] * len(states), buffers))
        self.h, theta = agg.feddyn_server_step(self.h, state, states, self.alpha(), len(self.client_order))
        state.update(theta)
        self._model.load_state_dict(state)

    def algorithm_state(self):
        return {"h": {name: value.detach().cpu().clone() for name, value in self.h.items()}}

    def load_algorithm_state(self, state):
        """Called after setup, like the model's state on resume."""
        h = state["h"]
        if set(h) != set(self.h) or any(h[k].shape != self.h[k].shape for k in h):
            raise PluginError("the saved FedDyn state h does not match the model's parameters")
        self.h = {name: h[name].to(self.h[name]).clone() for name in self.h}


class FedDynClient(RegularisedClient):
    settings_type = FedDynSettings

    def train(self, conf, device="cpu"):
        alpha = self.dispatch.algorithm.alpha
        server = parameters_of(self.model)
        gradient = {name: self.kept.get(GRADIENT + name, torch.zeros_like(value)) for name, value in server.items()}
        with self.regularised(alpha, server, gradient):
            super().train(conf, device)
        updated = agg.feddyn_gradient_state(gradient, parameters_of(self.model), server, alpha)
        self.kept.update({GRADIENT + name: value for name, value in updated.items()})


register_algorithm(Algorithm("feddyn", FedDynServer, FedDynClient, classification_model,
                             "FedDyn: dynamic regularisation of the local objectives"))
