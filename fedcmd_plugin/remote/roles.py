"""Setting up a process for one remote role from the run's YAML config."""
import random

import numpy as np
import torch

from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.remote.transport import check_plaintext
from fedcmd_plugin.remote.wire import check_address, check_port


def check_remote_config(conf):
    """Ports, addresses and the plaintext rule (TLS, loopback only, or remote.insecure); files are read later."""
    remote = conf.remote
    check_port(remote.server_port, "remote.server_port")
    check_port(remote.client_port, "remote.client_port")
    check_address(remote.server_address, "remote.server_address")
    for address in remote.client_addresses:
        check_address(address, "remote.client_addresses entry")
    if not str(remote.bind).strip():
        raise ConfigError("config key 'remote.bind' must name an interface, e.g. 0.0.0.0 or 127.0.0.1")
    check_plaintext(conf)


def init_role(conf, port, index=None):
    """Register the config's algorithm, hand the config to EasyFL (remote mode, no local clients) and return
    the role's Experiment (its prepared config and data)."""
    import easyfl

    from fedcmd_plugin.experiment import current
    from fedcmd_plugin.registry import register

    check_remote_config(conf)
    if conf.distributed.world_size > 1:
        raise ConfigError("remote mode runs one process per role: distributed.world_size must be 1")
    register(conf.algorithm)
    conf.is_remote = True
    conf.local_port = int(port)
    conf.server_addr = str(conf.remote.server_address)
    if index is not None:
        conf.index = int(index)
    easyfl.init(conf, init_all=False)
    return current()


def seed_all(seed):
    """Seed Python, numpy and torch as `easyfl.init` does right before a standalone run builds its model, so
    the same config builds the same initial weights in every mode."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
