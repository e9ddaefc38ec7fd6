"""FedCMD in the three-line EasyFL style.

    python applications/fedcmd/main.py                          # digits (embedded), 20 clients
    python applications/fedcmd/main.py configs/fedcmd_fmnist.yaml server.rounds=50
"""
import sys
from pathlib import Path

import easyfl
import fedcmd_plugin

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fedcmd_digits.yaml"

if __name__ == "__main__":
    config = sys.argv[1] if len(sys.argv) > 1 else CONFIG
    fedcmd_plugin.register("fedcmd")
    easyfl.init(fedcmd_plugin.load_config(config, sys.argv[2:]))
    easyfl.run()
