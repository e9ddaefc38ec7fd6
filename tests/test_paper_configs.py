"""configs/paper/: the FedCMD paper's protocol for every method at three alphas, and MNIST through the same files."""
import csv
from pathlib import Path

import numpy as np
import pytest

from fedcmd_plugin import load_config
from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.data.sources import IDX_FILES
from fedcmd_plugin.fedcmd.server import selection_rounds

from conftest import CONFIGS
from test_data_sources import write_idx

PAPER = CONFIGS / "paper"
METHODS = {"fedcmd", "local", "fedavg", "fedper", "fedrep", "fedbn", "lg_fedavg", "fedbabu", "pfedsim", "fedprox",
           "feddyn", "ditto", "apfl", "fedfomo", "fedap"}


@pytest.mark.parametrize("alpha", ["0.1", "0.5", "1.0"])
def test_every_method_has_the_papers_protocol_at_each_alpha(alpha):
    folder = PAPER / f"fmnist_alpha{alpha}"
    assert {p.stem for p in folder.glob("*.yaml")} == METHODS
    for path in folder.glob("*.yaml"):
        conf = load_config(path)
        assert conf.algorithm == path.stem
        assert (conf.data.dataset, conf.data.num_of_clients, conf.data.min_size) == ("fmnist", 100, 40)
        assert conf.data.alpha == float(alpha) and conf.data.split_type == "dir"
        assert (conf.server.rounds, conf.server.join_ratio, conf.seed, conf.model) == (200, 0.1, 42, "lenet5_bn")
        assert (conf.client.local_epoch, conf.client.batch_size, conf.client.optimizer.lr) == (5, 32, 0.01)
        assert selection_rounds(conf) == 20  # the paper selects during its first 20 rounds


@pytest.mark.slow
def test_mnist_runs_from_a_local_idx_folder_with_the_same_configs(tmp_run_dir):
    rng = np.random.default_rng(0)
    mnist = tmp_run_dir.path / "mnist"
    mnist.mkdir()
    sizes = {"train": 9000, "test": 3000}
    for part, n in sizes.items():
        write_idx(mnist / IDX_FILES[f"{part}_images"], rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(mnist / IDX_FILES[f"{part}_labels"], rng.integers(0, 10, n).astype(np.uint8))
    conf = load_config(PAPER / "fmnist_alpha0.5" / "fedcmd.yaml",
                       ["data.dataset=mnist", f"data.path={mnist}", "server.rounds=2", "fedcmd.selection_rounds=1",
                        "client.local_epoch=1", "server.test_every=2", "output.progress=false",
                        "output.tensorboard=false", *tmp_run_dir])
    result = run_experiment(conf)
    assert result["summary"]["dataset"] == "mnist" and result["summary"]["rounds"] == 2
    with open(Path(result["folder"]) / "partition.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100
    sizes_per_client = [int(r["train"]) + int(r["test"]) for r in rows]
    assert min(sizes_per_client) >= 40 and sum(sizes_per_client) == sum(sizes.values())
