"""What a run leaves behind: files only in its run folder and data.root, metrics that mean what they say, and
run folders read back (load_run, `fedcmd-plugin compare`)."""
import csv
import json

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fedcmd_plugin
from fedcmd_plugin.cli import main, run_experiment
from fedcmd_plugin.data import load_federated
from fedcmd_plugin.models import build_model

from conftest import CONFIGS

FAST = ["server.rounds=1", "data.num_of_clients=6", "server.clients_per_round=3", "client.local_epoch=1",
        "num_threads=1"]


def test_a_run_writes_nothing_outside_its_run_folder_and_data_root(cli_here, tmp_run_dir):
    before = set(tmp_run_dir.path.iterdir())
    result = cli_here("run", CONFIGS / "fedavg_digits.yaml", *FAST, *tmp_run_dir)
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


@pytest.mark.parametrize("algorithm,clients_keep_layers", [
    pytest.param("fedavg", False, marks=pytest.mark.slow), ("fedper", True),
    pytest.param("fedcmd", True, marks=pytest.mark.slow)])  # reference mix: clients that met no one share one
def test_load_run_gives_the_models_the_run_evaluated(small_digits_config, algorithm, clients_keep_layers):
    """Accuracy of load_run's models on each client's test split = clients.csv's last evaluation."""
    conf = small_digits_config(algorithm=algorithm, fedcmd__selection_rounds=1)
    run = fedcmd_plugin.load_run(run_experiment(conf)["folder"])
    assert run.config.algorithm == algorithm and [m["round"] for m in run.metrics] == [1, 2]
    data = load_federated(run.config)
    last = {r["cid"]: float(r["test_accuracy"]) for r in read_csv(run.folder / "clients.csv") if r["round"] == "2"}
    assert sorted(last) == run.clients
    for cid, accuracy in last.items():
        x, y = data.test.tensors(cid)
        with torch.no_grad():
            mine = 100.0 * (run.model(cid)(x).argmax(1) == y).float().mean().item()
        assert mine == pytest.approx(accuracy), (algorithm, cid)
    if clients_keep_layers:
        with pytest.raises(fedcmd_plugin.PluginError, match="no global model"):
            run.model()
    else:
        assert torch.equal(run.model()(x), run.model(cid)(x))


@pytest.mark.parametrize("algorithm,prefix,shared", [
    pytest.param("fedavg", None, "global.pt", marks=pytest.mark.slow), ("fedper", "blocks.classifier.", "shared.pt"),
    pytest.param("fedcmd", "blocks.", "shared.pt", marks=pytest.mark.slow)])
def test_checkpoints_hold_each_clients_own_state_only(small_digits_config, algorithm, prefix, shared):
    """clients.pt lists the clients with state of their own, and only that state; the rest is global.pt/shared.pt."""
    conf = small_digits_config(algorithm=algorithm, fedcmd__selection_rounds=1, output__save_fig=False,
                               server__rounds=2 if algorithm == "fedcmd" else 1)
    folder = run_experiment(conf)["folder"] / "checkpoints"
    whole = torch.load(folder / shared, weights_only=True)
    assert set(whole) == set(build_model("lenet5", 1, 10, 8).state_dict())
    if prefix is None:
        assert not (folder / "clients.pt").exists()
        return
    own = torch.load(folder / "clients.pt", weights_only=True)
    assert len(own) == 5  # the 5 clients of the one round that keeps layers (FedCMD's second); not the idle 5
    for state in own.values():
        assert state and all(key.startswith(prefix) for key in state)
        assert len(state) < len(whole)  # never a whole copy of the shared model
    if algorithm == "fedcmd":  # its personal layer and the per-client mix after it, never the FedAvg'd body
        chosen = json.loads((folder.parent / "fedcmd_selection.json").read_text())["personal_block"]
        blocks = build_model("lenet5", 1, 10, 8).block_names
        mine = {f"blocks.{b}." for b in blocks[blocks.index(chosen):]}
        assert all(any(key.startswith(m) for m in mine) for state in own.values() for key in state)
        assert all(any(key.startswith(f"blocks.{chosen}.") for key in state) for state in own.values())


@pytest.mark.slow
def test_compare_puts_runs_side_by_side(small_digits_config, tmp_run_dir, capsys):
    folders = [run_experiment(small_digits_config(algorithm=a, server__rounds=r))["folder"]
               for a, r in (("fedavg", 2), ("local", 1))]
    plot = tmp_run_dir.path / "compare.png"
    assert main(["compare", *map(str, folders), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for folder, algorithm, rounds in zip(folders, ("fedavg", "local"), (2, 1)):
        summary = json.loads((folder / "summary.json").read_text())
        (line,) = [line for line in out.splitlines() if line.startswith(folder.name)]
        assert algorithm in line and f"{summary['final']['accuracy']:6.2f}%" in line
        assert line.split()[-3] == str(rounds) and line.split()[-1] == "-"  # rounds, (s/round), no FedCMD layer
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_compare_refuses_an_unfinished_folder(tmp_run_dir):
    folder = tmp_run_dir.path / "half"
    folder.mkdir()
    (folder / "status.json").write_text('{"state": "running"}')
    with pytest.raises(fedcmd_plugin.PluginError, match="not complete"):
        fedcmd_plugin.load_run(folder)
