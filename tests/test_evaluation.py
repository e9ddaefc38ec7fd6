"""EasyFL's evaluation keys: test_mode (whose model is tested), test_method (how the headline averages clients),
random selection and periodic checkpoints, checked against models rebuilt from the run's checkpoints."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fedcmd_plugin import ConfigError
from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.data import load_federated
from fedcmd_plugin.models import build_model


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def per_client(conf, state, cids):
    """{cid: (accuracy %, mean cross-entropy, test samples)} of a LeNet-5 state on each client's test split."""
    data = load_federated(conf)
    model = build_model("lenet5", data.info.in_channels, data.info.num_classes, data.info.image_size)
    model.load_state_dict(state)
    model.eval()
    scores = {}
    with torch.no_grad():
        for cid in cids:
            x, y = data.test.tensors(cid)
            logits = model(x)
            scores[cid] = (100.0 * (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item(),
                           len(y))
    return scores


def test_in_server_tests_the_global_model_on_the_pooled_test_data(small_digits_config):
    conf = small_digits_config(test_mode="test_in_server", server__save_model_every=1)
    run = run_experiment(conf)
    folder = run["folder"]
    final = run["summary"]["final"]
    state = torch.load(folder / "checkpoints" / "global.pt", weights_only=True)
    scores = per_client(conf, state, load_federated(conf).test.users)
    samples = sum(n for _, _, n in scores.values())
    pooled = sum(acc * n for acc, _, n in scores.values()) / samples
    assert final["accuracy"] == pytest.approx(pooled) and final["global_accuracy"] == pytest.approx(pooled)
    assert final["loss"] == pytest.approx(sum(loss * n for _, loss, n in scores.values()) / samples, rel=1e-4)
    last = [r for r in read_csv(folder / "clients.csv") if r["round"] == "2"]
    for row in last:
        assert float(row["test_accuracy"]) == pytest.approx(scores[row["cid"]][0])
        assert float(row["test_loss"]) == pytest.approx(scores[row["cid"]][1], rel=1e-4)  # a mean, as in metrics
    # save_model_every=1: round 1's models beside the final ones, and they differ (round 2 trained on)
    first = torch.load(folder / "checkpoints" / "round_1" / "global.pt", weights_only=True)
    assert set(first) == set(state) and any(not torch.equal(first[k], state[k]) for k in state)
    assert not (folder / "checkpoints" / "round_2").exists()


def test_average_method_gives_every_client_the_same_weight(small_digits_config):
    """FedAvg's personalised model is the global model, so the headline is checkable from global.pt."""
    conf = small_digits_config(test_method="average", server__random_selection=False,
                               evaluation__all_clients=False)
    run = run_experiment(conf)
    folder = run["folder"]
    rows = read_csv(folder / "clients.csv")
    first_five = load_federated(conf).test.users[:5]
    assert [r["cid"] for r in rows] == first_five * 2  # not random: the first clients_per_round, every round
    scores = per_client(conf, torch.load(folder / "checkpoints" / "global.pt", weights_only=True), first_five)
    mean = sum(acc for acc, _, _ in scores.values()) / len(scores)
    assert run["summary"]["final"]["accuracy"] == pytest.approx(mean)
    assert run["summary"]["final"]["loss"] == pytest.approx(
        sum(loss for _, loss, _ in scores.values()) / len(scores), rel=1e-4)


def test_in_server_without_a_global_model_is_refused(small_digits_config, tmp_run_dir):
    conf = small_digits_config(algorithm="fedper", test_mode="test_in_server")
    with pytest.raises(ConfigError, match="'fedper'.*use test_mode=test_in_client"):
        run_experiment(conf)
    assert tmp_run_dir.run_folders() == []



def test_sampled_accuracy_interval_hand_case():
    from fedcmd_plugin.federation.evaluation import sampled_accuracy_interval

    # 3 of 6 clients, 10 test samples each, 8, 5 and 9 right: R = 22/30; residuals 2/3, -7/3, 5/3 -> s^2 = 26/6;
    # var = (1 - 3/6) * s^2 / (3 * 10^2) -> half width 1.96 * sqrt(var).
    low, high = sampled_accuracy_interval([8, 5, 9], [10, 10, 10], population=6)
    half = 1.96 * math.sqrt(0.5 * (26 / 6) / 300)
    assert math.isclose(low, 100 * (22 / 30 - half)) and math.isclose(high, 100 * (22 / 30 + half))
    assert sampled_accuracy_interval([8, 5, 9], [10, 10, 10], population=3) == (100 * 22 / 30, 100 * 22 / 30)
    with pytest.raises(ValueError):
        sampled_accuracy_interval([1, 2], [2, 2], population=1)


def test_a_sample_of_clients_per_test_round_and_all_after_the_last(small_digits_config):
    conf = small_digits_config(server__rounds=4, server__test_every=2, evaluation__sample_clients=4)
    rows = json.loads((run_experiment(conf)["folder"] / "metrics.json").read_text())
    sampled, final = [r for r in rows if r["round"] == 2][0], [r for r in rows if r["round"] == 4][0]
    assert sampled["evaluated_clients"] == 4 and sampled["sampled_from"] == 10
    assert sampled["accuracy_ci95_low"] <= sampled["accuracy"] <= sampled["accuracy_ci95_high"]
    assert final["evaluated_clients"] == 10 and "accuracy_ci95_low" not in final
