"""This process's runtime: ranks and device from the environment and config, threads per process, and where the
plugin's and EasyFL's log lines go. (A run's own state lives in its `fedcmd_plugin.experiment.Experiment`.)
"""
import logging
import os
import sys

from fedcmd_plugin.errors import ConfigError

LOGGER_NAME = "fedcmd_plugin"


def env_int(name, default):
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def resolve_runtime(conf):
    """Ranks from torchrun-style environment variables, the device from `gpu`, the backend from the device."""
    import torch

    dist = conf.distributed
    dist.world_size = max(1, env_int("WORLD_SIZE", dist.world_size))
    dist.rank = env_int("RANK", dist.rank)
    dist.local_rank = env_int("LOCAL_RANK", dist.local_rank)
    if dist.rank >= dist.world_size:
        raise ConfigError(f"distributed.rank={dist.rank} must be below distributed.world_size={dist.world_size}")
    conf.is_distributed = dist.world_size > 1
    if conf.gpu > 0:
        if not torch.cuda.is_available():
            raise ConfigError(f"gpu={conf.gpu} but this machine has no CUDA device: set gpu: 0 to train on the CPU")
        conf.device = f"cuda:{dist.local_rank % torch.cuda.device_count()}"
    else:
        conf.device = "cpu"
    if dist.backend == "auto":
        dist.backend = "nccl" if conf.gpu > 0 else "gloo"
    elif dist.backend == "nccl" and conf.gpu == 0 and conf.is_distributed:
        raise ConfigError("distributed.backend=nccl needs GPUs (gpu > 0); use gloo or auto on the CPU")
    if not dist.init_method:
        dist.init_method = "env://"
    torch.set_num_threads(conf.num_threads or threads_per_process())


def usable_cores():
    """The cores this process may run on (its CPU affinity), not merely the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_process():
    """Cores shared among the processes of this machine: oversubscribed threads spin and slow small models
    by an order of magnitude (LOCAL_WORLD_SIZE is set by torchrun and by the plugin's launchers)."""
    processes = max(1, env_int("LOCAL_WORLD_SIZE", 1))
    return max(1, usable_cores() // processes)


def setup_logging():
    """The plugin reports on its own logger, to stdout, whatever level EasyFL sets on the root logger."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def logger():
    return setup_logging()


def route_easyfl_logging():
    """`easyfl.init` adds a stdout handler and a file handler (logs/train.<time>.log below the working folder)
    to the root logger on every call; in its place the plugin sets the level and keeps one stdout handler, so a
    run writes nothing outside its run folder and data.root."""
    import easyfl.coordinator

    easyfl.coordinator.init_logger = init_easyfl_logger


class EasyFLHandler(logging.StreamHandler):
    """The one root-logger handler the plugin keeps for EasyFL's log lines (recognised by its class)."""


def init_easyfl_logger(log_level):
    """EasyFL's log (tracking.log_level) on the current stdout, one handler however often EasyFL is initialised."""
    root = logging.getLogger()
    root.setLevel(log_level or logging.INFO)
    for handler in [h for h in root.handlers if isinstance(h, EasyFLHandler)]:
        root.removeHandler(handler)
    handler = EasyFLHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    root.addHandler(handler)
