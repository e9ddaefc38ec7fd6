"""Helpers shared by the benchmark scripts: run one config in this process and read its run folder."""
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_config(config, overrides):
    """Run `config` with `overrides`; returns (summary, metric rows, median training seconds per round, wall s)."""
    from fedcmd_plugin.cli import run_experiment
    from fedcmd_plugin.config import load_config

    conf = load_config(config, overrides)
    started = time.time()
    summary = run_experiment(conf)["summary"]
    rows = json.loads((Path(summary["folder"]) / "metrics.json").read_text())
    seconds = [r["round_seconds"] for r in rows if "round_seconds" in r]
    return summary, rows, statistics.median(seconds), time.time() - started


def machine():
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_average_1min": load}


def write_json(path, document):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
