"""FedFomo: first-order weights and the step they take (hand-solved), the seeded epsilon-greedy choice of models,
config checks, the uploads remote mode accepts, and a small run."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedcmd_plugin import ConfigError, load_config
from fedcmd_plugin.aggregate import (
    affinity_increment,
    fomo_mixing,
    fomo_update,
    fomo_weights,
    state_distance,
)
from fedcmd_plugin.baselines.fedfomo import (
    FedFomoSettings,
    FedFomoServer,
    choose_peers,
    exploration,
    validation_count,
)
from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.federation.messages import Upload, layout
from fedcmd_plugin.remote import validation

from conftest import make_dispatch

SMALL = {"algorithm": "fedfomo", "data__num_of_clients": 4, "server__clients_per_round": 4, "server__rounds": 3,
         "parallel__workers": 1, "output__tensorboard": False, "output__save_fig": False}


# ------------------------------------------------------------------------------------------------ the maths
def test_weights_are_loss_gain_per_unit_distance():
    # own loss 2: model 0 lowers it by 1 at distance 2, model 1 raises it by 1 at distance 1, model 2 ties,
    # model 3 equals the client's own model (distance 0: no direction)
    weights = fomo_weights(2.0, [1.0, 3.0, 2.0, 0.5], [2.0, 1.0, 0.5, 0.0])
    assert weights.tolist() == [0.5, -1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        fomo_weights(1.0, [1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        fomo_weights(1.0, [1.0], [-1.0])


def test_mixing_keeps_only_improving_models():
    assert fomo_mixing([0.5, -1.0, 0.0, 0.25]).tolist() == pytest.approx([2 / 3, 0.0, 0.0, 1 / 3])
    assert fomo_mixing([-0.5, 0.0]).tolist() == [0.0, 0.0]  # nothing helps: the client keeps its own


def test_update_steps_from_the_own_model_towards_the_others():
    own = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0])}
    models = [{"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])},
              {"w": torch.tensor([0.0, 6.0]), "b": torch.tensor([-2.0])}]
    full = fomo_update(own, models, [2 / 3, 1 / 3], ["w", "b"])
    assert full["w"].tolist() == pytest.approx([2.0, 2.0]) and full["b"].tolist() == pytest.approx([2.0])
    half = fomo_update(own, models, [0.5, 0.0], ["w"])  # own + 0.5 * (model 0 - own)
    assert list(half) == ["w"] and half["w"].tolist() == pytest.approx([1.5, 0.0])
    kept = fomo_update(own, models, [0.0, 0.0], ["w", "b"])
    assert torch.equal(kept["w"], own["w"]) and torch.equal(kept["b"], own["b"])
    with pytest.raises(ValueError):
        fomo_update(own, models, [0.8, 0.8], ["w"])


def test_affinity_increment_and_distance():
    assert affinity_increment([0.5, -1.0, 0.0, 0.5]).tolist() == [0.25, -0.5, 0.0, 0.25]
    assert affinity_increment([0.0, 0.0]).tolist() == [0.0, 0.0]
    a = {"x": torch.tensor([3.0]), "y": torch.tensor([[0.0, 1.0]])}
    b = {"x": torch.tensor([0.0]), "y": torch.tensor([[4.0, 1.0]])}
    assert state_distance(a, b, ["x", "y"]) == pytest.approx(5.0)
    assert state_distance(a, b, ["x"]) == pytest.approx(3.0)


# ---------------------------------------------------------------------------------- choosing the models sent
def test_exploration_decays_linearly_to_zero():
    assert [exploration(0.3, 0.05, t) for t in (0, 2, 5, 6, 50)] == pytest.approx([0.3, 0.2, 0.05, 0.0, 0.0])


def test_without_exploration_the_highest_affinities_are_chosen():
    row = torch.tensor([0.0, 0.9, 0.1, 0.5, 0.3], dtype=torch.float64)
    for seed in range(5):
        assert choose_peers(row, [1, 2, 3, 4], 2, 0.0, np.random.default_rng(seed)) == [1, 3]
    assert choose_peers(row, [2, 4], 3, 0.0, np.random.default_rng(0)) == [2, 4]  # fewer candidates than slots


def test_choice_is_seeded_and_ties_and_exploration_are_random():
    tied = torch.zeros(6, dtype=torch.float64)
    row = torch.tensor([0.0, 5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    picks = {}
    for epsilon, affinity in ((0.0, tied), (1.0, row), (0.5, row)):
        chosen = [tuple(choose_peers(affinity, range(1, 6), 3, epsilon, np.random.default_rng(s))) for s in range(40)]
        again = [tuple(choose_peers(affinity, range(1, 6), 3, epsilon, np.random.default_rng(s))) for s in range(40)]
        assert chosen == again  # the same seed, the same models
        assert all(len(set(c)) == 3 and set(c) <= {1, 2, 3, 4, 5} for c in chosen)  # never one model twice
        picks[epsilon] = chosen
    assert len(set(picks[0.0])) > 1  # ties are broken at random, not by client order
    assert any(5 in c for c in picks[1.0])  # exploring reaches the lowest affinity
    assert (1, 2, 3) in picks[0.5] and any(c != (1, 2, 3) for c in picks[0.5])  # sometimes greedy, sometimes not


@pytest.mark.parametrize("samples,ratio,held", [(10, 0.2, 2), (3, 0.2, 1), (2, 0.9, 1), (1, 0.5, 0), (100, 0.25, 25)])
def test_validation_holds_out_a_share_and_leaves_some_to_train(samples, ratio, held):
    assert validation_count(samples, ratio) == held


# -------------------------------------------------------------------------------------------------- config
def test_config_keys_have_defaults_types_and_ranges():
    conf = load_config(None, ["algorithm=fedfomo"])
    assert dict(conf.fedfomo) == {"models_per_round": 5, "epsilon": 0.3, "epsilon_decay": 0.05, "val_ratio": 0.2}
    with pytest.raises(ConfigError, match="'fedfomo.models_per_round' expects an integer"):
        load_config(None, ["fedfomo.models_per_round=2.5"])
    for override, message in (("fedfomo.models_per_round=0", "'fedfomo.models_per_round' must be > 0"),
                              ("fedfomo.epsilon=1.5", r"'fedfomo.epsilon' must be in \[0, 1\]"),
                              ("fedfomo.epsilon_decay=-0.1", r"'fedfomo.epsilon_decay' must be in \[0, 1\]"),
                              ("fedfomo.val_ratio=1.0", r"'fedfomo.val_ratio' must be in \(0, 1\)"),
                              ("fedfomo.val_ratio=0.0", r"'fedfomo.val_ratio' must be in \(0, 1\)")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


def test_remote_limit_must_hold_the_models_a_dispatch_carries():
    from fedcmd_plugin.remote.fleet import RemoteFleet

    state = {"w": torch.zeros(1024, 1024)}  # 4 MiB
    conf = load_config(None, ["algorithm=fedfomo", "remote.max_message_mb=20"])  # FedFomo sends 5 + 2 models
    models = FedFomoServer.models_per_dispatch(SimpleNamespace(conf=conf))
    assert models == 7
    fleet = SimpleNamespace(conf=conf)
    with pytest.raises(ConfigError, match="'remote.max_message_mb' must be at least 29.0"):
        RemoteFleet.check_room(fleet, state, models)
    conf.remote.max_message_mb = 29.0
    RemoteFleet.check_room(fleet, state, models)


# -------------------------------------------------------------------------------------------- remote uploads
STATE = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
SIZES = {"c000": {"train": 40, "test": 30}}


def checked(peers, extra):
    """Run the remote checks of a FedFomo upload for a dispatch carrying the models of `peers`; Rejected when it
    fails them."""
    policy = validation.Policy(STATE, SIZES, "classification", 0, 1e6)
    expected = policy.expect("train", "c000", make_dispatch(STATE, FedFomoSettings(0.2, tuple(peers)), round=1))
    payload = Upload("c000", 40, dict(STATE), extra=extra).to_bytes(with_kept=False)
    validation.check_layout(expected, layout(payload)[0])
    validation.check_upload(expected, Upload.from_bytes(payload))


def test_remote_mode_takes_one_weight_per_model_sent():
    checked(["c001", "c002"], {"fomo_weights": torch.tensor([0.5, -1.0])})
    checked([], {})
    for peers, extra in ((["c001", "c002"], {"fomo_weights": torch.tensor([0.5])}),
                         (["c001", "c002"], {}),
                         (["c001"], {"fomo_weights": torch.tensor([float("nan")])}),
                         ([], {"fomo_weights": torch.tensor([1.0])})):
        with pytest.raises(validation.Rejected):
            checked(peers, extra)


# ----------------------------------------------------------------------------------------------- a small run
@pytest.mark.slow
def test_small_run_federates_through_the_affinity_matrix(small_digits_config):
    from easyfl.coordinator import get_coordinator

    result = run_experiment(small_digits_config(**SMALL, server__test_every=3))
    assert json.loads((result["folder"] / "status.json").read_text())["state"] == "complete"
    assert result["summary"]["final"]["evaluated_clients"] == 4
    server = get_coordinator().server
    affinity = server.affinity
    assert torch.count_nonzero(affinity) > 0  # rounds 2 and 3 sent models and got weights back
    assert torch.count_nonzero(torch.diagonal(affinity)) == 0  # a client is never sent its own model
    assert sorted(server.latest) == ["c000", "c001", "c002", "c003"]
    states = torch.load(result["folder"] / "checkpoints" / "clients.pt")
    assert all(torch.equal(states[cid][key], server.latest[cid][key]) for cid in states for key in states[cid])

    saved = server.algorithm_state()
    server.affinity, server.latest = torch.zeros_like(affinity), {}
    server.load_algorithm_state(saved)
    assert torch.equal(server.affinity, affinity) and sorted(server.latest) == sorted(states)
    assert all(torch.equal(server.latest[cid][key], states[cid][key]) for cid in states for key in states[cid])
