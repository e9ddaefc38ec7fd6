"""Starting a remote run, waiting for its end and stopping it.

`trigger(conf)` sends EasyFL's `RunRequest` to `remote.server_address` with the operator's token, naming the
client services of `remote.client_addresses` (the i-th address hosts client index i, id c<i:03d>; an empty
list means all the server is configured for), then polls the server's status method until the run is
complete. `run_status` / `wait_for_run` also serve runs started another way, e.g. with EasyFL's own stub;
`stop_run` ends the run in progress after its current round.
"""
import time

import grpc
from easyfl.pb import common_pb2 as common_pb
from easyfl.pb import server_service_pb2 as server_pb
from easyfl.pb import server_service_pb2_grpc as server_grpc

from fedcmd_plugin.remote.auth import bearer, read_token
from fedcmd_plugin.remote.transport import transport_for
from fedcmd_plugin.remote.wire import (STATUS_METHOD, STOP_METHOD, RemoteError, from_json_object, rpc_error_text,
                                       to_json, wait_ready)
from fedcmd_plugin.session import logger
from fedcmd_plugin.tracking.recorder import coverage

FINISHED = ("complete", "stopped", "failed")


def operator_call(chan, method, metadata, timeout, what):
    """The JSON answer of one of the server's operator methods over an open channel; `metadata` carries the
    operator's token (`auth.bearer`)."""
    call = chan.unary_unary(method)
    return from_json_object(call(to_json({}), timeout=timeout, metadata=metadata), what)


def run_status(chan, metadata, timeout=30.0):
    """The server's status dict."""
    return operator_call(chan, STATUS_METHOD, metadata, timeout, "the server's status")


def stop_run(chan, metadata, timeout=30.0):
    """Ask the server to end its run after the current round: the status dict with "stopping" (false when no
    run was in progress)."""
    return operator_call(chan, STOP_METHOD, metadata, timeout, "the server's answer to the stop request")


def wait_for_run(chan, address, metadata, run_id=None, timeout=None, poll=1.0, lost_after=60.0, report=None):
    """Poll until run `run_id` (default: the current one) has finished; returns its final status dict.

    RemoteError when it failed, when `timeout` seconds passed (the run goes on on the server), when the
    server refuses the token or cannot be reached for `lost_after` seconds."""
    started = last_contact = time.monotonic()
    last_round = None
    while True:
        now = time.monotonic()
        try:
            state = run_status(chan, metadata)
            last_contact = now
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise RemoteError(f"the server at {address} refused the status request: {rpc_error_text(exc)}") \
                    from None
            if now - last_contact > lost_after:
                raise RemoteError(f"lost the server at {address} for {lost_after:.0f} s ({rpc_error_text(exc)})") \
                    from None
            state = None
        if state is not None:
            run_id = run_id or state.get("run_id")
            if state.get("run_id") != run_id:
                raise RemoteError(f"the server at {address} no longer knows run {run_id} (restarted?)")
            if state.get("state") == "failed":
                raise RemoteError(f"run {run_id} failed: {state.get('error')}")
            if state.get("state") in FINISHED:
                return state
            if report is not None and state.get("round") != last_round:
                last_round = state.get("round")
                report(state)
        if timeout and now - started > timeout:
            raise RemoteError(f"run {run_id} did not finish within {timeout:g} s (it goes on on the server)")
        time.sleep(poll)


def run_request(addresses):
    from fedcmd_plugin.data.federated import client_ids

    return server_pb.RunRequest(clients=[server_pb.Client(client_id=cid, address=str(address), index=i)
                                         for i, (cid, address) in enumerate(zip(client_ids(len(addresses)),
                                                                               addresses))])


def trigger(conf, timeout=None, connect_timeout=120.0, poll=1.0):
    """Start a run on the configured server with the configured clients and wait for it; its final status."""
    from fedcmd_plugin.remote.roles import check_remote_config

    check_remote_config(conf)
    metadata = bearer(read_token(conf.remote.operator_token, "remote.operator_token"))
    address = str(conf.remote.server_address)
    log = logger()
    chan = transport_for(conf, "trigger").channel(address)
    try:
        wait_ready(chan, address, connect_timeout)
        try:
            answer = server_grpc.ServerServiceStub(chan).Run(run_request(list(conf.remote.client_addresses)),
                                                             timeout=120, metadata=metadata)
        except grpc.RpcError as exc:
            raise RemoteError(f"run request to {address} failed: {rpc_error_text(exc)}") from None
        if answer.status.code != common_pb.SC_OK:
            name = common_pb.StatusCode.Name(answer.status.code)
            raise RemoteError(f"the server at {address} refused the run ({name}): {answer.status.message}")
        run_id = run_status(chan, metadata).get("run_id")  # the status method's field, never parsed from a message
        log.info(f"{answer.status.message} (server {address})")

        def report(state):
            log.info(f"run {state.get('run_id')}: round {state.get('round')}/{state.get('rounds')}")

        final = wait_for_run(chan, address, metadata, run_id, timeout, poll, report=report)
    finally:
        chan.close()
    summary = final.get("summary") or {}
    headline = f", personalised accuracy {summary['accuracy']:.2f}%" if "accuracy" in summary else ""
    headline += coverage(summary)
    reached = f" after {final.get('round')} of {final.get('rounds')} rounds" if final.get("state") == "stopped" else ""
    log.info(f"run {final.get('run_id')} {final.get('state')}{reached}{headline}; run folder (on the server): "
             f"{final.get('folder')}")
    return final
