"""Baseline algorithms, each a registered plugin on the shared personalisation machinery."""
from fedcmd_plugin.baselines import fedavg, fedbabu, fedbn, fedper, fedrep, lg_fedavg, local, pfedsim  # noqa: F401
from fedcmd_plugin.baselines import fedap, fedfomo  # noqa: F401
