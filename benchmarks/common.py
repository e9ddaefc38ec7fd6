"""Helpers shared by the benchmark scripts: run one config in this process and read its run folder."""
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Workload W1 (FedCMD's Table VI protocol without BatchNorm): FedAvg, Fashion-MNIST, LeNet-5, 100 clients
# Dirichlet(0.1), 10 per round, 5 local epochs, batch 32, plain SGD 0.01, no evaluation, no outputs but metrics.
W1 = {
    "algorithm": "fedavg",
    "data.dataset": "fmnist",
    "data.num_of_clients": 100,
    "data.split_type": "dir",
    "data.alpha": 0.1,
    "data.train_test_split": 0.5,
    "model": "lenet5",
    "server.clients_per_round": 10,
    "server.join_ratio": None,
    "client.local_epoch": 5,
    "client.batch_size": 32,
    "client.optimizer.type": "SGD",
    "client.optimizer.lr": 0.01,
    "client.optimizer.momentum": 0.0,
    "client.optimizer.weight_decay": 0.0,
    "client.straggler_ratio": 0.0,
    "client.finetune_epoch": 0,
    "evaluation.eval_test": False,
    "evaluation.eval_train": False,
    "server.test_every": 1000,
    "output.tensorboard": False,
    "output.save_fig": False,
    "output.save_model": False,
    "output.progress": False,
    "seed": 0,
}


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


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine():
    """What a figure was measured on and with: processor, cores, versions, the load when it started (other work
    slows every step) and the commit of the checkout (with `dirty` when it had uncommitted changes)."""
    import subprocess

    import torch

    from fedcmd_plugin.sweep import machine as run_machine

    try:
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":!benchmarks/results"],  # the benchmark's own output does not count
                                    capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {**run_machine(), "dirty": dirty, "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def write_json(path, document):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def finish(path, document, runs, name):
    """Write `document` to `path`, report the runs that failed (`name(run)` says which) and return the exit status:
    1 when any run failed, so a benchmark with a broken configuration never passes for a measured one."""
    import sys

    write_json(path, document)
    print(f"\nwritten: {path} ({document['benchmark_seconds']:.0f} s)")
    for run in runs:
        if "error" in run:
            print(f"\n{name(run)} failed:\n{run['error']}", file=sys.stderr)
    return 1 if any("error" in run for run in runs) else 0
