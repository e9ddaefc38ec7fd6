"""Remote-mode test helpers: services as real processes on free 127.0.0.1 ports, and what their run folders hold.

The processes are `processes.Processes` with the roles' tokens in their environment (`services(folder)`): each
runs in its own process group, and the fixtures reap them in a `finally`, whatever the outcome.
"""
import csv
import json
import sys
from pathlib import Path

from processes import Processes, free_port, run
from pytest import approx

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fedavg_digits.yaml"
START_TIMEOUT = 300  # seconds for a service to listen (imports torch and builds the data on a loaded machine)
RUN_TIMEOUT = 300  # seconds for a whole small run

# Every role reads its tokens from these variables (the defaults of remote.operator_token / server_token).
TOKENS = {"FEDCMD_OPERATOR_TOKEN": "operator-token-for-the-tests", "FEDCMD_SERVER_TOKEN": "server-token-for-the-tests"}
OPERATOR = (("authorization", "Bearer " + TOKENS["FEDCMD_OPERATOR_TOKEN"]),)

# Small FedAvg run on the embedded digits: 2 clients, 2 rounds, evaluated every round.
RUN = ["data.num_of_clients=2", "server.clients_per_round=2", "server.rounds=2", "server.test_every=1",
       "client.local_epoch=2", "output.progress=false", "output.tensorboard=false", "output.save_fig=false",
       "remote.bind=127.0.0.1", "num_threads=1"]  # one torch thread: the processes share the cores


def services(folder):
    """Processes whose logs go to `folder`, with the tokens in their environment."""
    return Processes(folder, TOKENS)


class Cluster:
    """A server and two client services on free loopback ports, sharing one folder and config; `roles` adds
    overrides for one role only ({"server"|"client"|"trigger": [...]}, e.g. its certificate)."""

    def __init__(self, folder, extra=(), client_scripts=None, roles=None, config=CONFIG):
        self.folder = Path(folder)
        self.config = config
        self.server_port, self.client_ports = free_port(), [free_port(), free_port()]
        self.address = f"127.0.0.1:{self.server_port}"
        self.overrides = [*RUN, f"output.root={self.folder / 'runs'}", f"data.root={self.folder / 'data'}",
                          f"remote.server_address={self.address}",
                          "remote.client_addresses=[" + ",".join(self.client_addresses) + "]", *extra]
        self.processes = services(self.folder)
        self.client_scripts = client_scripts or {}
        self.roles = roles or {}

    @property
    def client_addresses(self):
        return [f"127.0.0.1:{port}" for port in self.client_ports]

    def start(self):
        for index, port in enumerate(self.client_ports):
            self.processes.start(f"client{index}", ["remote", "client", self.config, "--index", index,
                                                    *self.overrides, *self.roles.get("client", ()),
                                                    f"remote.client_port={port}"],
                                 script=self.client_scripts.get(index))
        self.start_server()
        for index, port in enumerate(self.client_ports):
            self.processes.wait_listening(f"client{index}", port, START_TIMEOUT)
        return self

    def start_server(self, *options):
        """(Re)start the server service (e.g. with --resume FOLDER) and wait until it listens."""
        self.processes.start("server", ["remote", "server", self.config, *self.overrides,
                                        *self.roles.get("server", ()), f"remote.server_port={self.server_port}",
                                        *options])
        self.processes.wait_listening("server", self.server_port, START_TIMEOUT)

    def trigger_command(self, timeout=RUN_TIMEOUT):
        return ["remote", "trigger", self.config, *self.overrides, *self.roles.get("trigger", ()), "--timeout", timeout]

    def trigger(self, timeout=RUN_TIMEOUT):
        """Run the trigger to its end: the CompletedProcess."""
        return run([sys.executable, "-m", "fedcmd_plugin", *self.trigger_command(timeout)], timeout + 60,
                   cwd=self.folder, env=self.processes.env)

    def run_folders(self):
        root = self.folder / "runs"
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def logs(self):
        return "\n".join(f"--- {name}\n{self.processes.log(name)[-3000:]}" for name in self.processes.procs)


def read_json(path):
    return json.loads(Path(path).read_text())


def client_rows(folder):
    with open(Path(folder) / "clients.csv") as handle:
        return list(csv.DictReader(handle))


def assert_complete(folder, rounds=2):
    assert read_json(folder / "status.json")["state"] == "complete"
    final = read_json(folder / "summary.json")["final"]
    assert 0 <= final["accuracy"] <= 100 and final["evaluated_clients"] >= 1
    metrics = read_json(folder / "metrics.json")
    assert [row["round"] for row in metrics] == list(range(1, rounds + 1))
    assert all(row["round_seconds"] > 0 for row in metrics)
    return metrics


class Trap:
    """Unpickling this creates `path`: proof that a payload was (or was not) unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def assert_matches_standalone(remote, tmp_path, extra=()):
    """The same config in standalone mode gives the remote run's per-client results, round by round."""
    standalone = run([sys.executable, "-m", "fedcmd_plugin", "run", CONFIG, *RUN, *extra,
                      f"output.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"], RUN_TIMEOUT, cwd=tmp_path)
    assert standalone.returncode == 0, standalone.stderr
    (local,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    remote_rows, local_rows = client_rows(remote), client_rows(local)
    assert len(remote_rows) == len(local_rows) == 4
    for mine, theirs in zip(remote_rows, local_rows):
        assert (mine["round"], mine["cid"], mine["test_correct"]) == (theirs["round"], theirs["cid"],
                                                                       theirs["test_correct"])
        assert float(mine["test_loss"]) == approx(float(theirs["test_loss"]), rel=1e-5)


def one_remote_run(tmp_path, extra):
    """A fresh loopback cluster runs the config once with `extra` overrides and is stopped: the run folder and its
    metric rows, after checking the run completed with both clients answering and no upload rejected."""
    cluster = Cluster(tmp_path / "remote", extra=extra)
    cluster.folder.mkdir()
    try:
        cluster.start()
        result = cluster.trigger()
        assert result.returncode == 0, f"trigger failed:\n{result.stdout}\n{result.stderr}\n{cluster.logs()}"
        (folder,) = cluster.run_folders()
        metrics = assert_complete(folder)
        assert all(row["clients"] == 2 and "rejected_uploads" not in row for row in metrics), cluster.logs()
    finally:
        cluster.processes.stop()
    return folder, metrics
