"""Ditto: the global model trains exactly as FedAvg's; the personal model is pulled towards the global model it
received, continues from the client's kept state and is the model the client is tested with."""
import torch
from baseline_helpers import (LR, assert_states_close, batches, cross_entropy_gradient, dispatch, linear_state,
                              make_client)

from fedcmd_plugin.baselines.common import personal_model
from fedcmd_plugin.baselines.ditto import DittoClient, DittoSettings
from fedcmd_plugin.federation.client import FederatedClient


def personal_steps(v, anchor, data, lam, epochs=1):
    for _ in range(epochs):
        for x, y in data:
            gradient = cross_entropy_gradient(v, x, y)
            v = {k: v[k] - LR * (gradient[k] + lam * (v[k] - anchor[k])) for k in v}
    return v


def test_two_models_personal_one_pulled_towards_the_global_one_and_tested():
    data, first, second, lam = batches(3), linear_state(0), linear_state(5), 0.5
    client = make_client(DittoClient, data)
    upload = client.run_round(dispatch(first, algorithm=DittoSettings(lam, None)))
    fedavg = make_client(FederatedClient, data).run_round(dispatch(first))
    assert all(torch.equal(upload.state[k], fedavg.state[k]) for k in fedavg.state)  # the aggregated model
    v = personal_steps(first, first, data, lam)  # starts from the first global model it receives
    assert_states_close(personal_model(client.kept), v)
    assert not torch.allclose(v["weight"], upload.state["weight"], atol=1e-3)
    assert set(upload.kept) == {"personal.weight", "personal.bias"}

    # Next round: v goes on from the kept state, pulled towards the new global model, for personal_epochs.
    client.run_round(dispatch(second, round=1, algorithm=DittoSettings(lam, 2)))
    v = personal_steps(v, second, data, lam, epochs=2)
    assert_states_close(personal_model(client.kept), v)
    tested = client.personalised_model(dispatch(second, round=2, algorithm=DittoSettings(lam, None)))
    assert_states_close(tested.state_dict(), v)


def test_lambda_pulls_the_personal_model_towards_the_global_one():
    data, start = batches(3), linear_state(0)
    distances = []
    for lam in (0.0, 5.0):
        client = make_client(DittoClient, data)
        client.run_round(dispatch(start, algorithm=DittoSettings(lam, 3)))
        distances.append(sum(((value - start[key]) ** 2).sum() for key, value in personal_model(client.kept).items()))
    assert distances[1] < distances[0]
