"""Remote mode: a server and client services as separate processes on 127.0.0.1, started like in
docker-compose.yml (`fedcmd-plugin remote server|client|trigger`), plus in-process checks of the wire rules.

Every process runs in its own process group and is killed when its fixture ends, whatever the outcome;
every wait has a deadline (tests/processes.py).
"""
import pickle
import socket
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from easyfl.pb import client_service_pb2 as client_pb
from easyfl.pb import client_service_pb2_grpc as client_grpc
from easyfl.pb import common_pb2 as common_pb
from processes import free_port, run
from remote_helpers import (CONFIG, OPERATOR, REPO, RUN, RUN_TIMEOUT, START_TIMEOUT, Cluster, Trap, assert_complete,
                            assert_matches_standalone, client_rows, one_remote_run, read_json, services)

from fedcmd_plugin.federation.messages import Upload

from conftest import make_dispatch


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("remote"))
    try:
        yield cluster.start()
    finally:
        cluster.processes.stop()


# ------------------------------------------------------------------------------------------- loopback runs
@pytest.mark.slow
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
    assert_matches_standalone(folders[0], tmp_path)


@pytest.mark.slow
def test_state_kept_beside_the_model_stays_on_the_clients_and_matches_standalone(tmp_path):
    """APFL: each client keeps its local model and mixing weight (never sent) and is tested with the mixture."""
    extra = ["algorithm=apfl"]
    folder, metrics = one_remote_run(tmp_path, extra)
    assert all("alpha_mean" in row for row in metrics)  # the clients' meta reached the server
    assert not (folder / "checkpoints" / "clients.pt").exists()  # the personal models never left the clients
    assert_matches_standalone(folder, tmp_path, extra)


@pytest.mark.slow
def test_easyfl_stub_triggers_run_and_model_field_is_never_unpickled(cluster, tmp_path):
    from easyfl.communication import grpc_wrapper
    from easyfl.pb import common_pb2, server_service_pb2

    from fedcmd_plugin.remote.transport import Transport
    from fedcmd_plugin.remote.trigger import run_status, wait_for_run

    before = set(cluster.run_folders())
    marker = tmp_path / "unpickled"
    stub = grpc_wrapper.init_stub(grpc_wrapper.TYPE_SERVER, cluster.address)
    request = server_service_pb2.RunRequest(
        model=pickle.dumps(Trap(marker)),  # what EasyFL's tutorial sends: a pickled model
        clients=[server_service_pb2.Client(client_id="first", address=cluster.client_addresses[0], index=0),
                 server_service_pb2.Client(client_id="second", address=cluster.client_addresses[1], index=1)])
    response = stub.Run(request, timeout=60, metadata=OPERATOR)
    assert response.status.code == common_pb2.SC_OK, response.status.message
    # A second request while the run is going is refused.
    again = stub.Run(request, timeout=60, metadata=OPERATOR)
    assert again.status.code == common_pb2.SC_ALREADY_EXISTS
    chan = Transport(4 * 1024 * 1024).channel(cluster.address)
    try:
        final = wait_for_run(chan, cluster.address, OPERATOR, run_status(chan, OPERATOR)["run_id"],
                             timeout=RUN_TIMEOUT)
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
    if dispatch.settings.round >= 1:  # dies inside its second round
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
        summary = read_json(folder / "summary.json")  # the headline covers c000 only, and says so
        assert (summary["final"]["evaluated_clients"], summary["final"]["expected_clients"]) == (1, 2)
        assert summary["final"]["missing_eval_clients"] == ["c001"] and summary["missing_clients"] == {"c001": [2, 3]}
        assert "[over 1 of 2 clients, missing c001]" in result.stdout
        server_log = cluster.processes.log("server")
        assert "round 2: client c001" in server_log and "no answer within server.round_timeout=15 s" in server_log
    finally:
        cluster.processes.stop()


@pytest.mark.slow
def test_trigger_fails_with_one_line_when_no_client_answers(tmp_path):
    """A server without reachable clients: the trigger ends non-zero with the server's reason."""
    port, dead = free_port(), free_port()
    processes = services(tmp_path)
    overrides = [*RUN, f"output.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}",
                 f"remote.server_address=127.0.0.1:{port}", f"remote.client_addresses=[127.0.0.1:{dead}]"]
    try:
        processes.start("server", ["remote", "server", CONFIG, *overrides, f"remote.server_port={port}"])
        processes.wait_listening("server", port, START_TIMEOUT)
        result = run([sys.executable, "-m", "fedcmd_plugin", "remote", "trigger", CONFIG, *overrides, "--timeout", "120"],
                      180, cwd=tmp_path, env=processes.env)
    finally:
        processes.stop()
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run ") and "no client answered" in lines[0], result.stderr
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert read_json(folder / "status.json")["state"] == "failed"


@pytest.mark.slow
def test_stop_ends_the_run_and_its_folder_says_stopped(cluster):
    """Stop right after Run: the answer names the run, which ends after the round in progress (or before the
    first), and neither the server's status nor the run folder calls it complete; then nothing is left to stop."""
    from easyfl.pb import common_pb2, server_service_pb2, server_service_pb2_grpc

    from fedcmd_plugin.remote.transport import Transport
    from fedcmd_plugin.remote.trigger import run_status, stop_run, wait_for_run

    before = set(cluster.run_folders())
    chan = Transport(4 * 1024 * 1024).channel(cluster.address)
    try:
        stub = server_service_pb2_grpc.ServerServiceStub(chan)
        started = stub.Run(server_service_pb2.RunRequest(), timeout=60, metadata=OPERATOR)
        assert started.status.code == common_pb2.SC_OK, started.status.message
        run_id = run_status(chan, OPERATOR)["run_id"]
        assert f"run {run_id} started" in started.status.message
        stopped = stop_run(chan, OPERATOR)
        assert stopped["stopping"] is True and stopped["run_id"] == run_id, stopped
        final = wait_for_run(chan, cluster.address, OPERATOR, run_id, timeout=RUN_TIMEOUT)
        after = stop_run(chan, OPERATOR)
        assert after["stopping"] is False and after["run_id"] == run_id and after["state"] == "stopped", after
        assert stub.Stop(server_service_pb2.StopRequest(), timeout=60,
                         metadata=OPERATOR).status.code == common_pb2.SC_NOT_FOUND
    finally:
        chan.close()
    (folder,) = set(cluster.run_folders()) - before
    status, summary = read_json(folder / "status.json"), read_json(folder / "summary.json")
    assert final["state"] == status["state"] == "stopped"
    assert final["round"] == status["round"] == summary["rounds_run"] < summary["rounds"] == status["rounds"] == 2
    assert status["reason"] == "a Stop request from the operator"


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

    conf = load_config(None, ["remote.client_addresses=[a:1,b:23000]", "remote.tls.ca=ca.pem"])
    check_remote_config(conf)
    assert list(conf.remote.client_addresses) == ["a:1", "b:23000"] and conf.remote.server_port == 22999
    for bad in ("remote.server_address=nohost", "remote.client_port=70000", "remote.client_addresses=[a:b]"):
        with pytest.raises(ConfigError):
            check_remote_config(load_config(None, [bad, "remote.insecure=true"]))
    # Plaintext only on loopback, or when asked for knowingly.
    loopback = ["remote.bind=127.0.0.1", "remote.server_address=[::1]:22999",
                "remote.client_addresses=[localhost:23000,127.0.0.2:23001]"]
    check_remote_config(load_config(None, loopback))
    for outside, key in ((["remote.bind=0.0.0.0"], "remote.bind"),
                         (["remote.client_addresses=[10.0.0.5:23000]"], "remote.client_addresses"),
                         (["remote.server_address=server:22999"], "remote.server_address")):
        with pytest.raises(ConfigError, match=f"'{key}' .* not a loopback address"):
            check_remote_config(load_config(None, [*loopback, *outside]))
        check_remote_config(load_config(None, [*loopback, *outside, "remote.insecure=true"]))


def test_envelope_round_trip():
    import torch

    from fedcmd_plugin.remote.wire import RemoteError, unwrap, wrap

    dispatch = make_dispatch({"a": torch.ones(2)}, extra={"x": torch.zeros(1)}, round=3)
    ticket = "ab" * 32
    back, envelope, initial = unwrap(wrap(dispatch, ticket, ("test", "train"), {"a": torch.full((2,), 5.0)}))
    assert back.settings == dispatch.settings and back.algorithm is None and set(back.extra) == {"x"}
    assert envelope["splits"] == ["test", "train"]
    assert envelope["ticket"] == ticket and torch.equal(initial["a"], torch.full((2,), 5.0))
    assert unwrap(wrap(dispatch, ticket))[2] is None
    for bad in (dispatch.to_bytes(), wrap(dispatch, "not hex" * 9)):
        with pytest.raises(RemoteError, match="ticket"):
            unwrap(bad)




# ------------------------------------------------------------------------------------- peers that disappear
STATE = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
SIZES = {"c000": {"train": 40, "test": 30}, "c001": {"train": 50, "test": 20}}
LIMIT = 1024 * 1024


def accepted():
    return client_pb.OperateResponse(status=common_pb.Status(code=common_pb.SC_OK))


class Vanishing(client_grpc.ClientServiceServicer):
    """Accepts the round's request, then is never heard of again."""

    def Operate(self, request, context):
        return accepted()


class Answering(client_grpc.ClientServiceServicer):
    """Accepts the request and soon delivers its upload to the round (as the server's Upload would)."""

    def __init__(self, router, cid):
        self.router, self.cid = router, cid

    def Operate(self, request, context):
        key = (request.config.task_id, request.config.round_id, "train")
        upload = Upload(self.cid, SIZES[self.cid]["train"], {k: v.clone() for k, v in STATE.items()})
        threading.Timer(0.2, self.router.deliver, (key, self.cid), {"value": upload}).start()
        return accepted()


def test_a_round_goes_on_without_a_client_that_vanished_mid_round():
    """One client accepts and vanishes, another cannot be reached at all, a third answers: after
    server.round_timeout the round goes on with the answer it has, naming the missing clients."""
    from fedcmd_plugin import load_config
    from fedcmd_plugin.remote import auth, validation
    from fedcmd_plugin.remote.fleet import RemoteFleet
    from fedcmd_plugin.remote.router import UploadRouter
    from fedcmd_plugin.remote.transport import Transport
    from fedcmd_plugin.remote.wire import Endpoint

    sizes = {**SIZES, "c002": SIZES["c000"]}
    router, transport, servers, notes = UploadRouter(), Transport(LIMIT), [], {}
    ports = {}
    for cid, servicer in (("c000", Vanishing()), ("c001", Answering(router, "c001"))):
        ports[cid] = free_port()
        server = transport.server("127.0.0.1", ports[cid], 2)
        client_grpc.add_ClientServiceServicer_to_server(servicer, server)
        server.start()
        servers.append(server)
    ports["c002"] = free_port()  # nothing listens there
    endpoints = [Endpoint(cid, f"127.0.0.1:{port}", i) for i, (cid, port) in enumerate(sorted(ports.items()))]
    conf = load_config(None, ["server.round_timeout=1", "data.num_of_clients=3"])
    fleet = RemoteFleet(conf, endpoints, transport, "server-token", router, auth.Tickets("run1"),
                        validation.Policy(STATE, sizes, "classification", 0, 1e6), dict(STATE),
                        note=lambda round_index, values: notes.update(values))
    try:
        started = time.monotonic()
        uploads = fleet.train({cid: make_dispatch(dict(STATE)) for cid in ports})
        waited = time.monotonic() - started
    finally:
        fleet.close()
        for server in servers:
            server.stop(0).wait(5)
    assert [u.cid for u in uploads] == ["c001"]
    assert notes["missing_clients"] == ["c000", "c002"]
    assert 1 <= waited < 30  # the round's deadline, not forever


@pytest.mark.slow
def test_a_client_whose_server_vanished_gives_up_its_upload_and_serves_on(monkeypatch, tmp_path):
    """The server accepts the connection and never answers: the upload ends at its deadline, and the next
    request is worked off as usual."""
    from fedcmd_plugin.remote import client as client_module
    from fedcmd_plugin.remote.kept_store import KeptStore
    from fedcmd_plugin.remote.transport import Transport
    from fedcmd_plugin.remote.wire import wrap

    monkeypatch.setattr(client_module, "UPLOAD_TIMEOUT", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    trainer = SimpleNamespace(cid="c000", kept={}, run_round=lambda dispatch: Upload("c000", 40, dict(dispatch.state)))
    service = client_module.ClientService(lambda cid, state: trainer, {}, {0: "c000"},
                                          f"127.0.0.1:{silent.getsockname()[1]}", Transport(LIMIT),
                                          KeptStore(tmp_path))
    sent, send = [], service.send
    service.send = lambda request, metadata: sent.append(send(request, metadata))

    def operate(round_id):
        request = client_pb.OperateRequest(
            type=client_pb.OP_TYPE_TRAIN, model=wrap(make_dispatch(dict(STATE), round=round_id), "ab" * 32),
            data_index=0, config=client_pb.OperateConfig(task_id="run1", round_id=round_id))
        assert service.Operate(request, None).status.code == common_pb.SC_OK
        deadline = time.monotonic() + 30
        while len(sent) <= round_id and time.monotonic() < deadline:
            time.sleep(0.05)
        return time.monotonic()

    try:
        started = time.monotonic()
        assert operate(0) - started < 20 and sent == [False]  # gave up after UPLOAD_TIMEOUT
        operate(1)
        assert sent == [False, False]  # the service still works requests off
    finally:
        silent.close()


def test_federation_never_imports_the_transport():
    """The round gets its fleet handed over: nothing in federation/ knows about remote mode's modules."""
    for path in sorted((REPO / "fedcmd_plugin" / "federation").glob("*.py")):
        assert "fedcmd_plugin.remote" not in path.read_text(encoding="utf-8"), path.name


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
