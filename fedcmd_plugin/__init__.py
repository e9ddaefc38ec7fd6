"""FedCMD and FedUReID as EasyFL plugins.

    import easyfl, fedcmd_plugin
    fedcmd_plugin.register("fedcmd")
    easyfl.init({"data": {"dataset": "digits"}})
    easyfl.run()
"""
from fedcmd_plugin.config import load_config
from fedcmd_plugin.errors import ConfigError, DataError, PluginError
from fedcmd_plugin.registry import Algorithm, algorithms, register, register_algorithm
from fedcmd_plugin.tracking.runs import Run, load_run

__version__ = "0.1.0"
__all__ = ["Algorithm", "ConfigError", "DataError", "PluginError", "Run", "algorithms", "load_config", "load_run",
           "register", "register_algorithm"]
