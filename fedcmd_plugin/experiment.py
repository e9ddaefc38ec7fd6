"""One run's state in one object: its prepared config, its algorithm, its federated data and how it ended.

EasyFL builds a run from one process-wide coordinator (`easyfl.init(config)`, then `easyfl.run()`).
`fedcmd_plugin.register(name)` puts an `ExperimentCoordinator` in its place: every `easyfl.init` starts a new
`Experiment`, and the coordinator hands it to what it builds (the model, the data, the server, the fleet of local
clients). No module of the plugin holds a run's config, data or recorder, so two runs in one process (a notebook
running a sweep, the test suite) never see each other's.
"""
import functools
from dataclasses import dataclass, field

from easyfl.coordinator import Coordinator
from omegaconf import DictConfig

from fedcmd_plugin.config import complete
from fedcmd_plugin.errors import ConfigError, PluginError
from fedcmd_plugin.session import resolve_runtime, setup_logging


@dataclass(eq=False)
class Experiment:
    conf: DictConfig  # completed with the plugin's keys and resolved for this process (device, ranks, backend)
    algorithm: object  # the registry's Algorithm: its server, client and model builder
    outcome: dict = field(default_factory=dict)  # the run folder, and once it ended its summary (and why it stopped)

    @classmethod
    def begin(cls, conf, algorithm):
        """The experiment of `conf` (EasyFL's merged config, completed and resolved in place) with `algorithm`."""
        if conf.get("algorithm") is None:
            conf.algorithm = algorithm.name
        elif conf.algorithm != algorithm.name:
            raise ConfigError(f"config key 'algorithm' is {conf.algorithm!r} but fedcmd_plugin.register"
                              f"({algorithm.name!r}) was called: register the algorithm the config names")
        complete(conf)
        resolve_runtime(conf)
        setup_logging()
        return cls(conf, algorithm)

    @functools.cached_property
    def data(self):
        """The federated data of the config (`data.*`)."""
        from fedcmd_plugin.data import load_federated

        return load_federated(self.conf)

    def build_model(self):
        """A freshly initialised model of the algorithm for this data (or `model_init.params_file`'s weights)."""
        from fedcmd_plugin.models import has_batch_norm
        from fedcmd_plugin.models.checkpoint import load_initial_params

        model = self.algorithm.model(self.conf, self.data.info)
        if self.conf.client.batch_size < 2 and has_batch_norm(model):
            raise ConfigError(f"config key 'client.batch_size' must be at least 2 for model {self.conf.model!r}: "
                              "its BatchNorm layers need two samples per batch")
        return load_initial_params(model, self.conf.model_init.params_file)


class ExperimentCoordinator(Coordinator):
    """EasyFL's coordinator with each run's parts built from that run's Experiment: the plugin's data and model
    instead of EasyFL's data sets and model zoo, the algorithm's server given the experiment, and the local clients
    handed to that server as a fleet (remote mode hands it the client services instead)."""

    def __init__(self, algorithm):
        super().__init__()
        self.algorithm = algorithm
        self.experiment = None
        self._client_class = algorithm.client
        self.registered_server = self.registered_client = True  # EasyFL's own classes would replace them

    def init_conf(self, conf):
        super().init_conf(conf)
        self.experiment = Experiment.begin(self.conf, self.algorithm)

    def init_dataset(self):
        data = self.experiment.data
        self.train_data, self.test_data = data.train, data.test

    def init_model(self):
        self.model = self.experiment.build_model()

    def init_server(self):
        self._server_class = functools.partial(self.algorithm.server, experiment=self.experiment)
        super().init_server()

    def run(self):
        """The configured process group (with its deadline), then the server's rounds over the local clients,
        handed to it as a fleet (worker processes when `parallel.workers` resolves to more than one)."""
        from fedcmd_plugin.federation import distributed
        from fedcmd_plugin.federation.progress import Progress
        from fedcmd_plugin.federation.workers import local_fleet

        conf = self.conf
        if conf.is_distributed:
            distributed.init_process_group(conf.distributed.backend, conf.distributed.init_method,
                                           conf.distributed.world_size, conf.distributed.rank,
                                           conf.distributed.timeout_seconds)
        rank, world = distributed.rank_and_size()
        fleet = local_fleet(conf, self.clients, self.model, world, Progress.of(conf.output.progress, rank == 0))
        self.server.fleet = fleet
        try:
            self.server.start(self.model, self.clients)
        finally:
            if hasattr(fleet, "close"):
                fleet.close()
            if conf.is_distributed:
                distributed.leave_process_group()


def current():
    """The experiment of the latest `easyfl.init` in this process (PluginError before any)."""
    from easyfl.coordinator import get_coordinator

    experiment = getattr(get_coordinator(), "experiment", None)
    if experiment is None:
        raise PluginError("no experiment: call fedcmd_plugin.register(name), then easyfl.init(config)")
    return experiment


def last_run():
    """{"folder": Path, "summary": dict[, "stopped": dict]} of the latest experiment ({} before it recorded)."""
    return dict(current().outcome)
