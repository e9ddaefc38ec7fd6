"""The README's quick start, in this process: register once, then EasyFL's own `init` + `run`."""
import csv
import json

import easyfl
import torch

import fedcmd_plugin
from fedcmd_plugin.experiment import last_run

from conftest import CONFIGS

CHANCE = 10.0  # percent, ten balanced classes
# IID clients, all of them every round, ten local epochs of batch-16 SGD (lr 0.05, momentum 0.9): LeNet-5 leaves
# its initial plateau within the two rounds (about 78% here; 55-65% with inputs merely scaled to [0, 1]).
QUICK = ["data.split_type=iid", "data.num_of_clients=10", "server.clients_per_round=10", "server.rounds=2",
         "server.test_every=1", "client.local_epoch=10", "client.batch_size=16", "client.optimizer.lr=0.05",
         "client.optimizer.momentum=0.9", "output.progress=false", "output.name=quickstart", "num_threads=1"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_round_fedavg_quick_start(tmp_run_dir):
    fedcmd_plugin.register("fedavg")
    conf = fedcmd_plugin.load_config(CONFIGS / "fedavg_digits.yaml", [*QUICK, *tmp_run_dir])
    easyfl.init(conf)
    easyfl.run()

    run = last_run()
    folder = run["folder"]
    assert folder.parent == tmp_run_dir.output_root and folder.name.startswith("quickstart-")
    assert tmp_run_dir.run_folders() == [folder]

    final = run["summary"]["final"]
    assert final["evaluated_clients"] == 10
    assert final["accuracy"] > 3 * CHANCE, final
    assert 0 <= final["accuracy_min"] <= final["accuracy_mean"] <= final["accuracy_max"] <= 100

    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "complete"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final"]["accuracy"] == final["accuracy"] and summary["rounds"] == 2

    metrics = json.loads((folder / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [1, 2]
    assert all(m["round_seconds"] > 0 and m["clients"] == 10 for m in metrics)
    assert all(0 < m["slowest_client_seconds"] < m["round_seconds"] for m in metrics)  # one client within its round
    assert metrics[-1]["accuracy"] == final["accuracy"]
    assert len(read_csv(folder / "metrics.csv")) == 2

    partition = read_csv(folder / "partition.csv")
    assert len(partition) == 10
    assert sum(int(r["train"]) + int(r["test"]) for r in partition) == 1797
    clients = read_csv(folder / "clients.csv")
    assert len(clients) == 2 * 10  # every client, at both evaluations

    saved = (folder / "config.yaml").read_text()
    assert "split_type: iid" in saved and "local_epoch: 10" in saved

    checkpoint = torch.load(folder / "checkpoints" / "global.pt", weights_only=True)
    assert set(checkpoint) and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    assert any(p.name.startswith("events.out.tfevents") for p in (folder / "tensorboard").iterdir())
    png = (folder / "plots" / "accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
