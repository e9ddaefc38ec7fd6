"""The server's view of its clients in remote mode: gRPC client services instead of client objects.

Same interface as `fedcmd_plugin.federation.fleet.LocalFleet`. A request (`train` or `evaluate`) sends one
`Operate` per client concurrently, then waits at most `server.round_timeout` seconds for the uploads the
server service routes here. Clients that refuse, cannot be reached, report an error or stay silent are
left out of the round (a warning names each one, `missing_clients` / `missing_eval_clients` go into the
round's metrics); the round goes on with the others. A round without any answer is an error.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

from easyfl.pb import client_service_pb2 as client_pb
from easyfl.pb import client_service_pb2_grpc as client_grpc
from easyfl.pb import common_pb2 as common_pb

from fedcmd_plugin.remote.wire import TEST, TRAIN, Endpoint, RemoteError, channel, rpc_error_text, wrap
from fedcmd_plugin.session import logger

OPERATE_TIMEOUT = 60.0  # seconds for a client service to accept a request (it answers before working)


class RemoteFleet:
    def __init__(self, server, clients):
        self.server = server
        self.router = getattr(server, "remote_router", None)
        self.run_id = getattr(server, "remote_run_id", None)
        if self.router is None or self.run_id is None:
            raise RemoteError("remote mode needs the server started by `fedcmd-plugin remote server` "
                              "(fedcmd_plugin.remote.server), which routes the clients' uploads")
        self.endpoints = {}
        for endpoint in clients:
            if not isinstance(endpoint, Endpoint):
                raise RemoteError(f"remote clients must be Endpoint(cid, address, index), got {endpoint!r}")
            self.endpoints[endpoint.cid] = endpoint
        if not self.endpoints:
            raise RemoteError("the run has no clients")
        self.timeout = float(server.conf.server.round_timeout)
        self.log = logger()
        # One channel per client service (a service may host several clients).
        self.channels = {e.address: channel(e.address) for e in self.endpoints.values()}
        self.stubs = {address: client_grpc.ClientServiceStub(chan) for address, chan in self.channels.items()}
        self.initialised = set()  # clients that received this run's initial state
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(32, len(self.endpoints))),
                                       thread_name_prefix="fedcmd-operate")

    # ----- the fleet interface ---------------------------------------------------------------------------------
    def client_ids(self):
        return sorted(self.endpoints)

    def train(self, dispatches):
        """{cid: Dispatch} -> [Upload] of the clients that answered in time."""
        results = self.request(TRAIN, dispatches)
        return [results[cid] for cid in dispatches if cid in results]

    def evaluate(self, dispatches, splits):
        """{cid: Dispatch} -> [{"cid": ..., <metrics>}] of the clients that answered in time."""
        results = self.request(TEST, dispatches, tuple(splits))
        return [results[cid] for cid in dispatches if cid in results]

    def kept(self, cid):
        """A remote client's own state never leaves it."""
        return {}

    def set_kept(self, cid, kept):
        """Nothing to copy: every remote client is hosted once."""

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        for chan in self.channels.values():
            chan.close()

    # ----- one request to many clients -------------------------------------------------------------------------
    def request(self, kind, dispatches, splits=None):
        if not dispatches:
            return {}
        unknown = [cid for cid in dispatches if cid not in self.endpoints]
        if unknown:
            raise RemoteError(f"no client service hosts {', '.join(unknown)}")
        round_index = self.server._current_round
        waiter = self.router.expect((self.run_id, round_index, kind), list(dispatches))
        try:
            for cid, dispatch in dispatches.items():
                self.pool.submit(self.operate, waiter, kind, cid, dispatch, splits, round_index)
            waiter.wait(self.timeout)
        finally:
            waiter.close()
        with self.router.condition:
            results, failures = dict(waiter.results), dict(waiter.failures)
        missing = {cid: failures.get(cid, f"no answer within server.round_timeout={self.timeout:g} s")
                   for cid in dispatches if cid not in results}
        self.report_missing(kind, round_index, missing)
        if not results:
            reasons = "; ".join(f"{cid}: {reason}" for cid, reason in missing.items())
            raise RemoteError(f"round {round_index + 1}: no client answered the {kind} request ({reasons})")
        return results

    def report_missing(self, kind, round_index, missing):
        if not missing:
            return
        with self.lock:
            self.initialised.difference_update(missing)  # it may come back restarted: send the state again
        work = "training" if kind == TRAIN else "evaluation"
        for cid, reason in missing.items():
            self.log.warning(f"round {round_index + 1}: client {cid} ({self.endpoints[cid].address}) is left out "
                             f"of this round's {work}: {reason}")
        key = "missing_clients" if kind == TRAIN else "missing_eval_clients"
        self.server.recorder.log_round(round_index, {key: sorted(missing)})

    def operate(self, waiter, kind, cid, dispatch, splits, round_index):
        endpoint = self.endpoints[cid]
        try:
            with self.lock:
                initial = None if cid in self.initialised else self.server.initial_state
            payload = wrap(dispatch, splits, initial).to_bytes()
            request = client_pb.OperateRequest(
                type=client_pb.OP_TYPE_TRAIN if kind == TRAIN else client_pb.OP_TYPE_TEST, model=payload,
                data_index=endpoint.index, config=self.operate_config(dispatch, round_index))
            response = self.stubs[endpoint.address].Operate(request, timeout=min(OPERATE_TIMEOUT, self.timeout))
        except Exception as exc:  # unreachable, deadline, encoding: the client misses this round
            waiter.fail(cid, f"not reachable at {endpoint.address} ({rpc_error_text(exc)})")
            return
        if response.status.code != common_pb.SC_OK:
            name = common_pb.StatusCode.Name(response.status.code)
            waiter.fail(cid, f"refused the request ({name}: {response.status.message})")
            return
        if initial is not None:
            with self.lock:
                self.initialised.add(cid)

    def operate_config(self, dispatch, round_index):
        """EasyFL's per-request settings (informative: the client follows the Dispatch and its own config)."""
        conf = self.server.conf
        opt = conf.client.optimizer
        return client_pb.OperateConfig(
            batch_size=int(conf.client.batch_size), local_epoch=int(dispatch.meta.get("local_epoch", 0)),
            seed=int(conf.seed), optimizer=client_pb.Optimizer(type=str(opt.type), lr=float(opt.lr),
                                                               momentum=float(opt.momentum)),
            local_test=False, task_id=str(self.run_id), round_id=int(round_index), track=False,
            test_batch_size=int(conf.client.test_batch_size))
