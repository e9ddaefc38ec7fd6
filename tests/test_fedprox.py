"""FedProx: each local step is the cross-entropy step plus mu times the distance to the received global model."""
import torch
from baseline_helpers import (LR, assert_states_close, batches, cross_entropy_gradient, dispatch, linear_state,
                              make_client)

from fedcmd_plugin.baselines.fedprox import FedProxClient, FedProxSettings
from fedcmd_plugin.federation.client import FederatedClient


def test_local_steps_add_the_proximal_gradient():
    data, start, mu = batches(3), linear_state(0), 0.5
    upload = make_client(FedProxClient, data).run_round(dispatch(start, FedProxSettings(mu)))
    w = dict(start)
    for x, y in data:  # from the second step on, w has left the global model and the term pulls it back
        gradient = cross_entropy_gradient(w, x, y)
        w = {k: w[k] - LR * (gradient[k] + mu * (w[k] - start[k])) for k in w}
    assert_states_close(upload.state, w)
    assert upload.kept == {}


def test_mu_zero_is_fedavgs_client():
    data, start = batches(3), linear_state(0)
    prox = make_client(FedProxClient, data).run_round(dispatch(start, FedProxSettings(0.0)))
    plain = make_client(FederatedClient, data).run_round(dispatch(start))
    assert all(torch.equal(prox.state[k], plain.state[k]) for k in plain.state)
