"""FedDyn: the client's linear-term state and the server's h follow Acar et al. (2021), Algorithm 1, checked
against values written out by hand."""
import pytest
import torch
from baseline_helpers import (LR, assert_states_close, batches, cross_entropy_gradient, dispatch, linear_state,
                              make_client)
from torch import nn

from fedcmd_plugin import load_config
from fedcmd_plugin.baselines.feddyn import GRADIENT, FedDynClient, FedDynServer, FedDynSettings
from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation.messages import Upload


def test_client_minimises_the_dynamic_objective_and_updates_its_gradient_state():
    data, server, alpha = batches(3), linear_state(0), 0.5
    linear = linear_state(7)  # the state a previous round left
    client = make_client(FedDynClient, data)
    client.kept = {GRADIENT + key: value.clone() for key, value in linear.items()}
    upload = client.run_round(dispatch(server, FedDynSettings(alpha)))
    w = dict(server)
    for x, y in data:  # gradient of L(w) - <g, w> + alpha/2 ||w - w_server||^2
        gradient = cross_entropy_gradient(w, x, y)
        w = {k: w[k] - LR * (gradient[k] - linear[k] + alpha * (w[k] - server[k])) for k in w}
    assert_states_close(upload.state, w)
    expected = {GRADIENT + k: linear[k] - alpha * (w[k] - server[k]) for k in w}
    assert_states_close(client.kept, expected)
    assert_states_close(upload.kept, expected)  # synced to replicas, never part of the model


def server_with(weight, bias, alpha=0.5, clients=4):
    server = FedDynServer(load_config(None, ["algorithm=feddyn", f"feddyn.alpha={alpha}"]))
    server._model = nn.Linear(1, 1)
    server._model.load_state_dict({"weight": torch.tensor([[weight]]), "bias": torch.tensor([bias])})
    server.h = {"weight": torch.zeros(1, 1), "bias": torch.zeros(1)}
    server.client_order = [f"c{i}" for i in range(clients)]
    return server


def uploads(*pairs):
    return [Upload(f"c{i}", 10 * (i + 1), {"weight": torch.tensor([[w]]), "bias": torch.tensor([b])})
            for i, (w, b) in enumerate(pairs)]


def model_values(server):
    state = server._model.state_dict()
    return state["weight"].item(), state["bias"].item()


def test_server_keeps_h_and_corrects_the_plain_mean():
    server = server_with(1.0, 2.0)
    server.aggregate(uploads((2.0, 2.0), (4.0, 0.0)))  # sample counts 10 and 20 do not weigh in
    # h = -alpha/m * sum(w_i - w) = -0.125 * (4, -2); w = mean(w_i) - h / alpha
    assert server.h["weight"].item() == -0.5 and server.h["bias"].item() == 0.25
    assert model_values(server) == (3.0 + 1.0, 1.0 - 0.5)
    server.aggregate(uploads((5.0, 1.0), (3.0, 0.5)))
    assert server.h["weight"].item() == -0.5 and server.h["bias"].item() == 0.25 - 0.125 * 0.5
    assert model_values(server) == (4.0 + 1.0, 0.75 - 0.375)


def test_h_is_the_algorithm_state_checkpoints_carry():
    server = server_with(1.0, 2.0)
    server.aggregate(uploads((2.0, 2.0), (4.0, 0.0)))
    saved = server.algorithm_state()
    resumed = server_with(4.0, 0.5)
    resumed.load_algorithm_state(saved)
    for target in (server, resumed):
        target.aggregate(uploads((5.0, 1.0), (3.0, 0.5)))
    assert model_values(resumed) == model_values(server) == (5.0, 0.375)
    with pytest.raises(PluginError, match="does not match the model's parameters"):
        resumed.load_algorithm_state({"h": {"weight": torch.zeros(1, 1)}})
