"""Baseline algorithms, each a registered plugin on the shared personalisation machinery."""
from fedcmd_plugin.baselines import fedavg, local  # noqa: F401  (importing registers them)
