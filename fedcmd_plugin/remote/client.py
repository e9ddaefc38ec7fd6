"""The remote client: EasyFL's ClientService hosting client `--index i` of the partition (users[i]), or
several clients (`--index 0-49`), which then share the process and work one request at a time.

`Operate(OperateRequest)` needs the server's token (`remote.server_token`, UNAUTHENTICATED without it): `model`
is the round's `Dispatch` archive with the client's upload ticket (never unpickled: anything else is refused
with SC_INVALID_REQUEST), `data_index` must be one this service hosts, `type` is train or test. The request is
queued and `Operate` returns at once (SC_ALREADY_EXISTS while the same client still has an earlier request);
the result goes to the server's `Upload` with the request's task (run) and round ids, signed with the ticket:
`Upload.to_bytes(with_kept=False)` for train (kept state never leaves the client), a JSON object for test, a
JSON error report in `content.extra` when the work failed (the server then leaves the client out at once).

Each run (task id) starts from fresh client objects: nothing of one run's state carries over to the next.
After every round a client trained, its kept state is written to `remote.state_dir` (`kept_store`) before the
upload goes out. A first contact (`snapshot` in the envelope: a new run, a resumed one, a client back after
missing a round) names the round after which the client's state is the one the server counts: the client takes
up that snapshot (dropping later ones, of rounds that run again); one it does not have is an error, never a
silent fresh start. A client object made again without that (the service restarted between two requests)
continues from its latest snapshot.
"""
import queue
import threading
import time

import grpc
from easyfl.pb import client_service_pb2 as client_pb
from easyfl.pb import client_service_pb2_grpc as client_grpc
from easyfl.pb import common_pb2 as common_pb
from easyfl.pb import server_service_pb2 as server_pb
from easyfl.pb import server_service_pb2_grpc as server_grpc

from fedcmd_plugin.errors import ConfigError, PluginError
from fedcmd_plugin.remote.auth import UPLOAD_MAC, RequireToken, read_token, sign_upload
from fedcmd_plugin.remote.kept_store import KeptStore
from fedcmd_plugin.remote.roles import init_role, seed_all
from fedcmd_plugin.remote.transport import state_bytes, transport_for
from fedcmd_plugin.remote.wire import TEST, TRAIN, one_line, rpc_error_text, serve_until_stopped, to_json, unwrap
from fedcmd_plugin.session import logger

CLIENT_WORKERS = 4
OPERATE_METHOD = "/easyfl.pb.ClientService/Operate"
UPLOAD_TIMEOUT = 120.0  # seconds per upload attempt
UPLOAD_RETRIES = 3  # attempts while the server is unreachable


def response(code, message=""):
    return client_pb.OperateResponse(status=common_pb.Status(code=code, message=message))


class ClientService(client_grpc.ClientServiceServicer):
    """Hosts the clients `hosted` ({data index: cid}, usually one) of the partition.

    make_client(cid, initial_state) -> a FederatedClient attached to the process's model and `initial_state`;
    transport: how to reach the server at `server_address`; store: a KeptStore for the clients' own state.
    Requests are queued and worked off one at a time (the clients share the process's model); a client with a
    request still queued or running refuses the next one (SC_ALREADY_EXISTS).
    """

    def __init__(self, make_client, own_initial, hosted, server_address, transport, store, settings_type=None):
        self.make_client = make_client
        self.settings_type = settings_type  # the algorithm's Settings class (its client's settings_type)
        self.store = store
        self.own_initial = own_initial
        self.hosted = dict(hosted)
        self.server_address = server_address
        self.transport = transport
        self.task_id = None
        self.run_initial = None  # the current run's initial state, as received from the server
        self.clients = {}  # cid -> this run's client object
        self.state_round = {}  # cid -> the rounds after which its client object's state was written
        self.busy = set()  # cids with a request queued or running
        self.lock = threading.Lock()
        self.jobs = queue.Queue()
        self.stub = None
        self.log = logger()
        threading.Thread(target=self.worker, name="fedcmd-client-worker", daemon=True).start()

    def describe(self):
        return ", ".join(self.hosted.values())

    def Operate(self, request, context):
        try:
            dispatch, envelope, initial = unwrap(request.model, self.settings_type)
        except PluginError as exc:
            self.log.warning(f"client {self.describe()}: refused a request whose model is not a tensor archive")
            return response(common_pb.SC_INVALID_REQUEST, f"model is not a tensor archive: {one_line(exc)}")
        cid = self.hosted.get(request.data_index)
        if cid is None:
            return response(common_pb.SC_INVALID_REQUEST, f"this service hosts client(s) {self.describe()} (data "
                                                          f"index {', '.join(map(str, self.hosted))}), not data "
                                                          f"index {request.data_index}")
        if request.type == client_pb.OP_TYPE_TRAIN:
            kind = TRAIN
        elif request.type == client_pb.OP_TYPE_TEST:
            kind = TEST
        else:
            return response(common_pb.SC_INVALID_REQUEST, f"unknown operation type {request.type}")
        task_id, round_id = request.config.task_id, request.config.round_id
        with self.lock:
            if cid in self.busy:
                return response(common_pb.SC_ALREADY_EXISTS, f"client {cid} is still busy with an earlier request")
            self.busy.add(cid)
        self.jobs.put((cid, kind, task_id, round_id, dispatch, envelope, initial))  # the ticket is in the envelope
        return response(common_pb.SC_OK, f"client {cid}: {kind} of round {round_id + 1} queued")

    # ----- the work of one request -------------------------------------------------------------------------------
    def worker(self):
        while True:
            job = self.jobs.get()
            try:
                self.work(*job)
            except Exception as exc:  # never let the worker die: later requests still need it
                self.log.error(f"client {job[0]}: {one_line(exc)}", exc_info=True)

    def work(self, cid, kind, task_id, round_id, dispatch, envelope, initial):
        content_type = common_pb.DATA_TYPE_PARAMS if kind == TRAIN else common_pb.DATA_TYPE_PERFORMANCE
        try:
            try:
                client = self.client_for(cid, task_id, initial, envelope)
                if kind == TRAIN:
                    content = self.train(client, dispatch)
                    self.store.save(task_id, cid, round_id + 1, client.kept)  # before the server can count it
                    self.state_round[cid] = round_id + 1
                    self.store.forget_before(task_id, cid, envelope["keep_from"])
                else:
                    content = self.test(client, dispatch, envelope)
            except Exception as exc:  # reported to the server, which leaves this client out of the round
                self.clients.pop(cid, None)  # its state may be half-trained: the next request takes up a snapshot
                self.log.error(f"client {cid}: {kind} of round {round_id + 1} failed: {one_line(exc)}", exc_info=True)
                content = server_pb.UploadContent(type=content_type, extra=to_json({"error": one_line(exc)}))
        finally:
            with self.lock:  # before uploading: the server may send the next request as soon as it has this one
                self.busy.discard(cid)
        request = server_pb.UploadRequest(task_id=task_id, round_id=round_id, client_id=cid, content=content)
        self.send(request, ((UPLOAD_MAC, sign_upload(envelope["ticket"], request)),))

    def client_for(self, cid, task_id, initial, envelope):
        """This run's object for client `cid`, holding the state the server counts (see the module's docstring)."""
        if task_id != self.task_id:
            self.task_id, self.run_initial, self.clients, self.state_round = task_id, None, {}, {}
            self.log.info(f"client {self.describe()}: run {task_id}")
        if initial is not None:
            self.run_initial = {**self.own_initial, **initial}
        expected = envelope.get("snapshot")
        client = self.clients.get(cid)
        if client is not None and expected in (None, self.state_round[cid]):
            if initial is not None:
                client.initial_state = self.run_initial
            return client
        if self.run_initial is None:
            self.log.warning(f"client {cid}: joined run {task_id} without its initial state (restarted during the "
                             "run?); starting from the state built from the config")
        client = self.make_client(cid, self.run_initial or dict(self.own_initial))
        self.state_round[cid] = self.restore(client, task_id, expected)
        self.clients[cid] = client
        return client

    def restore(self, client, task_id, expected):
        """Put the snapshot after round `expected` (None: the latest) into `client`; the rounds it holds."""
        if expected is not None:
            self.store.forget_after(task_id, client.cid, expected)
        snapshot = self.store.latest(task_id, client.cid, expected)
        found = snapshot[0] if snapshot else 0
        if expected is not None and found != expected:
            raise PluginError(f"client {client.cid}: the server counts its state after round {expected} of run "
                              f"{task_id}, but {self.store.root} holds {f'round {found}' if found else 'none'}: "
                              "was remote.state_dir lost or changed?")
        if snapshot is not None:
            client.kept = snapshot[1]
            self.log.info(f"client {client.cid}: continues run {task_id} from its state after round {found}")
        return found

    def train(self, client, dispatch):
        upload = client.run_round(dispatch)
        return server_pb.UploadContent(data=upload.to_bytes(with_kept=False), type=common_pb.DATA_TYPE_PARAMS,
                                       data_size=int(upload.num_samples))

    def test(self, client, dispatch, envelope):
        splits = tuple(envelope.get("splits") or ("test",))
        result = client.evaluate(dispatch, splits)
        result = {"cid": client.cid, **{k: v for k, v in result.items() if k != "cid"}}
        return server_pb.UploadContent(data=to_json(result),
                                       type=common_pb.DATA_TYPE_PERFORMANCE,
                                       data_size=int(result.get("test_total", 0) or 0))

    def send(self, request, metadata):
        if self.stub is None:
            self.stub = server_grpc.ServerServiceStub(self.transport.channel(self.server_address))
        for attempt in range(UPLOAD_RETRIES):
            try:
                answer = self.stub.Upload(request, timeout=UPLOAD_TIMEOUT, metadata=metadata)
            except grpc.RpcError as exc:
                reason = rpc_error_text(exc)
                if attempt + 1 < UPLOAD_RETRIES and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    time.sleep(2 ** attempt)
                    continue
                self.log.error(f"client {request.client_id}: upload of round {request.round_id + 1} to "
                               f"{self.server_address} failed: {reason}")
                return False
            if answer.status.code != common_pb.SC_OK:
                self.log.warning(f"client {request.client_id}: the server refused the upload of round "
                                 f"{request.round_id + 1}: {answer.status.message}")
                return False
            return True
        return False


def build(conf, indexes):
    """The prepared config and a ClientService for the clients `indexes` of the config's partition (its
    transport sized for the model, with the certificate of the first index when remote.tls names {index})."""
    indexes = sorted(set(indexes))
    experiment = init_role(conf, conf.remote.client_port, indexes[0])
    conf, data = experiment.conf, experiment.data
    users = data.train.users
    outside = [i for i in indexes if not 0 <= i < len(users)]
    if outside:
        raise ConfigError(f"client index {outside[0]} is outside the partition: data.num_of_clients gives "
                          f"{len(users)} clients (indexes 0..{len(users) - 1})")
    client_class = experiment.algorithm.client
    seed_all(conf.seed)
    model = experiment.build_model().to(conf.device)
    own_initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def make_client(cid, initial_state):
        client = client_class(cid, conf.client, data.train, data.test, conf.device)
        client.attach(model, initial_state)
        return client

    hosted = {i: users[i] for i in indexes}
    transport = transport_for(conf, "client", state_bytes(own_initial), indexes[0])
    return conf, ClientService(make_client, own_initial, hosted, str(conf.remote.server_address), transport,
                               KeptStore(conf.remote.state_dir), client_class.settings_type)


def serve(conf, indexes, stop_event=None):
    """`fedcmd-plugin remote client`: host clients `indexes` until SIGTERM/SIGINT (or `stop_event` is set)."""
    guard = RequireToken(read_token(conf.remote.server_token, "remote.server_token"), [OPERATE_METHOD], "server")
    conf, service = build(conf, indexes)
    grpc_srv = service.transport.server(str(conf.remote.bind), int(conf.remote.client_port), CLIENT_WORKERS,
                                        [guard])
    client_grpc.add_ClientServiceServicer_to_server(service, grpc_srv)
    grpc_srv.start()
    logger().info(f"fedcmd-plugin client {service.describe()} ({conf.algorithm}) listening on "
                  f"{conf.remote.bind}:{conf.remote.client_port}, uploading to {conf.remote.server_address}")
    serve_until_stopped(grpc_srv, stop_event)
    return 0
