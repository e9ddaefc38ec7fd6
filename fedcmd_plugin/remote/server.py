"""The remote server: EasyFL's ServerService (Run, Upload, Stop) and JSON status and stop methods on one port.

* `Run`, `Stop`, status and the JSON stop need the operator's token (`remote.operator_token`; UNAUTHENTICATED
  without it).
* `Run(RunRequest)` returns at once (as EasyFL's does) after starting the run in a background thread: SC_OK
  with "run <id> started ...", SC_ALREADY_EXISTS while a run is in progress, SC_INVALID_REQUEST for bad
  client lists. The model is always built from the server's own config (seeded like a standalone run);
  `request.model` is never unpickled: when it decodes as the plugin's tensor archive with the model's keys
  and shapes it becomes the initial state, anything else is ignored with a warning.
  `RunRequest.clients`: each `Client(client_id, address, index)` picks one client; the client is `client_id`
  when that is one of the partition's ids (c000, c001, ...), else the partition's `index`-th. The server
  reaches client index i only at the i-th of its own `remote.client_addresses`: a request naming another
  address is refused with PERMISSION_DENIED. An empty list means every configured client.
  The run gets a `RemoteFleet` built here, handed to the algorithm's server before it starts.
* Status (`/fedcmd_plugin.remote.RunStatus/Get`, JSON): {"state": idle|running|complete|stopped|failed,
  "run_id", "round", "rounds", "folder", "error", "summary"}: how a trigger waits for the end of a run.
* `Upload(UploadRequest)`: the signature (metadata `fedcmd-upload-mac`) must be the one the asked client
  makes with its ticket for this run, round and client (UNAUTHENTICATED otherwise; a duplicate is
  PERMISSION_DENIED), all before anything is decoded. The content (an `Upload` archive for train, a JSON
  object for test, a JSON error report in `content.extra`) is then checked against the request it answers
  (`validation`) and handed to the round waiting for it (`router.UploadRouter`). SC_INVALID_REQUEST for
  content that does not decode or fails the checks (the round records it under `rejected_uploads`),
  SC_NOT_FOUND when no round waits for it any more.
* `remote server --resume RUN_FOLDER` (config key `resume`) continues that folder's run at once, from its
  checkpoint, with the same run id and clients (their services keep their own state: `kept_store`); a Run
  request meanwhile is SC_ALREADY_EXISTS, and later runs start afresh.
* `Stop()`: the run ends after the current round (state "stopped", in the run folder too, with the rounds
  that ran; "complete" when that was the last round anyway). EasyFL's Stop answers SC_OK naming the run, or
  SC_NOT_FOUND when no run is in progress; the JSON stop (`/fedcmd_plugin.remote.RunStatus/Stop`) answers the
  status fields with "stopping": true, or false when no run was in progress (the last run's fields, if any).
"""
import threading
import time
import uuid

import grpc
from easyfl.pb import common_pb2 as common_pb
from easyfl.pb import server_service_pb2 as server_pb
from easyfl.pb import server_service_pb2_grpc as server_grpc

from fedcmd_plugin.errors import ConfigError, PluginError
from fedcmd_plugin.experiment import Experiment
from fedcmd_plugin.federation import checkpoint, codec
from fedcmd_plugin.federation.messages import Upload, layout
from fedcmd_plugin.remote import validation
from fedcmd_plugin.remote.auth import UPLOAD_MAC, RequireToken, Tickets, presented, read_token
from fedcmd_plugin.remote.fleet import RemoteFleet
from fedcmd_plugin.remote.roles import init_role, seed_all
from fedcmd_plugin.remote.router import Refused, UploadRouter
from fedcmd_plugin.remote.transport import state_bytes, transport_for
from fedcmd_plugin.remote.wire import (STATUS_METHOD, STATUS_SERVICE, STOP_METHOD, TEST, TRAIN, Endpoint,
                                       RemoteError, check_address, from_json_object, one_line, to_json)
from fedcmd_plugin.session import logger

SERVER_WORKERS = 32  # concurrent RPCs: one per uploading client, plus Run/Status/Stop
OPERATOR_METHODS = ("/easyfl.pb.ServerService/Run", "/easyfl.pb.ServerService/Stop", STATUS_METHOD, STOP_METHOD)


def pb_status(code, message=""):
    return common_pb.Status(code=code, message=message)


class Forbidden(RemoteError):
    """A run request asks for something this server never does (e.g. reach an address it is not configured for)."""


class ServerService(server_grpc.ServerServiceServicer):
    """experiment: the service's Experiment (its prepared config, and its data: client ids, split sizes), from
    which each run gets an experiment of its own; transport: how to reach the client services; server_token: the
    credential their Operate asks for."""

    def __init__(self, experiment, transport, server_token):
        self.experiment = experiment
        self.conf = experiment.conf
        self.report_type = experiment.algorithm.client.report_type  # what training uploads report
        data = experiment.data
        self.users = list(data.train.users)
        self.sizes = {cid: {"train": data.train.size(cid), "test": data.test.size(cid)} for cid in self.users}
        self.task = data.info.task
        self.transport = transport
        self.server_token = server_token
        self.router = UploadRouter()
        self.lock = threading.Lock()
        self.server = None  # the algorithm's server of the current / last run
        self.tickets = None  # the current / last run's upload credentials
        self.thread = None
        self.state = {"state": "idle"}
        self.log = logger()

    # ----- Run ---------------------------------------------------------------------------------------------------
    def Run(self, request, context):
        try:
            return self.launch(self.resolve_clients(request.clients), uuid.uuid4().hex[:12], request.model)
        except Forbidden as exc:
            self.log.error(f"run request refused: {one_line(exc)}")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, one_line(exc))
        except PluginError as exc:
            self.log.error(f"run request refused: {one_line(exc)}")
            return server_pb.RunResponse(status=pb_status(common_pb.SC_INVALID_REQUEST, one_line(exc)))

    def resume(self, folder, saved):
        """`remote server --resume RUN_FOLDER`: the stopped or killed run of that folder (`saved`: its checkpoint)
        goes on at once, under its own run id and with its own clients, whose services take up their state after
        the checkpoint's round."""
        clients = [server_pb.Client(client_id=cid) for cid in saved["fleet"]["clients"]]
        answer = self.launch(self.resolve_clients(clients), saved["fleet"]["run_id"])
        if answer.status.code != common_pb.SC_OK:
            raise RemoteError(f"cannot resume {folder}: {answer.status.message}")
        self.log.info(f"run {saved['fleet']['run_id']} resumed from {folder} after round {saved['round']}")

    def launch(self, endpoints, run_id, initial_model=b""):
        """Start run `run_id` with `endpoints` in a background thread: the RunResponse."""
        with self.lock:
            if self.running():
                return server_pb.RunResponse(status=pb_status(
                    common_pb.SC_ALREADY_EXISTS, f"run {self.state['run_id']} is in progress: wait for it or Stop it"))
            server, model = self.build()
            self.apply_initial_model(initial_model, model)
            self.tickets = Tickets(run_id)
            fleet = self.fleet_for(server, model, endpoints)
            server.fleet = fleet
            self.server = server
            self.state = {"state": "running", "run_id": run_id, "rounds": int(self.conf.server.rounds),
                          "clients": [e.cid for e in endpoints], "started": time.time()}
            self.thread = threading.Thread(target=self.execute, args=(run_id, server, model, endpoints, fleet),
                                           name=f"fedcmd-run-{run_id}", daemon=True)
            self.thread.start()
        described = ", ".join(f"{e.cid}@{e.address}" for e in endpoints)
        self.log.info(f"run {run_id} started: {self.conf.algorithm} on {self.conf.data.dataset}, clients {described}")
        return server_pb.RunResponse(status=pb_status(common_pb.SC_OK,
                                                   f"run {run_id} started with {len(endpoints)} clients"))

    def fleet_for(self, server, model, endpoints):
        """The run's RemoteFleet: the client services, this run's tickets and the checks of their answers."""
        state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        policy = validation.Policy(state, self.sizes, self.task, len(getattr(model, "block_names", ())),
                                   self.conf.remote.max_abs_value)
        return RemoteFleet(self.conf, endpoints, self.transport, self.server_token, self.router, self.tickets,
                           policy, state, note=lambda round_index, values: server.recorder.log_round(round_index,
                                                                                                     values),
                           report_type=self.report_type)

    def running(self):
        return self.thread is not None and self.thread.is_alive()

    def resolve_clients(self, clients):
        """RunRequest.clients -> [Endpoint] at the configured addresses; every configured client when empty."""
        configured = [check_address(a, "remote.client_addresses entry") for a in self.conf.remote.client_addresses]
        if not clients:
            clients = [server_pb.Client(client_id="", address=a, index=i) for i, a in enumerate(configured)]
        endpoints, seen = [], set()
        for client in clients:
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
            index = self.users.index(cid)
            if index >= len(configured):
                raise Forbidden(f"client {cid} has no address in the server's remote.client_addresses "
                                f"({len(configured)} configured)")
            if client.address.strip() and client.address.strip() != configured[index]:
                raise Forbidden(f"the run request names {client.address.strip()!r} for client {cid}; this server "
                                f"reaches it only at its configured address")
            endpoints.append(Endpoint(cid, configured[index], index))
        return endpoints

    def build(self):
        """A fresh model and algorithm server for one run, with an experiment of its own (the service's config and
        data; its own outcome), so that runs of one service share nothing else."""
        conf = self.conf
        experiment = Experiment(conf, self.experiment.algorithm)
        seed_all(conf.seed)
        model = experiment.build_model()
        return experiment.algorithm.server(conf, experiment=experiment, is_remote=True,
                                           local_port=conf.local_port), model

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

    def execute(self, run_id, server, model, endpoints, fleet):
        outcome = {"state": "complete", "error": None}
        try:
            server.start(model, endpoints)
            if server.rounds_done < int(self.conf.server.rounds):
                outcome["state"] = "stopped"
        except BaseException as exc:  # the run's status says why; the service stays up for the next run
            outcome = {"state": "failed", "error": one_line(exc)}
            self.log.error(f"run {run_id} failed: {outcome['error']}")
        finally:
            fleet.close()
            self.conf.resume = None  # a resume continues one run; the next Run starts afresh
        folder = server.experiment.outcome.get("folder")
        with self.lock:
            self.state.update(outcome, finished=time.time(), round=getattr(server, "rounds_done", 0),
                              folder=str(folder) if folder else None,
                              summary=(server.last_evaluation or {}).get("summary"))
        self.log.info(f"run {run_id} {outcome['state']}")

    # ----- status and stop ---------------------------------------------------------------------------------------
    def status(self):
        with self.lock:
            return self.locked_status()

    def locked_status(self):
        """The status fields; the caller holds the lock."""
        state = dict(self.state)
        if self.server is not None and state.get("state") == "running":
            state["round"] = self.server.round_number
        return state

    def status_rpc(self, request, context):
        return to_json(self.status())

    def stop(self):
        """Ask the run in progress to end after its current round: the status fields, with "stopping" false when
        no run was in progress (EasyFL's Stop and the JSON stop both answer from here)."""
        with self.lock:
            stopping = self.running()
            if stopping:
                self.server.stop("a Stop request from the operator")
                self.state["stop_requested"] = True
            return {**self.locked_status(), "stopping": stopping}

    def stop_rpc(self, request, context):
        return to_json(self.stop())

    def Stop(self, request, context):
        answer = self.stop()
        if not answer["stopping"]:
            return server_pb.StopResponse(status=pb_status(common_pb.SC_NOT_FOUND, "no run in progress"))
        return server_pb.StopResponse(status=pb_status(common_pb.SC_OK, f"run {answer['run_id']} stops after the "
                                                                        "current round"))

    def shutdown(self):
        """The service is going away: a run still in progress is marked failed in its run folder."""
        with self.lock:
            if self.running() and getattr(self.server, "recorder", None) is not None:
                self.server.recorder.fail(RemoteError("the server shut down during the run"))

    # ----- uploads -----------------------------------------------------------------------------------------------
    def Upload(self, request, context):
        kind = {common_pb.DATA_TYPE_PARAMS: TRAIN, common_pb.DATA_TYPE_PERFORMANCE: TEST}.get(request.content.type)
        where = f"upload from {request.client_id or '?'} (round {request.round_id + 1})"
        tickets = self.tickets
        signature = presented(context.invocation_metadata(), UPLOAD_MAC)
        if kind is None or tickets is None or not tickets.verify(request, kind, signature):
            self.log.warning(f"{where} refused: not signed with the ticket of this run, round and client")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "the upload is not signed with the ticket the server "
                                                           "issued for this run, round and client")
        key = (request.task_id, request.round_id, kind)
        try:
            code, message = self.route(key, request)
        except Refused as exc:
            self.log.warning(f"{where} refused: {exc}")
            if not exc.late:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            code, message = common_pb.SC_NOT_FOUND, str(exc)
        return server_pb.UploadResponse(status=pb_status(code, message))

    def route(self, key, request):
        """Check a signed upload against its request and hand it to the waiting round: (status code, message)."""
        content, cid = request.content, request.client_id
        expected = self.router.expectation(key, cid)
        if content.extra:
            try:
                report = from_json_object(content.extra, "the upload's error report")
            except PluginError as exc:
                report = {"error": f"an unreadable error report ({one_line(exc)})"}
            self.router.deliver(key, cid, error=f"reported: {str(report.get('error', report))[:500]}")
            return common_pb.SC_OK, "error report accepted"
        try:
            value = self.checked(expected, content.data, self.report_type)
        except PluginError as exc:  # validation.Rejected, or content that does not decode
            reason = one_line(exc)
            self.log.warning(f"round {key[1] + 1}: rejected the {key[2]} answer of client {cid}: {reason}")
            self.router.deliver(key, cid, rejected=reason)
            return common_pb.SC_INVALID_REQUEST, f"rejected: {reason}"
        self.router.deliver(key, cid, value=value)
        return common_pb.SC_OK, "accepted"

    @staticmethod
    def checked(expected, data, report_type=None):
        """The decoded answer, after its layout (from the header alone) and then its values passed the checks;
        `report_type`: the Report class of the algorithm's part of a training upload."""
        if expected.kind == TRAIN:
            groups, _ = layout(data)
            validation.check_layout(expected, groups)
            upload = Upload.from_bytes(data, report_type)
            validation.check_upload(expected, upload)
            return upload
        result = from_json_object(data, "the evaluation result")
        validation.check_result(expected, result)
        return {**result, "cid": expected.cid}


def status_handler(service):
    """The JSON status and stop methods as a generic gRPC handler (raw bytes in and out, no generated code)."""
    methods = {"Get": service.status_rpc, "Stop": service.stop_rpc}
    return grpc.method_handlers_generic_handler(STATUS_SERVICE, {name: grpc.unary_unary_rpc_method_handler(call)
                                                                 for name, call in methods.items()})


def start(experiment, transport, operator_token, server_token):
    """The service and its started gRPC server (listening on remote.bind:remote.server_port)."""
    conf = experiment.conf
    service = ServerService(experiment, transport, server_token)
    guard = RequireToken(operator_token, OPERATOR_METHODS, "operator")
    grpc_srv = transport.server(str(conf.remote.bind), int(conf.remote.server_port), SERVER_WORKERS, [guard])
    server_grpc.add_ServerServiceServicer_to_server(service, grpc_srv)
    grpc_srv.add_generic_rpc_handlers((status_handler(service),))
    grpc_srv.start()
    return service, grpc_srv


def serve(conf, stop_event=None):
    """`fedcmd-plugin remote server`: serve runs until SIGTERM/SIGINT (or `stop_event` is set)."""
    from fedcmd_plugin.remote.wire import serve_until_stopped

    operator_token = read_token(conf.remote.operator_token, "remote.operator_token")
    server_token = read_token(conf.remote.server_token, "remote.server_token")
    if not conf.remote.client_addresses:
        raise ConfigError("config key 'remote.client_addresses' is empty: the server reaches only the client "
                          "services named there, e.g. remote.client_addresses=[host0:23000,host1:23000]")
    experiment = init_role(conf, conf.remote.server_port)
    conf = experiment.conf
    transport = transport_for(conf, "server", state_bytes(experiment.build_model().state_dict()))
    saved = checkpoint.read(conf.resume, conf, mmap=True) if conf.resume else None  # refused before the port opens
    service, grpc_srv = start(experiment, transport, operator_token, server_token)
    logger().info(f"fedcmd-plugin server ({conf.algorithm}, {conf.data.dataset}, {len(service.users)} clients in "
                  f"the partition) listening on {conf.remote.bind}:{conf.remote.server_port}")
    if saved is not None:
        service.resume(conf.resume, saved)
    serve_until_stopped(grpc_srv, stop_event, on_stop=service.shutdown)
    return 0
