"""One run's state lives in its Experiment: each `easyfl.init` starts a new one, and what a run builds and
records belongs to it, so runs in one process never see each other's config, data or outcome."""
import easyfl
import pytest
import torch

from fedcmd_plugin import ConfigError, PluginError, load_config, register
from fedcmd_plugin.experiment import Experiment, current, last_run
from fedcmd_plugin.federation.server import FederatedServer


@pytest.mark.slow
def test_each_init_starts_an_experiment_with_its_own_config_data_and_model(small_digits_config):
    register("fedavg")
    easyfl.init(small_digits_config(seed=3, data__num_of_clients=4), init_all=False)
    first = current()
    easyfl.init(small_digits_config(seed=5, data__dataset="synthetic", data__split_type="natural",
                                    data__num_of_clients=3, model="mlp"), init_all=False)
    second = current()
    assert first is not second
    assert (first.conf.seed, second.conf.seed) == (3, 5)
    assert len(first.data.train.users) == 4 and len(second.data.train.users) == 3
    assert first.data.info != second.data.info  # 8x8 digit images against feature vectors
    assert first.build_model()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert second.build_model()(torch.zeros(2, 60)).shape == (2, 10)
    assert first.conf.data.dataset == "digits"  # the later init changed nothing of the earlier experiment


def test_the_servers_easyfl_builds_get_the_experiment_of_their_init(small_digits_config):
    register("fedavg")
    easyfl.init(small_digits_config(seed=1), init_all=False)
    coordinator = easyfl.coordinator.get_coordinator()
    coordinator.init_server()
    first = coordinator.server
    easyfl.init(small_digits_config(seed=2), init_all=False)
    coordinator = easyfl.coordinator.get_coordinator()
    coordinator.init_server()
    assert first.experiment.conf.seed == 1 and coordinator.server.experiment is current()
    assert current().conf.seed == 2


@pytest.mark.slow
def test_outcomes_are_per_experiment(small_digits_config):
    register("fedavg")
    easyfl.init(small_digits_config(server__rounds=1, server__test_every=1), init_all=True)
    easyfl.run()
    done = current()
    assert last_run()["summary"]["rounds_run"] == 1 and done.outcome["folder"].is_dir()
    easyfl.init(small_digits_config(), init_all=False)
    assert last_run() == {} and done.outcome["summary"]["rounds_run"] == 1


def test_a_config_naming_another_algorithm_than_the_registered_one_is_refused():
    register("fedper")
    with pytest.raises(ConfigError, match="'algorithm' is 'fedavg'.*register\\('fedper'\\)"):
        easyfl.init({"algorithm": "fedavg", "data": {"dataset": "digits"}}, init_all=False)


def test_a_server_without_its_experiment_and_fleet_does_not_start():
    server = FederatedServer(load_config(None, ["algorithm=fedavg"]))
    with pytest.raises(PluginError, match="needs its Experiment and its fleet"):
        server.start(torch.nn.Linear(1, 1), [])


def test_an_experiment_of_a_prepared_config_resolves_the_runtime():
    conf = load_config(None, ["algorithm=fedavg", "gpu=0"])
    from fedcmd_plugin.registry import get_algorithm

    experiment = Experiment.begin(conf, get_algorithm("fedavg"))
    assert experiment.conf.device == "cpu" and experiment.conf.distributed.backend == "gloo"
