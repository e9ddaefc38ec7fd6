"""FedUReID in the three-line EasyFL style.

    python applications/fedureid/main.py                             # generated pedestrians, 4 edges
    python applications/fedureid/main.py configs/fedureid_baseline_synthetic.yaml server.rounds=20
"""
import sys
from pathlib import Path

import easyfl
import fedcmd_plugin

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fedureid_synthetic.yaml"

if __name__ == "__main__":
    config = sys.argv[1] if len(sys.argv) > 1 else CONFIG
    fedcmd_plugin.register("fedureid")
    easyfl.init(fedcmd_plugin.load_config(config, sys.argv[2:]))
    easyfl.run()
