"""FedProx, FedDyn, Ditto and APFL end to end on digits: their config keys are checked, a run completes, every
client's checkpoint is the model it was tested with, and the uploads pass remote mode's checks with results
identical to the standalone run."""
import csv

import pytest
import torch

from fedcmd_plugin import ConfigError, load_config, load_run
from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.data import load_federated
from fedcmd_plugin.federation.evaluation import measure
from fedcmd_plugin.federation.fleet import LocalFleet
from fedcmd_plugin.federation import workers
from fedcmd_plugin.remote.server import ServerService
from fedcmd_plugin.remote.validation import Policy
from fedcmd_plugin.remote.wire import TEST, TRAIN, to_json

from conftest import CONFIGS

ALGORITHMS = ["fedprox", "feddyn", "ditto", "apfl"]
PERSONAL_MODELS = {"ditto", "apfl"}  # clients are tested with a model of their own
TINY = ["data.num_of_clients=4", "server.clients_per_round=3", "server.rounds=2", "server.test_every=1",
        "client.local_epoch=1", "output.progress=false", "output.tensorboard=false", "output.save_fig=false",
        "num_threads=1"]

DEFAULTS = {"fedprox.mu": 0.01, "feddyn.alpha": 0.01, "ditto.lambda": 0.1, "ditto.personal_epochs": None,
            "apfl.alpha": 0.5, "apfl.adaptive": True, "apfl.alpha_lr": None}
BAD = [("fedprox.mu=-0.1", r"'fedprox.mu' must be >= 0"), ("fedprox.mu=strong", r"'fedprox.mu' expects a number"),
       ("feddyn.alpha=0", r"'feddyn.alpha' must be > 0"), ("feddyn.alpha=[1]", r"'feddyn.alpha' expects a number"),
       ("ditto.lambda=-1", r"'ditto.lambda' must be >= 0"),
       ("ditto.personal_epochs=1.5", r"'ditto.personal_epochs' expects an integer"),
       ("ditto.personal_epochs=0", r"'ditto.personal_epochs' must be > 0"),
       ("ditto.lamda=1", r"'ditto.lamda' is unknown \(did you mean 'ditto.lambda'\?\)"),
       ("apfl.alpha=1.5", r"'apfl.alpha' must be in \[0, 1\]"),
       ("apfl.adaptive=2", r"'apfl.adaptive' expects true"),
       ("apfl.alpha_lr=fast", r"'apfl.alpha_lr' expects a number"),
       ("apfl.alpha_lr=-1", r"'apfl.alpha_lr' must be >= 0")]


def test_config_keys_have_the_papers_defaults():
    conf = load_config()
    for key, value in DEFAULTS.items():
        section, name = key.split(".")
        assert conf[section][name] == value, key
    conf = load_config(None, ["ditto.personal_epochs=3", "apfl.alpha_lr=0.5", "apfl.adaptive=false"])
    assert (conf.ditto.personal_epochs, conf.apfl.alpha_lr, conf.apfl.adaptive) == (3, 0.5, False)


@pytest.mark.parametrize("override, message", BAD, ids=[o for o, _ in BAD])
def test_bad_values_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def tiny_run(tmp_run_dir, algorithm, name):
    conf = load_config(CONFIGS / f"{algorithm}_digits.yaml", [*TINY, *tmp_run_dir, f"output.name={name}"])
    return run_experiment(conf)["folder"]


def final_rows(folder):
    with open(folder / "clients.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {r["cid"]: r for r in rows if r["round"] == "2"}


def same_parameters(a, b):
    return all(torch.equal(a[key], b[key]) for key in a)


class ServiceLikeFleet(LocalFleet):
    """The clients in this process, reached the way remote mode reaches client services: each upload leaves as
    its archive without kept state and must pass the remote server's checks; the server never sees kept state."""

    def __init__(self, clients, workspace, initial_state, policy):
        super().__init__(clients, workspace, initial_state)
        self.policy = policy

    def train(self, dispatches):
        return [ServerService.checked(self.policy.expect(TRAIN, cid, dispatch),
                                      self.clients[cid].run_round(dispatch).to_bytes(with_kept=False),
                                      self.report_type)
                for cid, dispatch in dispatches.items()]

    def evaluate(self, dispatches, splits):
        return [ServerService.checked(self.policy.expect(TEST, row["cid"], dispatches[row["cid"]], splits),
                                      to_json(row)) for row in super().evaluate(dispatches, splits)]

    def kept(self, cid):
        return {}


def service_like_fleet(conf, clients, model, world_size, progress):
    """Stands in for `local_fleet`: the run's local clients, reached as client services are."""
    data = load_federated(conf)
    sizes = {c.cid: {"train": data.train.size(c.cid), "test": data.test.size(c.cid)} for c in clients}
    initial_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    policy = Policy(initial_state, sizes, "classification", len(model.block_names), conf.remote.max_abs_value)
    return ServiceLikeFleet(clients, model, initial_state, policy)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_runs_complete_test_each_client_with_its_checkpoint_and_pass_the_remote_checks(tmp_run_dir, monkeypatch,
                                                                                        algorithm):
    run = load_run(tiny_run(tmp_run_dir, algorithm, "plain"))
    assert run.summary["rounds"] == 2 and len(run.metrics) == 2
    rows, data = final_rows(run.folder), load_federated(run.config)
    assert sorted(rows) == run.clients
    personal = []
    for cid in run.clients:
        model = run.model(cid)  # a state dict the model loads strictly
        with torch.no_grad():
            result = measure(model, {"test": data.test}, cid, ("test",), 512, "cpu")
        assert result["test_correct"] == int(rows[cid]["test_correct"]), cid
        personal.append(not same_parameters(model.state_dict(), run.model().state_dict()))
    assert any(personal) == (algorithm in PERSONAL_MODELS)
    assert ("global_accuracy" in run.summary["final"]) == (algorithm not in PERSONAL_MODELS)

    # The same run with the clients reached as client services are: checked uploads, kept state out of reach.
    monkeypatch.setattr(workers, "local_fleet", service_like_fleet)
    remote = tiny_run(tmp_run_dir, algorithm, "remote")
    assert (remote / "clients.csv").read_text() == (run.folder / "clients.csv").read_text()
    assert not (remote / "checkpoints" / "clients.pt").exists()
