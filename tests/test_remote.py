"""Remote mode: a server and client services as separate processes on 127.0.0.1, started like in
docker-compose.yml (`fedcmd-plugin remote server|client|trigger`), plus in-process checks of the wire rules.

Every process runs in its own process group and is killed when its fixture ends, whatever the outcome;
every wait has a deadline.
"""
import csv
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fedavg_digits.yaml"
START_TIMEOUT = 120  # seconds for a service to listen (imports torch and builds the data on a loaded machine)
RUN_TIMEOUT = 300  # seconds for a whole small run

# Small FedAvg run on the embedded digits: 2 clients, 2 rounds, evaluated every round.
RUN = ["data.num_of_clients=2", "server.clients_per_round=2", "server.rounds=2", "server.test_every=1",
       "client.local_epoch=2", "output.progress=false", "output.tensorboard=false", "output.save_fig=false",
       "remote.bind=127.0.0.1", "num_threads=1"]  # one torch thread: the processes share the cores


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Processes:
    """Services started in their own process groups, with logs in `folder`; `stop()` kills them all."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.procs = {}

    def start(self, name, args, script=None):
        log = open(self.folder / f"{name}.log", "w")
        command = [sys.executable, str(script)] if script else [sys.executable, "-m", "fedcmd_plugin"]
        proc = subprocess.Popen([*command, *map(str, args)], cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ))
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name):
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_listening(self, name, port, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited with {self.procs[name].returncode} before listening:\n{self.log(name)}")
            if listening(port):
                return
            time.sleep(0.5)
        pytest.fail(f"{name} did not listen on {port} within {timeout} s:\n{self.log(name)}")

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # also anything the service may have spawned
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)


class Cluster:
    """A server and two client services on free loopback ports, sharing one folder and config."""

    def __init__(self, folder, extra=(), client_scripts=None):
        self.folder = Path(folder)
        self.server_port, self.client_ports = free_port(), [free_port(), free_port()]
        self.address = f"127.0.0.1:{self.server_port}"
        self.overrides = [*RUN, f"output.root={self.folder / 'runs'}", f"data.root={self.folder / 'data'}",
                          f"remote.server_address={self.address}", *extra]
        self.processes = Processes(self.folder)
        self.client_scripts = client_scripts or {}

    @property
    def client_addresses(self):
        return [f"127.0.0.1:{port}" for port in self.client_ports]

    def start(self):
        self.processes.start("server", ["remote", "server", CONFIG, *self.overrides,
                                        f"remote.server_port={self.server_port}"])
        for index, port in enumerate(self.client_ports):
            self.processes.start(f"client{index}", ["remote", "client", CONFIG, "--index", index, *self.overrides,
                                                    f"remote.client_port={port}"],
                                 script=self.client_scripts.get(index))
        self.processes.wait_listening("server", self.server_port)
        for index, port in enumerate(self.client_ports):
            self.processes.wait_listening(f"client{index}", port)
        return self

    def trigger(self, *extra, timeout=RUN_TIMEOUT):
        addresses = "[" + ",".join(self.client_addresses) + "]"
        return subprocess.run([sys.executable, "-m", "fedcmd_plugin", "remote", "trigger", CONFIG, *self.overrides,
                               f"remote.client_addresses={addresses}", "--timeout", str(timeout), *extra],
                              cwd=self.folder, capture_output=True, text=True, timeout=timeout + 60,
                              stdin=subprocess.DEVNULL)

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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("remote"))
    try:
        yield cluster.start()
    finally:
        cluster.processes.stop()


# ------------------------------------------------------------------------------------------- loopback runs
def test_loopback_run_matches_standalone(cluster, tmp_path):
    result = cluster.trigger()
    assert result.returncode == 0, f"trigger failed:\n{result.stdout}\n{result.stderr}\n{cluster.logs()}"
    assert "complete" in result.stdout
    folders = cluster.run_folders()
    assert len(folders) == 1
    metrics = assert_complete(folders[0])
    assert all(row["clients"] == 2 and "missing_clients" not in row for row in metrics)
    assert (folders[0] / "checkpoints" / "global.pt").is_file()
    assert str(folders[0]) in result.stdout

    # The same config in standalone mode: the same per-client results, round by round.
    standalone = subprocess.run([sys.executable, "-m", "fedcmd_plugin", "run", CONFIG, *RUN,
                                 f"output.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                stdin=subprocess.DEVNULL)
    assert standalone.returncode == 0, standalone.stderr
    (local,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    remote_rows, local_rows = client_rows(folders[0]), client_rows(local)
    assert len(remote_rows) == len(local_rows) == 4
    for mine, theirs in zip(remote_rows, local_rows):
        assert (mine["round"], mine["cid"], mine["test_correct"]) == (theirs["round"], theirs["cid"],
                                                                       theirs["test_correct"])
        assert float(mine["test_loss"]) == pytest.approx(float(theirs["test_loss"]), rel=1e-5)


def test_easyfl_stub_triggers_run_and_model_field_is_never_unpickled(cluster, tmp_path):
    from easyfl.communication import grpc_wrapper
    from easyfl.pb import common_pb2, server_service_pb2

    from fedcmd_plugin.remote.trigger import wait_for_run
    from fedcmd_plugin.remote.wire import channel

    before = set(cluster.run_folders())
    marker = tmp_path / "unpickled"
    stub = grpc_wrapper.init_stub(grpc_wrapper.TYPE_SERVER, cluster.address)
    request = server_service_pb2.RunRequest(
        model=pickle.dumps(Trap(marker)),  # what EasyFL's tutorial sends: a pickled model
        clients=[server_service_pb2.Client(client_id="first", address=cluster.client_addresses[0], index=0),
                 server_service_pb2.Client(client_id="second", address=cluster.client_addresses[1], index=1)])
    response = stub.Run(request, timeout=60)
    assert response.status.code == common_pb2.SC_OK, response.status.message
    # A second request while the run is going is refused.
    again = stub.Run(request, timeout=60)
    assert again.status.code == common_pb2.SC_ALREADY_EXISTS
    chan = channel(cluster.address)
    try:
        final = wait_for_run(chan, cluster.address, response.status.message.split()[1], timeout=RUN_TIMEOUT)
    finally:
        chan.close()
    assert final["state"] == "complete"
    (folder,) = set(cluster.run_folders()) - before
    assert str(folder) == final["folder"]
    assert_complete(folder)
    assert not marker.exists(), "the server unpickled RunRequest.model"
    assert "ignored the run request's model field" in cluster.processes.log("server")


DYING_CLIENT = """
import os, sys
from fedcmd_plugin.federation.client import FederatedClient

original = FederatedClient.run_round

def run_round(self, dispatch):
    if int(dispatch.meta.get("round", 0)) >= 1:  # dies inside its second round
        os._exit(17)
    return original(self, dispatch)

FederatedClient.run_round = run_round
from fedcmd_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_client_dying_mid_round_is_left_out(tmp_path):
    script = tmp_path / "dying_client.py"
    script.write_text(DYING_CLIENT)
    cluster = Cluster(tmp_path, extra=["server.round_timeout=15", "server.rounds=3"], client_scripts={1: script})
    try:
        cluster.start()
        result = cluster.trigger()
        assert result.returncode == 0, f"trigger failed:\n{result.stdout}\n{result.stderr}\n{cluster.logs()}"
        assert cluster.processes.procs["client1"].wait(timeout=30) == 17
        (folder,) = cluster.run_folders()
        metrics = assert_complete(folder, rounds=3)
        assert metrics[0]["clients"] == 2 and "missing_clients" not in metrics[0]
        for row in metrics[1:]:
            assert row["clients"] == 1 and row["missing_clients"] == ["c001"]
            assert row["missing_eval_clients"] == ["c001"]
        assert metrics[1]["round_seconds"] >= 15  # waited server.round_timeout for the silent client
        rows = client_rows(folder)
        assert [r["cid"] for r in rows if r["round"] == "3"] == ["c000"]
        server_log = cluster.processes.log("server")
        assert "round 2: client c001" in server_log and "no answer within server.round_timeout=15 s" in server_log
    finally:
        cluster.processes.stop()


@pytest.mark.slow
def test_trigger_fails_with_one_line_when_no_client_answers(tmp_path):
    """A server without reachable clients: the trigger ends non-zero with the server's reason."""
    port, dead = free_port(), free_port()
    processes = Processes(tmp_path)
    overrides = [*RUN, f"output.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}",
                 f"remote.server_address=127.0.0.1:{port}"]
    try:
        processes.start("server", ["remote", "server", CONFIG, *overrides, f"remote.server_port={port}"])
        processes.wait_listening("server", port)
        result = subprocess.run([sys.executable, "-m", "fedcmd_plugin", "remote", "trigger", CONFIG, *overrides,
                                 f"remote.client_addresses=[127.0.0.1:{dead}]", "--timeout", "120"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    finally:
        processes.stop()
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run ") and "no client answered" in lines[0], result.stderr
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert read_json(folder / "status.json")["state"] == "failed"


# ------------------------------------------------------------------------------- nothing is unpickled (in-process)
@pytest.fixture
def grpc_service():
    """serve(add, servicer) -> address of an in-process gRPC server on a free loopback port."""
    from fedcmd_plugin.remote.wire import grpc_server

    servers = []

    def serve(add, servicer):
        port = free_port()
        server = grpc_server("127.0.0.1", port, 4)
        add(servicer, server)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield serve
    for server in servers:
        server.stop(0).wait(5)


def test_server_upload_rejects_pickled_payloads(grpc_service, tmp_path):
    import torch
    from easyfl.pb import common_pb2, server_service_pb2, server_service_pb2_grpc

    from fedcmd_plugin.federation.messages import Upload
    from fedcmd_plugin.remote.server import ServerService
    from fedcmd_plugin.remote.wire import channel

    service = ServerService(conf=None, users=["c000", "c001"])
    address = grpc_service(server_service_pb2_grpc.add_ServerServiceServicer_to_server, service)
    waiter = service.router.expect(("run1", 0, "train"), ["c000", "c001"])
    test_waiter = service.router.expect(("run1", 0, "test"), ["c000"])
    marker = tmp_path / "unpickled"
    chan = channel(address)
    stub = server_service_pb2_grpc.ServerServiceStub(chan)

    def upload(cid, data, kind=common_pb2.DATA_TYPE_PARAMS, round_id=0):
        content = server_service_pb2.UploadContent(data=data, type=kind, data_size=1)
        request = server_service_pb2.UploadRequest(task_id="run1", round_id=round_id, client_id=cid, content=content)
        return stub.Upload(request, timeout=30).status

    try:
        for kind in (common_pb2.DATA_TYPE_PARAMS, common_pb2.DATA_TYPE_PERFORMANCE):
            answer = upload("c000", pickle.dumps(Trap(marker)), kind)
            assert answer.code == common_pb2.SC_INVALID_REQUEST and "rejected" in answer.message
        assert not marker.exists(), "the server unpickled an upload"
        assert waiter.results == {} and test_waiter.results == {}

        valid = Upload("c000", 7, {"w": torch.ones(2)}, meta={"images": 7}).to_bytes(with_kept=False)
        assert upload("c001", valid).code == common_pb2.SC_INVALID_REQUEST  # an upload of c000 sent as c001
        assert upload("c000", valid, round_id=1).code == common_pb2.SC_NOT_FOUND  # no round 2 is waiting
        assert upload("c000", valid).code == common_pb2.SC_OK
        assert upload("c000", valid).code == common_pb2.SC_NOT_FOUND  # only once
        assert waiter.results["c000"].num_samples == 7
        assert torch.equal(waiter.results["c000"].state["w"], torch.ones(2))
        assert upload("c000", b'{"test_correct": 3, "test_total": 4}', common_pb2.DATA_TYPE_PERFORMANCE).code == \
            common_pb2.SC_OK
        assert test_waiter.results["c000"] == {"test_correct": 3, "test_total": 4, "cid": "c000"}
    finally:
        chan.close()


def test_client_operate_rejects_pickled_payloads(grpc_service, tmp_path):
    import torch
    from easyfl.pb import client_service_pb2, client_service_pb2_grpc, common_pb2

    from fedcmd_plugin.federation.messages import Dispatch
    from fedcmd_plugin.remote.client import ClientService
    from fedcmd_plugin.remote.wire import channel, wrap

    started = []
    service = ClientService(make_client=lambda cid, state: None, own_initial={}, hosted={0: "c000"},
                            server_address="127.0.0.1:9")
    service.work = lambda *job: (started.append(job), service.busy.discard(job[0]))  # no training, no upload
    address = grpc_service(client_service_pb2_grpc.add_ClientServiceServicer_to_server, service)
    marker = tmp_path / "unpickled"
    chan = channel(address)
    stub = client_service_pb2_grpc.ClientServiceStub(chan)

    def operate(model, index=0):
        request = client_service_pb2.OperateRequest(type=client_service_pb2.OP_TYPE_TRAIN, model=model,
                                                    data_index=index,
                                                    config=client_service_pb2.OperateConfig(task_id="run1"))
        return stub.Operate(request, timeout=30).status

    try:
        answer = operate(pickle.dumps(Trap(marker)))
        assert answer.code == common_pb2.SC_INVALID_REQUEST and "not a tensor archive" in answer.message
        assert not marker.exists(), "the client unpickled a request"
        valid = wrap(Dispatch({"w": torch.zeros(3)}, {"round": 0})).to_bytes()
        assert operate(valid, index=1).code == common_pb2.SC_INVALID_REQUEST  # another client's data index
        assert started == []
        assert operate(valid).code == common_pb2.SC_OK
        deadline = time.monotonic() + 10
        while not started and time.monotonic() < deadline:
            time.sleep(0.05)
        cid, kind, task_id, round_id, dispatch, envelope, initial = started[0]
        assert (cid, kind, task_id, round_id, initial) == ("c000", "train", "run1", 0, None)
        assert dispatch.meta == {"round": 0} and torch.equal(dispatch.state["w"], torch.zeros(3))
    finally:
        chan.close()


# ------------------------------------------------------------------------------------------------- small pieces
def test_client_index_from_option_environment_or_host_name(monkeypatch):
    from fedcmd_plugin.errors import ConfigError
    from fedcmd_plugin.remote.cli import client_indexes, pop_index

    assert pop_index(["cfg.yaml", "--index", "3", "a.b=1"], None) == (["cfg.yaml", "a.b=1"], "3")
    assert pop_index(["--index=2", "cfg.yaml"], None) == (["cfg.yaml"], "2")
    assert client_indexes("3") == [3] and client_indexes("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(ConfigError, match="--index"):
        client_indexes("x")
    monkeypatch.setenv("FEDCMD_CLIENT_INDEX", "4")
    assert client_indexes(None) == [4] and client_indexes("1") == [1]
    monkeypatch.delenv("FEDCMD_CLIENT_INDEX")
    monkeypatch.setenv("HOSTNAME", "fedcmd-client-12")
    assert client_indexes(None) == [12]
    monkeypatch.setenv("HOSTNAME", "fedcmd-client-12.fedcmd-client.fedcmd.svc")
    assert client_indexes(None) == [12]
    monkeypatch.setenv("HOSTNAME", "server")
    with pytest.raises(ConfigError, match="no client index"):
        client_indexes(None)


def test_remote_keys_are_checked():
    from fedcmd_plugin import ConfigError, load_config
    from fedcmd_plugin.remote.roles import check_remote_config

    conf = load_config(None, ["remote.client_addresses=[a:1,b:23000]"])
    check_remote_config(conf)
    assert list(conf.remote.client_addresses) == ["a:1", "b:23000"] and conf.remote.server_port == 22999
    for bad in ("remote.server_address=nohost", "remote.client_port=70000", "remote.client_addresses=[a:b]"):
        with pytest.raises(ConfigError):
            check_remote_config(load_config(None, [bad]))


def test_envelope_round_trip():
    import torch

    from fedcmd_plugin.federation.messages import Dispatch
    from fedcmd_plugin.remote.wire import unwrap, wrap

    dispatch = Dispatch({"a": torch.ones(2)}, {"round": 3}, {"x": torch.zeros(1)})
    back, envelope, initial = unwrap(Dispatch.from_bytes(
        wrap(dispatch, ("test", "train"), {"a": torch.full((2,), 5.0)}).to_bytes()))
    assert back.meta == {"round": 3} and set(back.extra) == {"x"} and envelope["splits"] == ["test", "train"]
    assert torch.equal(initial["a"], torch.full((2,), 5.0))
    assert unwrap(Dispatch.from_bytes(wrap(dispatch).to_bytes()))[2] is None




def deployment_commands():
    """(where, command) of every `fedcmd-plugin remote ...` in docker-compose.yml and kubernetes/."""
    import yaml

    found = []
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        found.append((f"docker-compose {name}", service["command"]))
    for path in sorted((REPO / "kubernetes").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            spec = (obj or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                found.append((f"{path.name} {container['name']}", container.get("command", [])))
    return [(where, command) for where, command in found if command[:2] == ["fedcmd-plugin", "remote"]]


def test_deployment_commands_parse_with_this_cli():
    """The commands docker-compose.yml and kubernetes/ run are accepted by the CLI and their configs load."""
    from fedcmd_plugin.cli import build_parser
    from fedcmd_plugin.config import load_config
    from fedcmd_plugin.remote.cli import client_indexes, pop_index
    from fedcmd_plugin.remote.roles import check_remote_config

    commands = deployment_commands()
    roles = sorted({command[2] for _, command in commands})
    assert roles == ["client", "server", "trigger"], commands
    for where, command in commands:
        args = build_parser().parse_args([str(item) for item in command[1:]])
        items, given = pop_index(args.items, getattr(args, "index", None)) if args.role == "client" else \
            (args.items, None)
        config, overrides = items[0], items[1:]
        config = config.replace("/app/k8s-config/", "kubernetes/config/")
        # docker-compose's ${FEDCMD_NUM_CLIENTS:-2} is its own default here.
        overrides = [o.replace("${FEDCMD_NUM_CLIENTS:-2}", "2") for o in overrides]
        check_remote_config(load_config(REPO / config, overrides))
        if args.role == "client" and given is not None:
            assert client_indexes(given)[0] in (0, 1), where
