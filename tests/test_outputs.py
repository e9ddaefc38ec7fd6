"""What a run leaves behind: files only in its run folder and data.root, and metrics that mean what they say."""
import csv

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.data import load_federated
from fedcmd_plugin.models import build_model

from conftest import CONFIGS

FAST = ["server.rounds=1", "data.num_of_clients=6", "server.clients_per_round=3", "client.local_epoch=1",
        "num_threads=1"]


def test_a_run_writes_nothing_outside_its_run_folder_and_data_root(run_cli, tmp_run_dir):
    before = set(tmp_run_dir.path.iterdir())
    result = run_cli("run", CONFIGS / "fedavg_digits.yaml", *FAST, *tmp_run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(tmp_run_dir.path.iterdir()) - before == {tmp_run_dir.output_root, tmp_run_dir.data_root}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def lenet(data):
    return build_model("lenet5", data.info.in_channels, data.info.num_classes, data.info.image_size)


def test_train_loss_is_the_mean_loss_per_training_sample(small_digits_config):
    """With a zero step size the model never moves, so each round's training loss is the initial model's mean
    cross-entropy over every training sample of the round's clients (here: all of them)."""
    conf = small_digits_config(client__optimizer__lr=0.0, server__clients_per_round=10)
    folder = run_experiment(conf)["folder"]
    data = load_federated(conf)
    model = lenet(data)
    model.load_state_dict(torch.load(folder / "checkpoints" / "global.pt", weights_only=True))
    with torch.no_grad():
        total = sum(F.cross_entropy(model(x), y, reduction="sum").item()
                    for x, y in (data.train.tensors(cid) for cid in data.train.users))
    expected = total / data.train.total_size()
    rows = read_csv(folder / "metrics.csv")
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([expected] * 2, rel=1e-5)
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("round/train_loss")] == pytest.approx([expected] * 2, rel=1e-5)

