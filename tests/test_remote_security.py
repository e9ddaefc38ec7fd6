"""Remote-mode security: tokens, upload tickets, checks of every answer, TLS and the development certificates.

In-process gRPC services on free 127.0.0.1 ports take every attack and must answer with the expected status
code; then a mutual-TLS cluster of real processes runs while an attacker holding a valid certificate (but no
token or ticket) tries everything, and its result must equal an unattacked run's.
"""
import json
import pickle
import threading
import time
from types import SimpleNamespace

import grpc
import pytest
import torch
from easyfl.pb import client_service_pb2 as client_pb
from easyfl.pb import client_service_pb2_grpc as client_grpc
from easyfl.pb import common_pb2 as common_pb
from easyfl.pb import server_service_pb2 as server_pb
from easyfl.pb import server_service_pb2_grpc as server_grpc
from processes import free_port
from remote_helpers import OPERATOR, RUN_TIMEOUT, TOKENS, Cluster, Trap, assert_complete, client_rows, read_json

from fedcmd_plugin import ConfigError, load_config
from fedcmd_plugin.fedcmd.client import BatchScores, FedCMDReport, FedCMDSettings, Scoring
from fedcmd_plugin.federation.messages import TrainingReport, Upload, pack
from fedcmd_plugin.personalized.client import SignatureSettings
from fedcmd_plugin.registry import get_algorithm
from fedcmd_plugin.remote import auth, validation
from fedcmd_plugin.remote.certs import make_certificates
from fedcmd_plugin.remote.transport import TLS, Transport, transport_for
from fedcmd_plugin.remote.trigger import stop_run
from fedcmd_plugin.remote.wire import STATUS_METHOD, to_json, wrap

from conftest import make_dispatch

SERVER = (("authorization", "Bearer " + TOKENS["FEDCMD_SERVER_TOKEN"]),)
LIMIT = 1024 * 1024  # message limit of the in-process services
SENDER = Transport(64 * LIMIT)  # the attackers' side: sends what the services must refuse themselves
STATE = {"w": torch.ones(2, 3), "b": torch.zeros(3), "steps": torch.tensor(4)}
SIZES = {"c000": {"train": 40, "test": 30}, "c001": {"train": 50, "test": 20}}
UNAUTHENTICATED, PERMISSION_DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def code_of(call):
    """The gRPC status code a call ends with (OK when it returns)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two independent development sets: `good` (the deployment's) and `other` (another CA)."""
    root = tmp_path_factory.mktemp("pki")
    make_certificates(root / "good", 2, server_names=["server"], client_names=["client{i}"])
    make_certificates(root / "other", 1)
    return root


# ------------------------------------------------------------------------------ the server service, in process
@pytest.fixture
def server_service():
    """A FedCMD ServerService (its uploads may carry a vote) with its guard on a free port, a run `run1` and
    (service, stub, channel)."""
    from fedcmd_plugin.remote.server import start

    conf = load_config(None, ["algorithm=fedcmd", "remote.bind=127.0.0.1", f"remote.server_port={free_port()}",
                              "data.num_of_clients=2",
                              "remote.client_addresses=[127.0.0.1:23000,127.0.0.1:23001]"])
    data = SimpleNamespace(train=SimpleNamespace(users=["c000", "c001"], size=lambda cid: SIZES[cid]["train"]),
                           test=SimpleNamespace(size=lambda cid: SIZES[cid]["test"]),
                           info=SimpleNamespace(task="classification"))
    transport = Transport(LIMIT)
    experiment = SimpleNamespace(conf=conf, data=data, algorithm=get_algorithm(conf.algorithm))
    service, grpc_srv = start(experiment, transport, TOKENS["FEDCMD_OPERATOR_TOKEN"], TOKENS["FEDCMD_SERVER_TOKEN"])
    service.tickets = auth.Tickets("run1")
    chan = SENDER.channel(f"127.0.0.1:{conf.remote.server_port}")
    try:
        yield service, server_grpc.ServerServiceStub(chan), chan
    finally:
        chan.close()
        grpc_srv.stop(0).wait(5)


class Round:
    """One waiting request of run1 to c000 and c001, and signed uploads for it."""

    def __init__(self, service, index, kind="train", splits=("test",), algorithm=None):
        self.service, self.index, self.kind = service, index, kind
        policy = validation.Policy(STATE, SIZES, "classification", 3, 1e6)
        dispatch = make_dispatch(STATE, algorithm, round=index)
        self.waiter = service.router.expect(("run1", index, kind), {
            cid: policy.expect(kind, cid, dispatch, splits) for cid in SIZES})

    def request(self, cid, data, extra=b"", round_id=None, task_id="run1"):
        kind = common_pb.DATA_TYPE_PARAMS if self.kind == "train" else common_pb.DATA_TYPE_PERFORMANCE
        content = server_pb.UploadContent(data=data, type=kind, extra=extra)
        return server_pb.UploadRequest(task_id=task_id, round_id=self.index if round_id is None else round_id,
                                       client_id=cid, content=content)

    def signature(self, cid, request, ticket_of=None):
        ticket = self.service.tickets.issue(self.index, self.kind, ticket_of or cid)
        return ((auth.UPLOAD_MAC, auth.sign_upload(ticket, request)),)

    def send(self, stub, request, metadata=()):
        """(gRPC code, response status code or None)."""
        try:
            return grpc.StatusCode.OK, stub.Upload(request, timeout=30, metadata=metadata).status.code
        except grpc.RpcError as exc:
            return exc.code(), None

    def signed(self, stub, cid, data, **fields):
        request = self.request(cid, data, **fields)
        return self.send(stub, request, self.signature(cid, request))


def upload(cid="c000", num_samples=40, state=None, **parts):
    return Upload(cid, num_samples, dict(STATE if state is None else state), **parts).to_bytes()


def upload_with(**header):
    """An honest upload's archive with header entries replaced: what no typed Upload can hold."""
    return pack({"state": dict(STATE), "extra": {}, "kept": {}}, {**Upload("c000", 40, {}).header(), **header})


SCORES = BatchScores(((0.1, 0.2, 0.3), (0.3, 0.2, 0.1)), ((0.0, 0.0, 0.1), (0.2, 0.0, 0.0)))


def test_unsigned_forged_and_misdirected_uploads_are_unauthenticated(server_service):
    service, stub, _ = server_service
    rnd = Round(service, 0)
    good = upload()
    request = rnd.request("c000", good)
    assert rnd.send(stub, request) == (UNAUTHENTICATED, None)  # no signature
    assert rnd.send(stub, request, ((auth.UPLOAD_MAC, "00" * 32),)) == (UNAUTHENTICATED, None)  # forged
    # Signed by c001 with its own ticket, but sent as c000 (an upload for another client).
    assert rnd.send(stub, request, rnd.signature("c000", request, ticket_of="c001")) == (UNAUTHENTICATED, None)
    # A real signature moved to another round, another run or another payload.
    for moved in (rnd.request("c000", good, round_id=1), rnd.request("c000", good, task_id="run2"),
                  rnd.request("c000", upload(num_samples=39))):
        assert rnd.send(stub, moved, rnd.signature("c000", request)) == (UNAUTHENTICATED, None)
    # A forged upload of junk (NaN, 1e30, 1e9 samples) without the ticket never gets as far as the checks.
    junk = upload(num_samples=10 ** 9, state={**STATE, "w": torch.full((2, 3), float("nan"))})
    assert rnd.send(stub, rnd.request("c000", junk)) == (UNAUTHENTICATED, None)
    assert rnd.waiter.results == {} and rnd.waiter.failures == {} and rnd.waiter.rejected == {}
    # The real client's upload still counts, once; a replay is refused, also after the round ended.
    assert rnd.send(stub, request, rnd.signature("c000", request)) == (grpc.StatusCode.OK, common_pb.SC_OK)
    assert torch.equal(rnd.waiter.results["c000"].state["w"], STATE["w"])
    assert rnd.send(stub, request, rnd.signature("c000", request)) == (PERMISSION_DENIED, None)
    rnd.waiter.close()
    assert rnd.send(stub, request, rnd.signature("c000", request)) == (PERMISSION_DENIED, None)
    # An honest straggler of the closed round is told so, not accused.
    late = rnd.request("c001", upload("c001", 50))
    assert rnd.send(stub, late, rnd.signature("c001", late)) == (grpc.StatusCode.OK, common_pb.SC_NOT_FOUND)


ATTACKS = {
    "nan": upload(state={**STATE, "w": torch.full((2, 3), float("nan"))}),
    "inf": upload(state={**STATE, "b": torch.tensor([0.0, float("inf"), 0.0])}),
    "1e30": upload(state={**STATE, "w": torch.full((2, 3), 1e30)}),
    "num_samples 1e9": upload(num_samples=10 ** 9),
    "negative num_samples": upload(num_samples=-5),
    "zero num_samples": upload(num_samples=0),
    "wrong shape": upload(state={**STATE, "w": torch.ones(3, 2)}),
    "wrong dtype": upload(state={**STATE, "w": torch.ones(2, 3, dtype=torch.float64)}),
    "missing key": upload(state={"w": STATE["w"], "steps": STATE["steps"]}),
    "unknown key": upload(state={**STATE, "evil": torch.ones(1)}),
    "empty state": upload(state={}),
    "kept state": upload(kept={"w": STATE["w"]}),
    "unasked extra": upload(extra={"signature": torch.ones(9)}),
    "another client's archive": upload("c001", 40),
    "unasked vote": upload(algorithm=FedCMDReport(2, SCORES)),
    "report string": upload_with(report={"images": "many"}),
    "report nan": upload(report=TrainingReport(train_loss=float("nan"))),
    "report negative": upload(report=TrainingReport(images=-3)),
    "report of another algorithm": upload_with(algorithm={"alpha": 0.5}),
    "pickle": None,  # filled in by the test: a pickle whose __reduce__ would create a file
    "not an archive": b"\x00" * 64,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_signed_uploads_that_fail_the_checks_are_rejected_and_recorded(server_service, attack, tmp_path):
    service, stub, _ = server_service
    rnd = Round(service, 3)
    marker = tmp_path / "unpickled"
    data = pickle.dumps(Trap(marker)) if attack == "pickle" else ATTACKS[attack]
    assert rnd.signed(stub, "c000", data) == (grpc.StatusCode.OK, common_pb.SC_INVALID_REQUEST)
    assert not marker.exists(), "a received payload was unpickled"
    assert "c000" not in rnd.waiter.results and "c000" in rnd.waiter.rejected
    assert rnd.waiter.failures["c000"].startswith("rejected: ")
    # The round goes on without it: the other client's upload is taken, a retry of the rejected one is not.
    assert rnd.signed(stub, "c001", upload("c001", 50)) == (grpc.StatusCode.OK, common_pb.SC_OK)
    assert rnd.signed(stub, "c000", upload()) == (PERMISSION_DENIED, None)


def test_votes_scores_and_signatures_follow_the_request(server_service):
    service, stub, _ = server_service
    scoring = FedCMDSettings("selection", scoring=Scoring("exact", (0, 2), None, 1024, 1))
    honest = FedCMDReport(2, SCORES).to_json()
    cases = [(FedCMDReport(2, SCORES), None),
             (FedCMDReport(1, SCORES), "vote 1 is not one of the candidate blocks [0, 2]"),
             (FedCMDReport(2, BatchScores(((0.1,) * 9,), ((0.1,) * 9,))), "of 3 scores (one per block)"),
             (FedCMDReport(2, BatchScores((), ())), "batch_scores must hold the same scored batches"),  # none
             (FedCMDReport(2, BatchScores(((-1.0, 0.2, 0.3),), ((0.0, 0.0, 0.1),))),
              "algorithm.batch_scores.exact[0][0] is -1.0, not a finite number >= 0"),  # a distance is never negative
             (FedCMDReport(2, BatchScores(SCORES.exact, SCORES.mean[:1])),
              "batch_scores must hold the same scored batches"),  # the same batches for both distances
             ({**honest, "batch_scores": {"exact": honest["batch_scores"]["exact"]}},
              "FedCMDReport.batch_scores lacks field 'mean'"),
             ({**honest, "vote": True}, "FedCMDReport.vote must be int, got bool")]
    for index, (report, reason) in enumerate(cases):
        rnd = Round(service, 10 + index, algorithm=scoring)
        payload = upload_with(algorithm=report) if isinstance(report, dict) else upload(algorithm=report)
        code = common_pb.SC_OK if reason is None else common_pb.SC_INVALID_REQUEST
        assert rnd.signed(stub, "c000", payload) == (grpc.StatusCode.OK, code), report
        if reason is None:
            assert "c000" in rnd.waiter.results
        else:
            assert reason in rnd.waiter.rejected["c000"], rnd.waiter.rejected
    signature = SignatureSettings("decoupled", "update", ("w", "b"))
    # w (2 x 3) and b (3) disagree on their rows: the signature is one row of their 9 values
    for index, (extra, expected) in enumerate([({"signature": torch.ones(1, 9)}, common_pb.SC_OK),
                                               ({"signature": torch.ones(9)}, common_pb.SC_INVALID_REQUEST),
                                               ({"signature": torch.ones(1, 6)}, common_pb.SC_INVALID_REQUEST),
                                               ({}, common_pb.SC_INVALID_REQUEST)]):
        rnd = Round(service, 20 + index, algorithm=signature)
        assert rnd.signed(stub, "c000", upload(extra=extra)) == (grpc.StatusCode.OK, expected), extra


def test_personal_keys_stay_out_of_the_expected_upload():
    policy = validation.Policy(STATE, SIZES, "classification", 0, 1e6)
    expected = policy.expect("train", "c001", make_dispatch(STATE, personal_keys=["w"]))
    assert set(expected.state) == {"b", "steps"} and expected.samples == 50
    assert expected.state["b"] == ("float32", (3,)) and expected.state["steps"] == ("int64", ())


EVALUATIONS = {
    "forged total": ({"test_correct": 3, "test_loss": 1.0, "test_total": 3000}, common_pb.SC_INVALID_REQUEST),
    "more correct than tested": ({"test_correct": 31, "test_loss": 1.0, "test_total": 30},
                                 common_pb.SC_INVALID_REQUEST),
    "negative correct": ({"test_correct": -1, "test_loss": 1.0, "test_total": 30}, common_pb.SC_INVALID_REQUEST),
    "float counts": ({"test_correct": 3.0, "test_loss": 1.0, "test_total": 30}, common_pb.SC_INVALID_REQUEST),
    "nan loss": ({"test_correct": 3, "test_loss": float("nan"), "test_total": 30}, common_pb.SC_INVALID_REQUEST),
    "unasked split": ({"test_correct": 3, "test_loss": 1.0, "test_total": 30, "train_correct": 1,
                       "train_loss": 1.0, "train_total": 40}, common_pb.SC_INVALID_REQUEST),
    "missing counts": ({"test_loss": 1.0}, common_pb.SC_INVALID_REQUEST),
    "another client": ({"cid": "c001", "test_correct": 3, "test_loss": 1.0, "test_total": 30},
                       common_pb.SC_INVALID_REQUEST),
    "honest": ({"test_correct": 25, "test_loss": 12.5, "test_total": 30}, common_pb.SC_OK),
}


@pytest.mark.parametrize("case", sorted(EVALUATIONS))
def test_evaluation_results_are_checked_against_the_split_sizes(server_service, case):
    service, stub, _ = server_service
    result, expected = EVALUATIONS[case]
    rnd = Round(service, 30, kind="test")
    assert rnd.signed(stub, "c000", to_json(result)) == (grpc.StatusCode.OK, expected)
    assert ("c000" in rnd.waiter.results) == (expected == common_pb.SC_OK)
    assert ("c000" in rnd.waiter.rejected) == (expected != common_pb.SC_OK)


def test_deeply_nested_results_and_oversized_messages_are_refused(server_service):
    service, stub, _ = server_service
    rnd = Round(service, 40, kind="test")
    deep = b"[" * 100000 + b"]" * 100000
    assert rnd.signed(stub, "c000", b'{"x": ' + deep + b"}") == (grpc.StatusCode.OK, common_pb.SC_INVALID_REQUEST)
    train = Round(service, 41)
    huge = upload(state={**STATE, "w": torch.ones(2, 3 * LIMIT)})
    assert train.signed(stub, "c000", huge) == (grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    assert train.waiter.results == {} and train.waiter.rejected == {}


def test_reid_results_are_checked_against_their_ranges():
    policy = validation.Policy(STATE, SIZES, "reid", 0, 1e6)
    expected = policy.expect("test", "c000", make_dispatch(STATE), ("test",))
    honest = {"mAP": 50.0, "rank1": 60.0, "rank5": 70.0, "rank10": 80.0, "cmc": [60.0, 65.0], "queries": 12,
              "nmi": 0.5, "pairwise_f": 0.4, "clusters": 7}
    validation.check_result(expected, honest)
    for bad in ({"mAP": 150.0}, {"cmc": [60.0, float("inf")]}, {"queries": 31}, {"nmi": 2.0}, {"clusters": 0},
                {"extra": 1}):
        with pytest.raises(validation.Rejected):
            validation.check_result(expected, {**honest, **bad})
    with pytest.raises(validation.Rejected, match="missing mAP"):
        validation.check_result(expected, {k: v for k, v in honest.items() if k != "mAP"})


def test_operator_methods_need_the_operator_token(server_service):
    service, stub, chan = server_service
    status = chan.unary_unary(STATUS_METHOD)
    request = server_pb.RunRequest(clients=[server_pb.Client(client_id="c000", address="127.0.0.1:23000", index=0)])
    for metadata in ((), SERVER, (("authorization", "Bearer wrong-token-of-enough-length"),),
                     (("authorization", TOKENS["FEDCMD_OPERATOR_TOKEN"]),)):
        assert code_of(lambda: stub.Run(request, timeout=30, metadata=metadata)) == UNAUTHENTICATED
        assert code_of(lambda: stub.Stop(server_pb.StopRequest(), timeout=30, metadata=metadata)) == UNAUTHENTICATED
        assert code_of(lambda: status(to_json({}), timeout=30, metadata=metadata)) == UNAUTHENTICATED
        assert code_of(lambda: stop_run(chan, metadata)) == UNAUTHENTICATED
    assert json.loads(status(to_json({}), timeout=30, metadata=OPERATOR)) == {"state": "idle"}
    # With the token, a run request naming an address the server is not configured for is refused.
    attacker = server_pb.RunRequest(clients=[server_pb.Client(client_id="c000", address="127.0.0.1:9", index=0)])
    assert code_of(lambda: stub.Run(attacker, timeout=30, metadata=OPERATOR)) == PERMISSION_DENIED
    assert service.server is None and service.state == {"state": "idle"}


@pytest.fixture
def running(server_service):
    """The service with run `run7` in progress in round 2 of 5: a thread that lasts until the test ends stands in
    for the run's, a stand-in server records the stop requests it gets."""
    service, _, _ = server_service
    reasons, done = [], threading.Event()
    service.server = SimpleNamespace(round_number=2, stop=reasons.append)
    service.state = {"state": "running", "run_id": "run7", "rounds": 5, "clients": ["c000", "c001"]}
    service.thread = threading.Thread(target=done.wait, daemon=True)
    service.thread.start()
    try:
        yield reasons
    finally:
        done.set()
        service.thread.join(5)


def test_stop_answers_with_the_runs_fields(server_service, running):
    _, stub, chan = server_service
    assert code_of(lambda: stop_run(chan, SERVER)) == UNAUTHENTICATED
    assert running == []  # refused before the run heard of it
    answer = stop_run(chan, OPERATOR)
    assert answer == {"state": "running", "run_id": "run7", "round": 2, "rounds": 5, "clients": ["c000", "c001"],
                      "stop_requested": True, "stopping": True}
    assert running == ["a Stop request from the operator"]
    easyfl = stub.Stop(server_pb.StopRequest(), timeout=30, metadata=OPERATOR).status  # EasyFL's own stub
    assert easyfl.code == common_pb.SC_OK and "run run7 stops" in easyfl.message


def test_stop_without_a_run_in_progress_says_so(server_service):
    _, stub, chan = server_service
    assert stop_run(chan, OPERATOR) == {"state": "idle", "stopping": False}
    easyfl = stub.Stop(server_pb.StopRequest(), timeout=30, metadata=OPERATOR).status
    assert easyfl.code == common_pb.SC_NOT_FOUND and easyfl.message == "no run in progress"


# ------------------------------------------------------------------------------ the client service, in process
def test_client_operate_needs_the_server_token_and_never_unpickles(tmp_path):
    from fedcmd_plugin.remote.client import OPERATE_METHOD, ClientService
    from fedcmd_plugin.remote.kept_store import KeptStore

    transport = Transport(LIMIT)
    started = []
    service = ClientService(make_client=lambda cid, state: None, own_initial={}, hosted={0: "c000"},
                            server_address="127.0.0.1:9", transport=transport, store=KeptStore(tmp_path))
    service.work = lambda *job: (started.append(job), service.busy.discard(job[0]))  # no training, no upload
    port = free_port()
    guard = auth.RequireToken(TOKENS["FEDCMD_SERVER_TOKEN"], [OPERATE_METHOD], "server")
    grpc_srv = transport.server("127.0.0.1", port, 2, [guard])
    client_grpc.add_ClientServiceServicer_to_server(service, grpc_srv)
    grpc_srv.start()
    chan = transport.channel(f"127.0.0.1:{port}")
    stub = client_grpc.ClientServiceStub(chan)
    marker = tmp_path / "unpickled"

    def operate(model, metadata=SERVER, index=0):
        request = client_pb.OperateRequest(type=client_pb.OP_TYPE_TRAIN, model=model, data_index=index,
                                           config=client_pb.OperateConfig(task_id="run1"))
        return stub.Operate(request, timeout=30, metadata=metadata).status

    valid = wrap(make_dispatch({"w": torch.zeros(3)}), "ab" * 32)
    try:
        for metadata in ((), OPERATOR):  # straight to the client, without the server's credential
            assert code_of(lambda: operate(valid, metadata)) == UNAUTHENTICATED
            assert code_of(lambda: operate(pickle.dumps(Trap(marker)), metadata)) == UNAUTHENTICATED
        answer = operate(pickle.dumps(Trap(marker)))
        assert answer.code == common_pb.SC_INVALID_REQUEST and "not a tensor archive" in answer.message
        unticketed = make_dispatch({"w": torch.zeros(3)}).to_bytes()
        assert operate(unticketed).code == common_pb.SC_INVALID_REQUEST
        assert not marker.exists(), "the client unpickled a request"
        assert operate(valid, index=1).code == common_pb.SC_INVALID_REQUEST  # another client's data index
        assert started == []
        assert operate(valid).code == common_pb.SC_OK
        deadline = time.monotonic() + 10
        while not started and time.monotonic() < deadline:
            time.sleep(0.05)
        cid, kind, task_id, round_id, dispatch, envelope, initial = started[0]
        assert (cid, kind, task_id, round_id, initial, envelope["ticket"]) == ("c000", "train", "run1", 0, None,
                                                                                "ab" * 32)
        assert dispatch.settings.round == 0 and torch.equal(dispatch.state["w"], torch.zeros(3))
    finally:
        chan.close()
        grpc_srv.stop(0).wait(5)


def test_tokens_come_from_env_or_file_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_TOKEN", "a-token-long-enough-0123")
    assert auth.read_token("env:SOME_TOKEN", "remote.operator_token") == "a-token-long-enough-0123"
    (tmp_path / "token").write_text("file-token-long-enough-0123\n")
    assert auth.read_token(f"file:{tmp_path / 'token'}", "remote.server_token") == "file-token-long-enough-0123"
    monkeypatch.setenv("SHORT", "short")
    for source, message in (("env:UNSET_TOKEN_VARIABLE", "not set"), (f"file:{tmp_path / 'none'}", "does not exist"),
                            ("env:SHORT", "at least 16"), ("plain-token-in-the-config", "env:NAME or file:PATH")):
        monkeypatch.delenv("UNSET_TOKEN_VARIABLE", raising=False)
        with pytest.raises(ConfigError, match=message):
            auth.read_token(source, "remote.operator_token")


# -------------------------------------------------------------------------------------------- TLS, in process
def tls_config(pki, role_files, *extra):
    good = pki / "good"
    return load_config(None, ["remote.bind=0.0.0.0", f"remote.tls.ca={good / 'ca.pem'}",
                              *(f"remote.tls.{key}={good / name}" for key, name in role_files.items()), *extra])


def status_server(transport):
    """An in-process gRPC server answering the status method on a free port; (server, address)."""
    port = free_port()
    grpc_srv = transport.server("127.0.0.1", port, 2)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: to_json({"state": "idle"}))
    grpc_srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(STATUS_METHOD.split("/")[1],
                                                                            {"Get": handler}),))
    grpc_srv.start()
    return grpc_srv, f"127.0.0.1:{port}"


def reaches(transport, address):
    chan = transport.channel(address)
    try:
        return code_of(lambda: chan.unary_unary(STATUS_METHOD)(b"{}", timeout=10)) == grpc.StatusCode.OK
    finally:
        chan.close()


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_handshakes(pki, mutual):
    flag = f"remote.tls.mutual={str(mutual).lower()}"
    server = transport_for(tls_config(pki, {"cert": "server.pem", "key": "server-key.pem"}, flag), "server")
    grpc_srv, address = status_server(server)
    try:
        operator = transport_for(tls_config(pki, {"cert": "operator.pem", "key": "operator-key.pem"}, flag),
                                 "trigger")
        assert reaches(operator, address)
        other = pki / "other"
        wrong_ca = Transport(LIMIT, TLS(
            (other / "ca.pem").read_bytes(), (other / "operator.pem").read_bytes(),
            (other / "operator-key.pem").read_bytes(), mutual))
        assert not reaches(wrong_ca, address), "a handshake against another CA succeeded"
        assert not reaches(Transport(LIMIT), address), "plaintext reached a TLS port"
        if mutual:
            no_cert = transport_for(tls_config(pki, {}), "trigger")
            assert not reaches(no_cert, address), "mutual TLS let a client without a certificate in"
            foreign = Transport(LIMIT, TLS(
                operator.tls.ca, (other / "operator.pem").read_bytes(), (other / "operator-key.pem").read_bytes(),
                True))
            assert not reaches(foreign, address), "mutual TLS accepted a certificate of another CA"
    finally:
        grpc_srv.stop(0).wait(5)


def test_transport_config_errors_name_the_key(pki, tmp_path):
    with pytest.raises(ConfigError, match="'remote.tls.cert' is required for the server role"):
        transport_for(tls_config(pki, {}), "server")
    with pytest.raises(ConfigError, match="'remote.tls.cert' is required for the trigger role"):
        transport_for(tls_config(pki, {}, "remote.tls.mutual=true"), "trigger")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="'remote.tls.key': file .*junk.pem is not PEM"):
        transport_for(tls_config(pki, {"cert": "server.pem"}, f"remote.tls.key={tmp_path / 'junk.pem'}"), "server")
    with pytest.raises(ConfigError, match="'remote.tls.ca': file .* does not exist"):
        transport_for(load_config(None, [f"remote.tls.ca={tmp_path / 'none.pem'}"]), "trigger")
    # {index} picks each client's own files.
    client = transport_for(tls_config(pki, {"cert": "client-{index}.pem", "key": "client-{index}-key.pem"}),
                           "client", index=1)
    assert client.tls.cert == (pki / "good" / "client-1.pem").read_bytes()
    # The message limit follows the model unless configured.
    conf = load_config(None, ["remote.bind=127.0.0.1"])
    assert transport_for(conf, "server", model_bytes=10 ** 6).max_message == 4 * 1024 * 1024 + 3 * 10 ** 6
    conf = load_config(None, ["remote.bind=127.0.0.1", "remote.max_message_mb=1.5"])
    assert transport_for(conf, "server", model_bytes=10 ** 9).max_message == int(1.5 * 1024 * 1024)


def test_insecure_plaintext_warns_at_each_start(caplog):
    from fedcmd_plugin.session import logger

    conf = load_config(None, ["remote.insecure=true"])
    logger().addHandler(caplog.handler)
    try:
        transport_for(conf, "server")
        transport_for(conf, "client")
    finally:
        logger().removeHandler(caplog.handler)
    assert sum("plaintext gRPC on non-loopback" in record.message for record in caplog.records) == 2


def test_development_certificates(pki):
    from cryptography import x509

    good = pki / "good"
    names = sorted(path.name for path in good.iterdir())
    assert names == sorted(["ca.pem", "server.pem", "server-key.pem", "client-0.pem", "client-0-key.pem",
                            "client-1.pem", "client-1-key.pem", "operator.pem", "operator-key.pem",
                            "operator.token", "server.token"])
    for name in names:
        private = name.endswith(("-key.pem", ".token"))
        assert (good / name).stat().st_mode & 0o077 == (0 if private else 0o044), name
    ca = x509.load_pem_x509_certificate((good / "ca.pem").read_bytes())
    for stem, common_name, extra in (("server", "fedcmd-server", "server"), ("client-1", "c001", "client1")):
        cert = x509.load_pem_x509_certificate((good / f"{stem}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == common_name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost", extra]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert len((good / "operator.token").read_text().strip()) >= 32
    assert not (good / "ca-key.pem").exists(), "the CA's key is not kept"
    with pytest.raises(ConfigError, match="exists"):
        make_certificates(good, 1)


def test_certs_command_line(tmp_path, capsys):
    from fedcmd_plugin.cli import main

    folder = str(tmp_path / "s")
    assert main(["remote", "certs", folder, "--clients", "1", "--server-name", "fedcmd-server"]) == 0
    assert "wrote 9 files" in capsys.readouterr().out and (tmp_path / "s" / "client-0.pem").is_file()
    assert main(["remote", "certs", folder, "--clients", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exists" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------- a mutual-TLS cluster of real processes
# Client 1 also writes every upload it sends (request and signature) to CAPTURE: what an attacker on the path
# would see if TLS were broken, to be replayed.
CAPTURING_CLIENT = """
import os, sys
from fedcmd_plugin.remote.client import ClientService

original = ClientService.send

def send(self, request, metadata):
    with open(os.environ["CAPTURE"], "a") as handle:
        handle.write(request.SerializeToString().hex() + " " + dict(metadata)["fedcmd-upload-mac"] + "\\n")
    return original(self, request, metadata)

ClientService.send = send
from fedcmd_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


def secure_roles(pki):
    """Per-role overrides: mutual TLS with the development certificates, tokens from their files."""
    good = pki / "good"
    tls = [f"remote.tls.ca={good / 'ca.pem'}", "remote.tls.mutual=true"]
    operator, server = f"file:{good / 'operator.token'}", f"file:{good / 'server.token'}"
    return {"server": [*tls, f"remote.tls.cert={good / 'server.pem'}", f"remote.tls.key={good / 'server-key.pem'}",
                       f"remote.operator_token={operator}", f"remote.server_token={server}"],
            "client": [*tls, f"remote.tls.cert={good / 'client-{index}.pem'}",
                       f"remote.tls.key={good / 'client-{index}-key.pem'}", f"remote.server_token={server}"],
            "trigger": [*tls, f"remote.tls.cert={good / 'operator.pem'}", f"remote.tls.key={good / 'operator-key.pem'}",
                        f"remote.operator_token={operator}"]}


def holder_of(pki, stem, ca="good"):
    """The transport of someone holding `stem`'s certificate of CA `ca` (and no token)."""
    folder = pki / ca
    return Transport(SENDER.max_message, TLS((pki / "good" / "ca.pem").read_bytes(),
                                             (folder / f"{stem}.pem").read_bytes(),
                                             (folder / f"{stem}-key.pem").read_bytes(), True))


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory, pki):
    folder = tmp_path_factory.mktemp("secure")
    script = folder / "capturing_client.py"
    script.write_text(CAPTURING_CLIENT)
    cluster = Cluster(folder, extra=["server.rounds=3"], client_scripts={1: script}, roles=secure_roles(pki))
    cluster.processes.env["CAPTURE"] = str(folder / "captured.txt")
    try:
        yield cluster.start()
    finally:
        cluster.processes.stop()


def wait_for(condition, what, timeout=RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def attack_before_any_run(cluster, pki):
    """Everything an outsider with a valid certificate but no token tries against the idle services."""
    attacker = holder_of(pki, "operator")
    chan = attacker.channel(cluster.address)
    stub = server_grpc.ServerServiceStub(chan)
    bare = server_pb.RunRequest(clients=[server_pb.Client(client_id="c000", address=cluster.client_addresses[0])])
    evil = server_pb.RunRequest(clients=[server_pb.Client(client_id="c000", address=f"127.0.0.1:{free_port()}")])
    operator_token = (("authorization", "Bearer " + (pki / "good" / "operator.token").read_text().strip()),)
    try:
        assert code_of(lambda: stub.Run(bare, timeout=60)) == UNAUTHENTICATED
        assert code_of(lambda: stub.Run(bare, timeout=60, metadata=OPERATOR)) == UNAUTHENTICATED  # a wrong token
        assert code_of(lambda: stub.Stop(server_pb.StopRequest(), timeout=60)) == UNAUTHENTICATED
        assert code_of(lambda: chan.unary_unary(STATUS_METHOD)(b"{}", timeout=60)) == UNAUTHENTICATED
        # Even with the operator's token, the server reaches no address a request names.
        assert code_of(lambda: stub.Run(evil, timeout=60, metadata=operator_token)) == PERMISSION_DENIED
    finally:
        chan.close()
    chan = attacker.channel(cluster.client_addresses[0])
    try:
        operate = client_pb.OperateRequest(type=client_pb.OP_TYPE_TRAIN, data_index=0,
                                           model=wrap(make_dispatch(STATE), "ab" * 32))
        for metadata in ((), operator_token):  # straight to a client, without the server's credential
            assert code_of(lambda: client_grpc.ClientServiceStub(chan).Operate(operate, timeout=60,
                                                                               metadata=metadata)) == UNAUTHENTICATED
    finally:
        chan.close()
    for transport in (holder_of(pki, "operator", ca="other"), Transport(LIMIT)):  # another CA; plaintext
        chan = transport.channel(cluster.address)
        try:
            assert code_of(lambda: stub_status(chan)) == grpc.StatusCode.UNAVAILABLE
        finally:
            chan.close()


def stub_status(chan):
    return chan.unary_unary(STATUS_METHOD)(b"{}", timeout=20, metadata=OPERATOR)


def attack_uploads(cluster, pki, captured, tmp_path):
    """Forged, replayed, misdirected, oversized and pickled uploads: refused before they reach the round."""
    chan = holder_of(pki, "client-0").channel(cluster.address)  # even a client's own certificate does not help
    stub = server_grpc.ServerServiceStub(chan)
    request = server_pb.UploadRequest()
    line = captured.read_text().splitlines()[0].split()
    request.ParseFromString(bytes.fromhex(line[0]))
    replay = ((auth.UPLOAD_MAC, line[1]),)
    marker = tmp_path / "unpickled"

    def forged(data, cid="c001", kind=common_pb.DATA_TYPE_PARAMS, **fields):
        fake = server_pb.UploadRequest(task_id=request.task_id, round_id=request.round_id, client_id=cid,
                                       content=server_pb.UploadContent(data=data, type=kind), **fields)
        return lambda metadata=(): stub.Upload(fake, timeout=60, metadata=metadata)

    def moved(**fields):
        copy = server_pb.UploadRequest()
        copy.CopyFrom(request)
        for name, value in fields.items():
            setattr(copy, name, value)
        return lambda: stub.Upload(copy, timeout=60, metadata=replay)

    try:
        for data in (upload("c001", 10 ** 9, state={"w": torch.full((2, 3), float("nan"))}),
                     upload("c001", -1, state={"w": torch.full((2, 3), 1e30)}), upload("c001", 5, state={}),
                     pickle.dumps(Trap(marker))):
            assert code_of(forged(data)) == UNAUTHENTICATED
            assert code_of(lambda: forged(data)(((auth.UPLOAD_MAC, "00" * 32),))) == UNAUTHENTICATED
        counts = to_json({"test_correct": 10 ** 6, "test_loss": 0.0, "test_total": 10 ** 6})
        assert code_of(forged(counts, kind=common_pb.DATA_TYPE_PERFORMANCE)) == UNAUTHENTICATED
        assert code_of(lambda: stub.Upload(request, timeout=60, metadata=replay)) == PERMISSION_DENIED  # replay
        assert code_of(moved(round_id=request.round_id + 1)) == UNAUTHENTICATED  # replayed into another round
        assert code_of(moved(client_id="c000")) == UNAUTHENTICATED  # an upload for another client
        oversized = forged(b"\0" * (cluster_limit() + 1))
        assert code_of(oversized) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert code_of(lambda: stub.Stop(server_pb.StopRequest(), timeout=60)) == UNAUTHENTICATED
    finally:
        chan.close()
    assert not marker.exists(), "the server unpickled an upload"


def cluster_limit():
    """The servers' message limit for the digits LeNet-5 (4 MiB + 3 x its state): below 8 MiB."""
    return 8 * 1024 * 1024


@pytest.mark.slow
def test_attacks_on_a_mutual_tls_cluster_change_nothing(secure_cluster, pki, tmp_path):
    cluster = secure_cluster
    attack_before_any_run(cluster, pki)
    captured = cluster.folder / "captured.txt"
    attacked = cluster.processes.start("trigger-attacked", cluster.trigger_command())
    wait_for(lambda: captured.is_file() and captured.read_text().strip() or attacked.poll() is not None,
             "client 1's first upload")
    attack_uploads(cluster, pki, captured, tmp_path)
    wait_for(lambda: attacked.poll() is not None, "the attacked run")
    assert attacked.returncode == 0, cluster.logs() + cluster.processes.log("trigger-attacked")
    result = cluster.trigger()
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{cluster.logs()}"
    first, second = cluster.run_folders()
    for folder in (first, second):
        metrics = assert_complete(folder, rounds=3)
        assert all(row["clients"] == 2 and not any(key.startswith(("missing", "rejected")) for key in row)
                   for row in metrics), metrics
    assert [(r["round"], r["cid"], r["test_correct"], r["test_loss"]) for r in client_rows(first)] == \
        [(r["round"], r["cid"], r["test_correct"], r["test_loss"]) for r in client_rows(second)]
    logs = cluster.logs() + "".join(path.read_text(errors="replace") for path in cluster.folder.glob("*.log"))
    for token in ("operator.token", "server.token"):
        assert (pki / "good" / token).read_text().strip() not in logs, f"{token} appears in a log"
    assert "refused: not signed with the ticket" in cluster.processes.log("server")


MALICIOUS_CLIENT = """
import sys
import torch
from fedcmd_plugin.federation.messages import Upload
from fedcmd_plugin.remote.client import ClientService
from fedcmd_plugin.remote.wire import to_json

train, test = ClientService.train, ClientService.test

def poisoned_train(self, client, dispatch):  # round 1: NaN weights; round 2: 10^9 samples; round 3: a wrong shape
    content = train(self, client, dispatch)
    upload = Upload.from_bytes(content.data)
    name = sorted(upload.state)[0]
    attack = dispatch.settings.round
    if attack == 0:
        upload.state[name] = torch.full_like(upload.state[name], float("nan"))
    elif attack == 1:
        upload.num_samples = 10 ** 9
    else:
        upload.state[name] = upload.state[name].reshape(-1)[:1]
    content.data = upload.to_bytes(with_kept=False)
    return content

def forged_test(self, client, dispatch, envelope):
    content = test(self, client, dispatch, envelope)
    content.data = to_json({"test_correct": 10 ** 6, "test_loss": 0.0, "test_total": 10 ** 6})
    return content

ClientService.train, ClientService.test = poisoned_train, forged_test
from fedcmd_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_malicious_clients_answers_are_rejected_and_the_round_goes_on(tmp_path):
    script = tmp_path / "malicious_client.py"
    script.write_text(MALICIOUS_CLIENT)
    cluster = Cluster(tmp_path, extra=["server.rounds=3"], client_scripts={1: script})
    try:
        cluster.start()
        result = cluster.trigger()
        assert result.returncode == 0, f"trigger failed:\n{result.stdout}\n{result.stderr}\n{cluster.logs()}"
        (folder,) = cluster.run_folders()
        metrics = assert_complete(folder, rounds=3)
        reasons = ["NaN or infinite", "num_samples 1000000000 is outside", "state tensor"]
        for row, reason in zip(metrics, reasons):
            assert row["clients"] == 1 and row["missing_clients"] == ["c001"], row
            assert list(row["rejected_uploads"]) == ["c001"] and reason in row["rejected_uploads"]["c001"], row
            assert "test_total 1000000 is not the client's test split size" in row["rejected_eval_uploads"]["c001"]
        assert {r["cid"] for r in client_rows(folder)} == {"c000"}
        assert read_json(folder / "summary.json")["final"]["evaluated_clients"] == 1
    finally:
        cluster.processes.stop()
