"""APFL: w steps on its own loss, v on the mixed model alpha v + (1 - alpha) w, alpha on its gradient
<v - w, grad f(mixed)>, all checked against hand-written steps; the client is tested with the mixed model."""
import torch
from baseline_helpers import (LR, assert_states_close, batches, cross_entropy_gradient, dispatch, linear_state,
                              make_client)
from torch import nn

from fedcmd_plugin.baselines.apfl import ALPHA, APFLClient, APFLSettings
from fedcmd_plugin.baselines.common import as_kept, personal_model
from fedcmd_plugin.federation.client import FederatedClient

ALPHA_LR = 0.2


def settings(adaptive=True, alpha=0.5):
    return APFLSettings(alpha, adaptive, ALPHA_LR)


def hand_steps(w, v, a, data, adaptive):
    for x, y in data:
        mixed = {k: a * v[k] + (1 - a) * w[k] for k in w}
        own, through_mixed = cross_entropy_gradient(w, x, y), cross_entropy_gradient(mixed, x, y)
        step = sum(((v[k] - w[k]) * through_mixed[k]).sum() for k in w).item()
        w = {k: w[k] - LR * own[k] for k in w}
        v = {k: v[k] - LR * a * through_mixed[k] for k in v}
        if adaptive:
            a = min(max(a - ALPHA_LR * step, 0.0), 1.0)
    return w, v, a


def test_w_v_and_alpha_follow_the_papers_updates():
    data, w0, v0, a0 = batches(3), linear_state(0), linear_state(3), 0.3
    for adaptive in (True, False):
        client = make_client(APFLClient, data)
        client.kept = {**as_kept(v0), ALPHA: torch.tensor(a0)}
        upload = client.run_round(dispatch(w0, settings(adaptive)))
        w, v, a = hand_steps(w0, v0, a0, data, adaptive)
        assert_states_close(upload.state, w)
        assert_states_close(personal_model(client.kept), v)
        assert abs(client.kept[ALPHA].item() - a) < 1e-6 and abs(upload.algorithm.alpha - a) < 1e-6
        assert (a != a0) == adaptive
        # Tested with the mixed model over the global model it receives next.
        latest = linear_state(9)
        tested = client.personalised_model(dispatch(latest, settings(adaptive), round=1))
        assert_states_close(tested.state_dict(), {k: a * v[k] + (1 - a) * latest[k] for k in latest})


def test_first_round_starts_v_from_the_global_model_and_alpha_from_the_config():
    data, w0 = batches(2), linear_state(0)
    client = make_client(APFLClient, data)
    client.run_round(dispatch(w0, settings(alpha=0.8)))
    _, v, a = hand_steps(w0, w0, 0.8, data, True)
    assert_states_close(personal_model(client.kept), v)
    assert abs(client.kept[ALPHA].item() - a) < 1e-6


def test_batch_norm_statistics_of_the_mixed_model_are_the_personal_models():
    data = batches(2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    client = make_client(APFLClient, data, model)
    upload = client.run_round(dispatch(start, settings()))
    fedavg = make_client(FederatedClient, data, model).run_round(dispatch(start))
    assert all(torch.equal(upload.state[k], fedavg.state[k]) for k in fedavg.state)  # w: FedAvg's training
    personal = personal_model(client.kept)
    assert personal["1.num_batches_tracked"].item() == 2  # updated by the mixed model's two batches
    assert not torch.allclose(personal["1.running_mean"], upload.state["1.running_mean"])
    tested = client.personalised_model(dispatch(upload.state, settings(), round=1))
    assert torch.equal(tested.state_dict()["1.running_mean"], personal["1.running_mean"])
