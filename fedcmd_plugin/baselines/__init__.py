"""Baseline algorithms, each a registered plugin on the shared personalisation machinery."""
from fedcmd_plugin.baselines import (apfl, ditto, fedap, fedavg, fedbabu, fedbn, feddyn,  # noqa: F401
                                     fedfomo, fedper, fedprox, fedrep, lg_fedavg, local, pfedsim)
