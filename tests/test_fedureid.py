"""FedUReID end to end on a tiny generated data set, and its cloud-side personalised update."""
import json

import pytest
import torch
from conftest import CONFIGS

from fedcmd_plugin import aggregate
from fedcmd_plugin.cli import run_experiment

TINY = ["fedureid.synthetic.edges=2", "fedureid.synthetic.identities=8", "fedureid.synthetic.test_identities=6",
        "fedureid.synthetic.cameras=3", "fedureid.synthetic.images_per_camera=3", "server.rounds=2",
        "server.clients_per_round=2", "server.test_every=1", "server.test_all=true", "client.local_epoch=3",
        "output.progress=false", "output.tensorboard=false", "num_threads=1"]


def run(name, tmp_run_dir, *extra):
    from fedcmd_plugin import load_config

    return run_experiment(load_config(CONFIGS / f"{name}_synthetic.yaml", [*TINY, *tmp_run_dir, *extra]))


@pytest.mark.slow
def test_two_rounds_improve_mean_map_over_the_untrained_model(tmp_run_dir):
    result = run("fedureid", tmp_run_dir)
    rows = json.loads((result["folder"] / "metrics.json").read_text())
    untrained = next(r for r in rows if r["round"] == 0)  # server.test_all: evaluated before round 1
    final = rows[-1]
    assert final["round"] == 2
    assert final["mAP"] > untrained["mAP"] + 2, (untrained["mAP"], final["mAP"])
    assert final["images_processed"] > 0 and 0 <= final["nmi"] <= 1
    assert (result["folder"] / "plots" / "cmc.png").is_file()
    assert set(result["summary"]["final"]) >= {"mAP/c000", "mAP/c001", "rank1/c000"}


def test_personalised_update_is_the_ema_of_edge_and_aggregate():
    edge = {"w": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0])}
    merged = {"w": torch.tensor([3.0, -1.0]), "b": torch.tensor([0.0])}
    mixed = aggregate.ema(edge, merged, 0.25)
    assert torch.allclose(mixed["w"], 0.25 * edge["w"] + 0.75 * merged["w"])
    assert torch.allclose(mixed["b"], torch.tensor([0.5]))


def test_local_only_edges_never_share_their_model(tmp_run_dir):
    result = run("fedureid_local", tmp_run_dir, "server.test_all=false", "server.rounds=1", "client.local_epoch=1")
    states = torch.load(result["folder"] / "checkpoints" / "global.pt")
    initial = run_config_initial_state(tmp_run_dir)
    # Without federation the server's model never moves from its initial parameters.
    key = next(k for k, v in states.items() if v.is_floating_point())
    assert torch.equal(states[key], initial[key])


def run_config_initial_state(tmp_run_dir):
    from fedcmd_plugin import load_config
    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.models.reid import reid_model

    conf = load_config(CONFIGS / "fedureid_local_synthetic.yaml", [*TINY, *tmp_run_dir])
    torch.manual_seed(conf.seed)
    return reid_model(conf, load_federated(conf).info).state_dict()
