"""Shared fixtures: a private working folder per test, small digits configs and a CLI runner.

Runs write their folders below `output.root` and derived data below `data.root`; both are kept inside the test's
tmp_path so the checkout stays clean.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import Processes, run

# The models under test are tiny: one intra-op thread is fastest, and on a busy 2-core machine several threads
# spin against each other (tens of times slower). Runs get the same through `num_threads=1`, other
# subprocesses through OMP_NUM_THREADS.
torch.set_num_threads(1)
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# A FedAvg run on the embedded digits that finishes in seconds: few clients, rounds and epochs, no progress bars.
SMALL_DIGITS = {
    "algorithm": "fedavg",
    "data.dataset": "digits",
    "data.num_of_clients": 10,
    "data.min_size": 20,
    "server.rounds": 2,
    "server.clients_per_round": 5,
    "server.test_every": 1,
    "client.local_epoch": 1,
    "output.progress": False,
    "num_threads": 1,
}


def dotted(mapping):
    """{"a.b": 1} -> ["a.b=1"]: override strings the CLI and `load_config` both accept."""
    return [f"{key}={format_value(value)}" for key, value in mapping.items()]


def format_value(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RunDir(list):
    """The overrides that keep a run's files under `path` (a list of `key=value` strings), plus the path."""

    def __init__(self, path):
        self.path = Path(path)
        self.output_root = self.path / "runs"
        self.data_root = self.path / "data"
        super().__init__([f"output.root={self.output_root}", f"data.root={self.data_root}"])

    def run_folders(self):
        return sorted(p for p in self.output_root.iterdir() if p.is_dir()) if self.output_root.is_dir() else []


@pytest.fixture
def tmp_run_dir(tmp_path, monkeypatch):
    """chdir into tmp_path; returns the overrides putting output.root and data.root below it."""
    monkeypatch.chdir(tmp_path)
    return RunDir(tmp_path)


@pytest.fixture
def small_digits_config(tmp_run_dir):
    """A factory: small_digits_config(server__rounds=3, **{"client.local_epoch": 2}) -> a checked DictConfig.

    Keyword names use `__` for the dots of config keys; the run's files go below the test's tmp_path.
    """
    from fedcmd_plugin import load_config

    def build(source=None, **overrides):
        values = dict(SMALL_DIGITS)
        values.update({key.replace("__", "."): value for key, value in overrides.items()})
        return load_config(source, [*dotted(values), *tmp_run_dir])

    return build


def cli_env(**extra):
    """The environment for `python -m fedcmd_plugin` subprocesses: this one's plus `extra`."""
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_run_dir):
    """run_cli(*args, timeout=...) -> CompletedProcess of `python -m fedcmd_plugin ARGS` in tmp_path (its process
    group reaped, whatever happens)."""

    def run_command(*args, timeout=300, env=None):
        return run([sys.executable, "-m", "fedcmd_plugin", *args], timeout, cwd=tmp_run_dir.path, env=env or cli_env())

    return run_command


@pytest.fixture
def processes(tmp_path):
    """Processes started during the test (logs in tmp_path), reaped when it ends, whatever the outcome."""
    started = Processes(tmp_path, THREAD_ENV)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def cli_here(tmp_run_dir, capsys):
    """Like run_cli, but `fedcmd_plugin.cli.main` in this process: no interpreter start-up, for checks of what
    the command line answers (exit code, stdout, stderr) where the process boundary itself is not under test."""
    from fedcmd_plugin import cli

    def run(*args):
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def make_dispatch(state, algorithm=None, extra=None, **settings):
    """A Dispatch of `state` (not copied) whose RoundSettings default to round 0, seed 0, one local epoch and no
    personal keys (keywords override them); `algorithm`: the algorithm's Settings."""
    from fedcmd_plugin.federation.messages import Dispatch, RoundSettings

    fields = {"round": 0, "seed": 0, "local_epoch": 1, **settings}
    fields["personal_keys"] = tuple(fields.get("personal_keys", ()))
    return Dispatch(state, RoundSettings(**fields), algorithm, dict(extra or {}))
