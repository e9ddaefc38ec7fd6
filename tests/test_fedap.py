"""FedAP: the Wasserstein distance of BatchNorm statistics and the weight matrix (hand-solved), the statistics a
client computes, config checks, the uploads remote mode accepts, and FedAvg pre-training."""
import csv

import pytest
import torch
from torch import nn

from fedcmd_plugin import ConfigError, algorithms, load_config
from fedcmd_plugin.aggregate import fedap_weights, gaussian_wasserstein
from fedcmd_plugin.baselines.fedap import FedAPSettings, batch_norm_statistics, check_config
from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.data.federated import DataInfo
from fedcmd_plugin.federation.messages import Upload, layout
from fedcmd_plugin.remote import validation

from conftest import make_dispatch

SMALL = {"model": "lenet5_bn", "data__num_of_clients": 4, "server__clients_per_round": 3, "server__rounds": 2,
         "parallel__workers": 1, "output__tensorboard": False, "output__save_fig": False}


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ the maths
def test_distance_sums_the_layers_gaussian_wasserstein_distances():
    a = [(t(0, 0), t(1, 1)), (t(1), t(1))]
    b = [(t(3, 4), t(1, 1)), (t(1), t(4))]
    # layer 1: the means 5 apart, same spread; layer 2: same mean, standard deviations 1 and 2
    assert gaussian_wasserstein(a, b) == pytest.approx(5.0 + 1.0)
    # both terms in one layer: sqrt(3^2 + (sqrt(25) - sqrt(1))^2) = sqrt(9 + 16)
    assert gaussian_wasserstein([(t(0), t(1))], [(t(3), t(25))]) == pytest.approx(5.0)
    assert gaussian_wasserstein(a, a) == 0.0
    with pytest.raises(ValueError):
        gaussian_wasserstein(a, b[:1])
    with pytest.raises(ValueError):
        gaussian_wasserstein([(t(0), t(-1))], [(t(0), t(1))])


def test_weights_are_inverse_distances_around_the_momentum_diagonal():
    distances = [[0, 1, 2], [1, 0, 4], [2, 4, 0]]
    # row 0: 1/1 and 1/2 -> 2/3 and 1/3 of 1 - 0.5; row 1: 1 and 1/4 -> 0.8, 0.2; row 2: 1/2 and 1/4 -> 2/3, 1/3
    expected = [[0.5, 1 / 3, 1 / 6], [0.4, 0.5, 0.1], [1 / 3, 1 / 6, 0.5]]
    assert fedap_weights(distances, 0.5).tolist() == [pytest.approx(row) for row in expected]
    # clients 0 and 1 have identical statistics: each gives the other all of 1 - 0.2
    same = [[0, 0, 2], [0, 0, 2], [2, 2, 0]]
    assert fedap_weights(same, 0.2).tolist() == [pytest.approx(r) for r in ([0.2, 0.8, 0.0], [0.8, 0.2, 0.0],
                                                                              [0.4, 0.4, 0.2])]
    assert fedap_weights([[0]], 0.5).tolist() == [[1.0]]  # alone: its own model
    assert fedap_weights(distances, 1.0).tolist() == torch.eye(3).tolist()
    with pytest.raises(ValueError):
        fedap_weights(distances, 1.5)


def test_statistics_are_those_of_the_features_entering_each_batch_norm_layer():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        model[0].bias.zero_()
    model.train()
    features = [(torch.tensor([[1.0, 1.0], [3.0, 3.0]]), None), (torch.tensor([[5.0, 5.0]]), None)]
    stats = batch_norm_statistics(model[:2], ["1"], features)
    # channel 0 sees 1, 3, 5 (mean 3, population variance 8/3); channel 1 sees 2, 6, 10 (mean 6, variance 32/3)
    assert stats["mean/1"].tolist() == pytest.approx([3.0, 6.0])
    assert stats["var/1"].tolist() == pytest.approx([8 / 3, 32 / 3])
    assert model.training  # the model's mode is restored
    with torch.no_grad():
        model[2].weight.fill_(1.0)
        model[2].bias.zero_()
    maps = [(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), None)]
    stats = batch_norm_statistics(model[2:], ["3"], maps)  # a slice keeps the modules' names
    assert stats["mean/3"].tolist() == pytest.approx([2.5]) and stats["var/3"].tolist() == pytest.approx([1.25])


# -------------------------------------------------------------------------------------------------- config
def test_config_keys_have_defaults_and_ranges():
    conf = load_config(None, ["algorithm=fedap"])
    assert dict(conf.fedap) == {"pretrain_rounds": 10, "model_momentum": 0.5}
    with pytest.raises(ConfigError, match="'fedap.model_momentum' expects a number"):
        load_config(None, ["fedap.model_momentum=half"])
    for override, message in (("fedap.model_momentum=1.5", r"'fedap.model_momentum' must be in \[0, 1\]"),
                              ("fedap.pretrain_rounds=0", "'fedap.pretrain_rounds' must be > 0")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="'fedap.pretrain_rounds' .* got 10 with server.rounds=10"):
        check_config(load_config(None, ["server.rounds=10"]))


def test_the_model_needs_batch_norm_layers():
    build = algorithms()["fedap"].model
    info = DataInfo(in_channels=1, image_size=8, num_classes=10)
    assert build(load_config(None, ["algorithm=fedap", "model=lenet5_bn"]), info) is not None
    with pytest.raises(ConfigError, match="config key 'model' must name a model with BatchNorm layers .* 'lenet5'"):
        build(load_config(None, ["algorithm=fedap", "model=lenet5"]), info)
    with pytest.raises(ConfigError, match="'fedap.model_momentum'"):
        build(load_config(None, ["algorithm=fedap", "model=cnn", "fedap.model_momentum=-1"]), info)


# -------------------------------------------------------------------------------------------- remote uploads
STATE = {"fc.weight": torch.ones(3, 2), "bn.weight": torch.ones(3), "bn.bias": torch.zeros(3),
         "bn.running_mean": torch.zeros(3), "bn.running_var": torch.ones(3), "bn.num_batches_tracked": torch.tensor(1)}
SIZES = {"c000": {"train": 40, "test": 30}}


def checked(layers, extra):
    """Run the remote checks of a FedAP upload for a dispatch asking for the statistics of `layers`; Rejected when
    it fails them."""
    policy = validation.Policy(STATE, SIZES, "classification", 0, 1e6)
    bn = [key for key in STATE if key.startswith("bn.")]
    asked = FedAPSettings("personalised", tuple(layers))
    expected = policy.expect("train", "c000", make_dispatch(STATE, asked, round=3, personal_keys=bn))
    shared = {key: value for key, value in STATE.items() if key not in bn}
    payload = Upload("c000", 40, shared, extra=extra).to_bytes(with_kept=False)
    validation.check_layout(expected, layout(payload)[0])
    validation.check_upload(expected, Upload.from_bytes(payload))


def test_remote_mode_takes_the_statistics_asked_for():
    honest = {"mean/bn": t(0.5, -1.0, 2.0), "var/bn": t(1.0, 0.0, 3.0)}
    checked(["bn"], honest)
    checked([], {})
    for layers, extra in ((["bn"], {**honest, "var/bn": t(1.0, -0.5, 3.0)}),  # a variance < 0
                          (["bn"], {"mean/bn": honest["mean/bn"]}),  # no variances
                          (["bn"], {**honest, "mean/bn": t(0.5, 1.0)}),  # not one per channel
                          ([], honest)):  # statistics nobody asked for
        with pytest.raises(validation.Rejected):
            checked(layers, extra)


# ----------------------------------------------------------------------------------------------- small runs
def rows(result):
    with open(result["folder"] / "clients.csv") as handle:
        return [row for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_pretraining_is_fedavg_then_personalised_rounds_differ(small_digits_config):
    from easyfl.coordinator import get_coordinator

    fedap = run_experiment(small_digits_config(algorithm="fedap", fedap__pretrain_rounds=1, **SMALL))
    server = get_coordinator().server
    fedavg = run_experiment(small_digits_config(algorithm="fedavg", **SMALL))
    ours, theirs = rows(fedap), rows(fedavg)
    assert [r["cid"] for r in ours] == [r["cid"] for r in theirs] and len(ours) == 8
    first = [(a, b) for a, b in zip(ours, theirs) if a["round"] == "1"]
    assert len(first) == 4 and all(a == b for a, b in first)  # round 1 is FedAvg, to the last digit of the loss
    assert any(a != b for a, b in zip(ours, theirs) if a["round"] == "2")

    # Round 2 asked its three clients for their statistics and gave each its own aggregate, BatchNorm aside.
    assert len(server.statistics) == 3 and set(server.statistics) == set(server.client_states)
    assert all(not any(key in state for key in server.batch_norm_keys) for state in server.client_states.values())
    saved = server.algorithm_state()
    server.statistics, server.client_states = {}, {}
    server.load_algorithm_state(saved)
    assert server.algorithm_state().keys() == saved.keys()
    for part in saved:
        assert saved[part].keys() == server.algorithm_state()[part].keys()
        assert all(torch.equal(saved[part][k], server.algorithm_state()[part][k]) for k in saved[part])
