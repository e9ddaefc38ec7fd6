"""The server's view of its clients in remote mode: gRPC client services instead of client objects.

A `fedcmd_plugin.federation.fleet.Fleet`, built by the server service for one run and handed to the algorithm's
server before it starts. A request (`train` or `evaluate`) sends one `Operate` per client concurrently, each
with the server's token and the client's ticket for this round (`auth.Tickets`), then waits at most
`server.round_timeout` seconds for the uploads the server service checks (`validation`) and routes here.
Clients that refuse, cannot be reached, report an error, send an answer that fails the checks or stay silent
are left out of the round (a warning names each one; `missing_clients` / `missing_eval_clients` and
`rejected_uploads` / `rejected_eval_uploads` go into the round's metrics); the round goes on with the others.
A round without any answer is an error.
Every request tells the client which of its snapshots the server's checkpoint goes with (older ones can go), and
every first contact (a new run, a resumed one, a client back after missing a round) which one the server's state
goes with: the one after the last round whose training of it the server counted, so that the client takes up
exactly that state (`kept_store`).
"""
import threading
from concurrent.futures import ThreadPoolExecutor

from easyfl.pb import client_service_pb2 as client_pb
from easyfl.pb import client_service_pb2_grpc as client_grpc
from easyfl.pb import common_pb2 as common_pb

from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.remote.auth import bearer
from fedcmd_plugin.remote.transport import MIB, message_limit, state_bytes
from fedcmd_plugin.remote.wire import TEST, TRAIN, RemoteError, rpc_error_text, wrap
from fedcmd_plugin.session import logger

MESSAGE_SLACK = 1024 * 1024  # bytes of headers and metadata beside the tensors of one dispatch
OPERATE_TIMEOUT = 60.0  # seconds for a client service to accept a request (it answers before working)


class RemoteFleet:
    """conf: the run's config; endpoints: the run's client services (Endpoint); transport: how to reach them;
    server_token: the credential their Operate asks for; router: where the server service delivers checked
    answers; tickets: the run's upload credentials; policy: builds each answer's Expectation; initial_state:
    sent to each client on first contact; note(round_index, values): records round metrics; report_type: the
    Report class the server service decodes the uploads' algorithm reports as."""

    def __init__(self, conf, endpoints, transport, server_token, router, tickets, policy, initial_state, note,
                 report_type=None):
        self.endpoints = {endpoint.cid: endpoint for endpoint in endpoints}
        if not self.endpoints:
            raise RemoteError("the run has no clients")
        self.conf = conf
        self.timeout = float(conf.server.round_timeout)
        self.call_metadata = bearer(server_token)
        self.router, self.tickets, self.policy = router, tickets, policy
        self.initial_state = initial_state
        self.note = note
        self.report_type = report_type
        self.log = logger()
        # One channel per client service (a service may host several clients).
        self.channels = {e.address: transport.channel(e.address) for e in self.endpoints.values()}
        self.stubs = {address: client_grpc.ClientServiceStub(chan) for address, chan in self.channels.items()}
        self.initialised = set()  # clients that received this run's initial state
        self.checkpointed_rounds = {}  # `trained` as the server's latest checkpoint holds it
        self.trained = {}  # cid -> the rounds done after the last round whose training of it the server counted
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(32, len(self.endpoints))),
                                       thread_name_prefix="fedcmd-operate")

    # ----- the fleet interface ---------------------------------------------------------------------------------
    def check_room(self, state, models):
        """Refuse a run whose gRPC message limit cannot hold `models` copies of `state` (plus headers) rather than
        lose every client at its first dispatch."""
        model = state_bytes(state)
        needed = models * model + MESSAGE_SLACK
        if message_limit(self.conf, model) < needed:
            raise ConfigError(f"config key 'remote.max_message_mb' must be at least {needed / MIB:.1f} for algorithm "
                              f"{self.conf.algorithm!r}: its dispatches carry {models} models of {model / MIB:.1f} MiB")

    def client_ids(self):
        return sorted(self.endpoints)

    def train(self, dispatches):
        """{cid: Dispatch} -> [Upload] of the clients that answered in time."""
        results = self.request(TRAIN, dispatches)
        round_index = next(iter(dispatches.values())).settings.round
        self.trained.update({cid: round_index + 1 for cid in results})
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

    def checkpointed(self, rounds_done):
        """The run and its clients, for the checkpoint after `rounds_done` rounds; the clients learn of it with
        their next request and drop the snapshots a resume can no longer need."""
        self.checkpointed_rounds = dict(self.trained)
        return {"mode": "remote", "run_id": self.tickets.run_id, "clients": self.client_ids(),
                "trained": self.checkpointed_rounds}

    def resume(self, rounds_done, saved):
        """The run continues after `rounds_done` rounds: each client's first request names the snapshot it takes up."""
        self.trained = {cid: int(rounds) for cid, rounds in saved["trained"].items()}
        self.checkpointed_rounds = dict(self.trained)

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
        round_index = next(iter(dispatches.values())).settings.round
        expectations = {cid: self.policy.expect(kind, cid, dispatch, splits or ())
                        for cid, dispatch in dispatches.items()}
        waiter = self.router.expect((self.tickets.run_id, round_index, kind), expectations)
        try:
            for cid, dispatch in dispatches.items():
                self.pool.submit(self.operate, waiter, kind, cid, dispatch, splits, round_index)
            waiter.wait(self.timeout)
        finally:
            waiter.close()
        with self.router.condition:
            results, failures, rejected = dict(waiter.results), dict(waiter.failures), dict(waiter.rejected)
        missing = {cid: failures.get(cid, f"no answer within server.round_timeout={self.timeout:g} s")
                   for cid in dispatches if cid not in results}
        self.report_missing(kind, round_index, missing, rejected)
        if not results:
            reasons = "; ".join(f"{cid}: {reason}" for cid, reason in missing.items())
            raise RemoteError(f"round {round_index + 1}: no client answered the {kind} request ({reasons})")
        return results

    def report_missing(self, kind, round_index, missing, rejected):
        if not missing:
            return
        with self.lock:
            self.initialised.difference_update(missing)  # it may come back restarted: send the state again
        work = "training" if kind == TRAIN else "evaluation"
        for cid, reason in missing.items():
            self.log.warning(f"round {round_index + 1}: client {cid} ({self.endpoints[cid].address}) is left out "
                             f"of this round's {work}: {reason}")
        suffix = "" if kind == TRAIN else "_eval"
        self.note(round_index, {f"missing{suffix}_clients": sorted(missing)})
        if rejected:
            self.note(round_index, {f"rejected{suffix}_uploads": dict(sorted(rejected.items()))})

    def operate(self, waiter, kind, cid, dispatch, splits, round_index):
        endpoint = self.endpoints[cid]
        try:
            with self.lock:
                initial = None if cid in self.initialised else self.initial_state
                snapshot = None if initial is None else self.trained.get(cid, 0)
            ticket = self.tickets.issue(round_index, kind, cid)
            keep_from = self.checkpointed_rounds.get(cid, 0)
            payload = wrap(dispatch, ticket, splits, initial, keep_from, snapshot)
            request = client_pb.OperateRequest(
                type=client_pb.OP_TYPE_TRAIN if kind == TRAIN else client_pb.OP_TYPE_TEST, model=payload,
                data_index=endpoint.index, config=self.operate_config(dispatch, round_index))
            response = self.stubs[endpoint.address].Operate(request, timeout=min(OPERATE_TIMEOUT, self.timeout),
                                                            metadata=self.call_metadata)
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
        conf = self.conf
        opt = conf.client.optimizer
        return client_pb.OperateConfig(
            batch_size=int(conf.client.batch_size), local_epoch=dispatch.settings.local_epoch,
            seed=int(conf.seed), optimizer=client_pb.Optimizer(type=str(opt.type), lr=float(opt.lr),
                                                               momentum=float(opt.momentum)),
            local_test=False, task_id=str(self.tickets.run_id), round_id=int(round_index), track=False,
            test_batch_size=int(conf.client.test_batch_size))
