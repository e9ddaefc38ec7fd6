"""Several runs in one process (the test suite, a notebook, a sweep driver) never see each other's data, config,
recorder or algorithm state: a run gives the same results whatever ran before it in the process."""
import csv

import pytest

from fedcmd_plugin.cli import run_experiment


def rows(folder, name):
    with open(folder / name, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_run_is_the_same_after_other_runs_in_the_process(small_digits_config):
    """B, then runs differing in algorithm, partition, seed and model, then B again: both Bs write the same
    per-client results and partition, and every run folder holds its own config."""
    first = run_experiment(small_digits_config(algorithm="fedper"))["folder"]
    others = [run_experiment(small_digits_config(**change))["folder"] for change in (
        {"algorithm": "fedcmd", "fedcmd__selection_rounds": 1, "data__num_of_clients": 6},
        {"algorithm": "fedavg", "seed": 3, "data__alpha": 0.9, "model": "lenet5_bn"},
    )]
    again = run_experiment(small_digits_config(algorithm="fedper"))["folder"]
    assert len({first, again, *others}) == 4
    assert rows(first, "clients.csv") == rows(again, "clients.csv")
    assert rows(first, "partition.csv") == rows(again, "partition.csv")
    assert rows(first, "partition.csv") != rows(others[0], "partition.csv")  # the runs did differ in between
    assert (first / "config.yaml").read_text() == (again / "config.yaml").read_text()
    for folder, algorithm in zip(others, ("fedcmd", "fedavg")):
        assert f"algorithm: {algorithm}" in (folder / "config.yaml").read_text()
