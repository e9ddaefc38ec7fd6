"""Algorithm names -> (EasyFL server class, client class, model builder), and the registration call.

Third-party algorithms join either by calling `register_algorithm(Algorithm(...))` before `register(name)`, or
through the entry-point group `fedcmd_plugin.algorithms` (each entry point loads a module or callable that
registers its algorithms), so the package never needs editing. An algorithm may declare its own config sections
(`config={"fedprox": {"mu": 0.01}}`): they join the defaults and are checked like the plugin's own keys.
"""
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable

from fedcmd_plugin.errors import ConfigError

ENTRY_POINT_GROUP = "fedcmd_plugin.algorithms"
BUILTIN_MODULES = ("fedcmd_plugin.baselines", "fedcmd_plugin.fedcmd.algorithm", "fedcmd_plugin.fedureid.algorithm")


@dataclass(frozen=True)
class Algorithm:
    name: str
    server: type  # an easyfl.server.BaseServer subclass
    client: type  # an easyfl.client.BaseClient subclass
    model: Callable  # model(conf, data_info) -> torch.nn.Module
    summary: str = ""
    # {section: {key: default}}: the algorithm's own config keys; a key's type is its default's (null: any type)
    config: Mapping = field(default_factory=dict)


_ALGORITHMS = {}
_loaded = False


def register_algorithm(algorithm):
    """Add (or replace) an algorithm under its name."""
    check_sections(algorithm)
    _ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def check_sections(algorithm):
    """An algorithm's sections are mappings whose names no other config key or algorithm already uses."""
    from fedcmd_plugin.config import builtin_defaults

    owners = {key: "the plugin's defaults" for key in builtin_defaults()}
    owners.update({section: f"algorithm {other.name!r}" for other in _ALGORITHMS.values()
                   if other.name != algorithm.name for section in other.config})
    for section, keys in algorithm.config.items():
        if not isinstance(keys, Mapping):
            raise ValueError(f"algorithm {algorithm.name!r}: config section {section!r} must map its keys to "
                             f"their defaults, got {type(keys).__name__}")
        if section in owners:
            raise ValueError(f"algorithm {algorithm.name!r}: config section {section!r} is already used by "
                             f"{owners[section]}")


def algorithm_sections():
    """The config sections of every registered algorithm (entry points included): {section: {key: default}}."""
    if entry_points(group=ENTRY_POINT_GROUP):
        load_builtins()  # the built-in algorithms first, as always, so that entry points may replace them
    return {section: dict(keys) for algorithm in _ALGORITHMS.values() for section, keys in algorithm.config.items()}


def load_builtins():
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if callable(loaded):
            loaded()


def algorithms():
    """All known algorithms by name."""
    load_builtins()
    return dict(sorted(_ALGORITHMS.items()))


def get_algorithm(name):
    known = algorithms()
    if name not in known:
        raise ConfigError(f"algorithm {name!r} is unknown; known algorithms: {', '.join(known)}")
    return known[name]


def register(name):
    """Register algorithm `name` with EasyFL: each later `easyfl.init(config)` starts an Experiment of it (its
    server, client, model and the configured federated data; see `fedcmd_plugin.experiment`).

    Afterwards `easyfl.init(config); easyfl.run()` runs it.
    """
    import easyfl.coordinator

    from fedcmd_plugin.experiment import ExperimentCoordinator
    from fedcmd_plugin.session import route_easyfl_logging

    algorithm = get_algorithm(name)
    route_easyfl_logging()
    easyfl.coordinator._global_coord = ExperimentCoordinator(algorithm)
    return algorithm
