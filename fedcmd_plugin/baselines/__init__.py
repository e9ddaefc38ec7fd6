"""Baseline algorithms, each a registered plugin on the shared personalisation machinery."""
from fedcmd_plugin.baselines import (apfl, ditto, fedavg, fedbabu, fedbn, feddyn, fedper, fedprox, fedrep,  # noqa: F401
                                     lg_fedavg, local, pfedsim)
