"""The remote server: EasyFL's ServerService (Run, Upload, Stop) and a JSON status method on one port.

* `Run(RunRequest)` returns at once (as EasyFL's does) after starting the run in a background thread: SC_OK
  with "run <id> started ...", SC_ALREADY_EXISTS while a run is in progress, SC_INVALID_REQUEST for bad
  client lists. The model is always built from the server's own config (seeded like a standalone run);
  `request.model` is never unpickled: when it decodes as the plugin's tensor archive with the model's keys
  and shapes it becomes the initial state, anything else is ignored with a warning.
  `RunRequest.clients`: each `Client(client_id, address, index)` names one client service; the client is
  `client_id` when that is one of the partition's ids (c000, c001, ...), else the partition's `index`-th.
  An empty list means the server's own `remote.client_addresses` (the i-th hosting index i).
* Status (`/fedcmd_plugin.remote.RunStatus/Get`, JSON): {"state": idle|running|complete|stopped|failed,
  "run_id", "round", "rounds", "folder", "error", "summary"}: how a trigger waits for the end of a run.
* `Upload(UploadRequest)`: decodes the content (an `Upload` archive for train, a JSON object for test, a
  JSON error report in `content.extra`) and hands it to the round waiting for it (`router.UploadRouter`).
  SC_INVALID_REQUEST for payloads that do not decode, SC_NOT_FOUND when no round waits for them.
* `Stop()`: the run ends after the current round (state "stopped").
"""
import threading
import time
import uuid

import grpc
from easyfl.pb import common_pb2 as common_pb
from easyfl.pb import server_service_pb2 as server_pb
from easyfl.pb import server_service_pb2_grpc as server_grpc

from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation import codec
from fedcmd_plugin.federation.messages import Upload
from fedcmd_plugin.remote.roles import init_role, seed_all
from fedcmd_plugin.remote.router import UploadRouter
from fedcmd_plugin.remote.wire import (STATUS_SERVICE, TEST, TRAIN, Endpoint, RemoteError, check_address,
                                       from_json_object, grpc_server, one_line, to_json)
from fedcmd_plugin.session import logger

SERVER_WORKERS = 32  # concurrent RPCs: one per uploading client, plus Run/Status/Stop


def pb_status(code, message=""):
    return common_pb.Status(code=code, message=message)


class ServerService(server_grpc.ServerServiceServicer):
    def __init__(self, conf, users):
        self.conf = conf
        self.users = list(users)
        self.router = UploadRouter()
        self.lock = threading.Lock()
        self.server = None  # the algorithm's server of the current / last run
        self.thread = None
        self.state = {"state": "idle"}
        self.log = logger()

    # ----- Run ---------------------------------------------------------------------------------------------------
    def Run(self, request, context):
        with self.lock:
            if self.running():
                return server_pb.RunResponse(status=pb_status(
                    common_pb.SC_ALREADY_EXISTS, f"run {self.state['run_id']} is in progress: wait for it or Stop it"))
            try:
                endpoints = self.resolve_clients(request.clients)
                server, model = self.build()
                self.apply_initial_model(request.model, model)
            except PluginError as exc:
                self.log.error(f"run request refused: {one_line(exc)}")
                return server_pb.RunResponse(status=pb_status(common_pb.SC_INVALID_REQUEST, one_line(exc)))
            run_id = uuid.uuid4().hex[:12]
            server.remote_router = self.router
            server.remote_run_id = run_id
            self.server = server
            self.state = {"state": "running", "run_id": run_id, "rounds": int(self.conf.server.rounds),
                          "clients": [e.cid for e in endpoints], "started": time.time()}
            self.thread = threading.Thread(target=self.execute, args=(run_id, server, model, endpoints),
                                           name=f"fedcmd-run-{run_id}", daemon=True)
            self.thread.start()
        described = ", ".join(f"{e.cid}@{e.address}" for e in endpoints)
        self.log.info(f"run {run_id} started: {self.conf.algorithm} on {self.conf.data.dataset}, clients {described}")
        return server_pb.RunResponse(status=pb_status(common_pb.SC_OK,
                                                   f"run {run_id} started with {len(endpoints)} clients"))

    def running(self):
        return self.thread is not None and self.thread.is_alive()

    def resolve_clients(self, clients):
        """RunRequest.clients -> [Endpoint]; the server's remote.client_addresses when the list is empty."""
        if not clients:
            addresses = list(self.conf.remote.client_addresses)
            if not addresses:
                raise RemoteError("the run request names no clients and the server's remote.client_addresses is "
                                  "empty")
            clients = [server_pb.Client(client_id="", address=a, index=i) for i, a in enumerate(addresses)]
        endpoints, seen = [], set()
        for client in clients:
            address = check_address(client.address, f"address of client {client.client_id or client.index}")
            if client.client_id in self.users:
                cid = client.client_id
            elif 0 <= client.index < len(self.users):
                cid = self.users[client.index]
            else:
                raise RemoteError(f"client {client.client_id!r} (index {client.index}) is not in this config's "
                                  f"partition ({len(self.users)} clients: {self.users[0]}...{self.users[-1]})")
            if cid in seen:
                raise RemoteError(f"client {cid} is named twice in the run request")
            seen.add(cid)
            endpoints.append(Endpoint(cid, address, self.users.index(cid)))
        return endpoints

    def build(self):
        """A fresh model and algorithm server for one run, through EasyFL's coordinator (registered classes)."""
        from easyfl.coordinator import get_coordinator

        coordinator = get_coordinator()
        seed_all(self.conf.seed)
        coordinator.init_model()
        coordinator.init_server()
        if not getattr(coordinator.server, "is_remote", False):
            raise RemoteError("the registered server was not created in remote mode")
        return coordinator.server, coordinator.model

    def apply_initial_model(self, payload, model):
        """Use `RunRequest.model` as the initial state only when it is a tensor archive matching the model."""
        if not payload:
            return
        try:
            tensors, _ = codec.decode(payload)
        except codec.CodecError:
            self.log.warning(f"ignored the run request's model field ({len(payload)} bytes, not a tensor archive; "
                             "it is never unpickled): the model is built from the server's config")
            return
        state = model.state_dict()
        wrong = sorted(set(tensors) ^ set(state))
        wrong += [k for k in tensors if k in state and tuple(tensors[k].shape) != tuple(state[k].shape)]
        if wrong:
            raise RemoteError(f"the run request's model archive does not match the configured model "
                              f"(keys/shapes differ: {', '.join(wrong[:5])}{'...' if len(wrong) > 5 else ''})")
        model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()})
        self.log.info("the run starts from the model archive in the run request")

    def execute(self, run_id, server, model, endpoints):
        outcome = {"state": "complete", "error": None}
        try:
            server.start(model, endpoints)
            if getattr(server, "_should_stop", False):
                outcome["state"] = "stopped"
        except BaseException as exc:  # the run's status says why; the service stays up for the next run
            outcome = {"state": "failed", "error": one_line(exc)}
            self.log.error(f"run {run_id} failed: {outcome['error']}")
        finally:
            fleet = getattr(server, "fleet", None)
            if hasattr(fleet, "close"):
                fleet.close()
        recorder = getattr(server, "recorder", None)
        evaluation = getattr(server, "last_evaluation", None) or {}
        with self.lock:
            self.state.update(outcome, finished=time.time(),
                              folder=str(recorder.folder) if recorder is not None and recorder.folder else None,
                              summary=evaluation.get("summary"))
        self.log.info(f"run {run_id} {outcome['state']}")

    # ----- status and stop ---------------------------------------------------------------------------------------
    def status(self):
        with self.lock:
            state = dict(self.state)
            if self.server is not None and state.get("state") == "running":
                state["round"] = max(0, int(self.server._current_round) + 1)
        return state

    def status_rpc(self, request, context):
        return to_json(self.status())

    def Stop(self, request, context):
        with self.lock:
            if not self.running():
                return server_pb.StopResponse(status=pb_status(common_pb.SC_NOT_FOUND, "no run in progress"))
            self.server.stop()
            self.state["stop_requested"] = True
        return server_pb.StopResponse(status=pb_status(common_pb.SC_OK, "the run stops after the current round"))

    def shutdown(self):
        """The service is going away: a run still in progress is marked failed in its run folder."""
        with self.lock:
            if self.running() and getattr(self.server, "recorder", None) is not None:
                self.server.recorder.fail(RemoteError("the server shut down during the run"))

    # ----- uploads -----------------------------------------------------------------------------------------------
    def Upload(self, request, context):
        code, message = self.route(request)
        if code != common_pb.SC_OK:
            self.log.warning(f"upload from {request.client_id or '?'} (round {request.round_id + 1}) refused: "
                             f"{message}")
        return server_pb.UploadResponse(status=pb_status(code, message))

    def route(self, request):
        content, cid = request.content, request.client_id
        if content.type == common_pb.DATA_TYPE_PARAMS:
            kind = TRAIN
        elif content.type == common_pb.DATA_TYPE_PERFORMANCE:
            kind = TEST
        else:
            return common_pb.SC_INVALID_REQUEST, f"unknown content type {content.type}"
        key = (request.task_id, request.round_id, kind)
        try:
            if content.extra:
                report = from_json_object(content.extra, "the upload's error report")
                accepted, message = self.router.deliver(key, cid, error=f"reported: {report.get('error', report)}")
            elif kind == TRAIN:
                upload = Upload.from_bytes(content.data)
                if upload.cid != cid:
                    raise RemoteError(f"an upload of client {upload.cid!r} was sent as client {cid!r}")
                accepted, message = self.router.deliver(key, cid, value=upload)
            else:
                result = from_json_object(content.data, "the evaluation result")
                if result.setdefault("cid", cid) != cid:
                    raise RemoteError(f"a result of client {result['cid']!r} was sent as client {cid!r}")
                accepted, message = self.router.deliver(key, cid, value=result)
        except PluginError as exc:
            return common_pb.SC_INVALID_REQUEST, f"rejected: {one_line(exc)}"
        return (common_pb.SC_OK if accepted else common_pb.SC_NOT_FOUND), message


def status_handler(service):
    """The JSON status method as a generic gRPC handler (raw bytes in and out, no generated code)."""
    method = grpc.unary_unary_rpc_method_handler(service.status_rpc)
    return grpc.method_handlers_generic_handler(STATUS_SERVICE, {"Get": method})


def start(conf, users):
    """The service and its started gRPC server (listening on remote.bind:remote.server_port)."""
    service = ServerService(conf, users)
    grpc_srv = grpc_server(str(conf.remote.bind), int(conf.remote.server_port), SERVER_WORKERS)
    server_grpc.add_ServerServiceServicer_to_server(service, grpc_srv)
    grpc_srv.add_generic_rpc_handlers((status_handler(service),))
    grpc_srv.start()
    return service, grpc_srv


def serve(conf, stop_event=None):
    """`fedcmd-plugin remote server`: serve runs until SIGTERM/SIGINT (or `stop_event` is set)."""
    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.remote.wire import serve_until_stopped

    conf = init_role(conf, conf.remote.server_port)
    users = load_federated(conf).train.users
    service, grpc_srv = start(conf, users)
    logger().info(f"fedcmd-plugin server ({conf.algorithm}, {conf.data.dataset}, {len(users)} clients in the "
                  f"partition) listening on {conf.remote.bind}:{conf.remote.server_port}")
    serve_until_stopped(grpc_srv, stop_event, on_stop=service.shutdown)
    return 0
