"""FedCMD end to end on digits: the chosen layer stays personal, and personalisation pays off."""
import json

import pytest
import torch

from fedcmd_plugin.cli import run_experiment

from conftest import CONFIGS

SHORT = ["server.rounds=8", "server.clients_per_round=10", "server.test_every=8", "client.local_epoch=3",
         "output.progress=false", "output.tensorboard=false", "num_threads=1"]


def run(name, tmp_run_dir, *extra):
    from fedcmd_plugin import load_config

    return run_experiment(load_config(CONFIGS / f"{name}_digits.yaml", [*SHORT, *tmp_run_dir, *extra]))


@pytest.mark.parametrize("aggregation", ["reference", pytest.param("round", marks=pytest.mark.slow)])
def test_personal_layer_is_kept_and_differs_across_clients(tmp_run_dir, aggregation):
    result = run("fedcmd", tmp_run_dir, "fedcmd.selection_rounds=3", f"fedcmd.aggregation={aggregation}")
    folder = result["folder"]
    decision = json.loads((folder / "fedcmd_selection.json").read_text())
    chosen = decision["personal_block"]
    assert chosen in decision["tally"] and decision["tally"][chosen] == max(decision["tally"].values())
    assert sum(decision["tally"].values()) == 3 * 10  # every participant voted in every selection round
    assert result["summary"]["personal_block"] == chosen

    states = torch.load(folder / "checkpoints" / "clients.pt")
    personal = [k for k in next(iter(states.values())) if k.startswith(f"blocks.{chosen}.")]
    assert personal
    groups = {}
    for cid, state in states.items():
        groups.setdefault(state[personal[0]].numpy().tobytes(), []).append(cid)
    sizes = sorted(len(g) for g in groups.values())
    # clients.pt lists the clients that trained after the decision, each with a layer of its own (never
    # averaged); the others hold the shared state (shared.pt) and are not listed.
    assert len(sizes) >= 5 and set(sizes) == {1}, sizes

    # The decision explains itself: the margin follows from the tally, the configured rule's counterfactual is
    # the decision itself, and per-block scores carry their spread over clients and rounds.
    tally = decision["tally"]
    ranked = sorted(tally.values(), reverse=True)
    assert decision["vote_margin"]["margin"] == (ranked[0] - ranked[1]) / sum(ranked)
    assert decision["rules"]["exact/all/earliest"]["decision"] == chosen
    assert set(decision["mean_scores"]["exact"]) == set(tally)
    assert all(s["n"] == 3 * 10 and s["std"] >= 0 for s in decision["mean_scores"]["exact"].values())
    similarity = json.loads((folder / "similarity.json").read_text())
    assert similarity["pairs"] > 0 and "matrix" not in similarity  # the full matrix only on request
    assert all(len(partners) <= 10 for partners in similarity["top_k"].values())


def test_too_few_rounds_for_the_selection_phase_is_a_config_error(tmp_run_dir):
    from fedcmd_plugin import ConfigError

    with pytest.raises(ConfigError, match=r"FedCMD selects its personalised layer .* server.rounds=5 leaves no"):
        run("fedcmd", tmp_run_dir, "server.rounds=5", "fedcmd.selection_rounds=5")
    assert not tmp_run_dir.run_folders()  # refused before any run folder was made


@pytest.mark.slow
def test_default_selection_phase_is_a_tenth_of_the_rounds(tmp_run_dir):
    result = run("fedcmd", tmp_run_dir, "server.rounds=12", "server.test_every=12", "client.local_epoch=1",
                 "server.clients_per_round=4", "fedcmd.selection_rounds=null")
    decision = json.loads((result["folder"] / "fedcmd_selection.json").read_text())
    assert decision["selection_rounds"] == 1 and decision["decided_after_round"] == 1  # round(12 * 0.1) = 1
    assert len(decision["rounds"]) == 1


@pytest.mark.slow  # an accuracy threshold: run with the slow tests
def test_fedcmd_beats_fedavg_on_skewed_digits(tmp_run_dir):
    fedcmd = run("fedcmd", tmp_run_dir, "fedcmd.selection_rounds=2")["summary"]["final"]["accuracy"]
    fedavg = run("fedavg", tmp_run_dir)["summary"]["final"]["accuracy"]
    assert fedcmd > fedavg + 10, (fedcmd, fedavg)
