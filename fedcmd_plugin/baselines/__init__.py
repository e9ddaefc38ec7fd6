"""Baseline algorithms, each a registered plugin on the shared personalisation machinery."""
from fedcmd_plugin.baselines import (  # noqa: F401
                                     apfl,
                                     ditto,
                                     fedap,
                                     fedavg,
                                     fedbabu,
                                     fedbn,
                                     feddyn,
                                     fedfomo,
                                     fedper,
                                     fedprox,
                                     fedrep,
                                     lg_fedavg,
                                     local,
                                     pfedsim,
)
