"""What the remote roles share: addresses, serving until stopped, status texts, JSON payloads and the remote
envelope around a round's `Dispatch`.

Payloads are the plugin's tensor archives (`Dispatch`/`Upload` bytes) or JSON; nothing here unpickles.
"""
import json
import signal
import string
import threading
from dataclasses import dataclass

import grpc

from fedcmd_plugin.errors import ConfigError, PluginError
from fedcmd_plugin.federation import codec
from fedcmd_plugin.federation.messages import Dispatch, pack, unpack

# The server's run status and stop (JSON in, JSON out) next to EasyFL's ServerService on the same port.
STATUS_SERVICE = "fedcmd_plugin.remote.RunStatus"
STATUS_METHOD = f"/{STATUS_SERVICE}/Get"
STOP_METHOD = f"/{STATUS_SERVICE}/Stop"

ENVELOPE_KEY = "_remote"  # the dispatch header entry the remote layer adds (and removes again on the client)
INITIAL_PREFIX = "_remote.initial/"  # Dispatch.extra entries carrying the run's initial state
TRAIN, TEST = "train", "test"


class RemoteError(PluginError):
    """A remote run cannot go on (no client answered, server unreachable, bad request...)."""


@dataclass(frozen=True)
class Endpoint:
    """One client service of a run: the client id it hosts, where it listens and its data index."""
    cid: str
    address: str
    index: int


def check_address(address, key="address"):
    """'host:port' with a port in 1..65535; returns it stripped."""
    text = str(address).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} {text!r} must look like host:port (e.g. localhost:22999)")
    return text


def check_port(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"config key '{key}' must be a port number in 1..65535; got {value!r}")
    return value


def wait_ready(chan, address, timeout):
    """Block until `chan` is connected; RemoteError naming `address` after `timeout` seconds."""
    try:
        grpc.channel_ready_future(chan).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise RemoteError(f"cannot reach {address} within {timeout:.0f} s") from None


def serve_until_stopped(grpc_srv, stop_event=None, on_stop=None, grace=1.0):
    """Block until SIGTERM (containers stop services with it), Ctrl-C or `stop_event`; then stop `grpc_srv`."""
    stop_event = stop_event or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    try:
        while not stop_event.wait(0.5):
            pass
    finally:
        if on_stop is not None:
            on_stop()
        grpc_srv.stop(grace).wait(grace + 1)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def one_line(exc):
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, PluginError) else f"{type(exc).__name__}: {text}"


def rpc_error_text(exc):
    """A short reason for a failed RPC (status code + details)."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = " ".join(str(exc.details() or "").split())
        return f"{exc.code().name}: {details}" if details else exc.code().name
    return one_line(exc)


# ----- JSON ---------------------------------------------------------------------------------------------------
def _plain(value):
    """numpy scalars/arrays and tensors as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(obj):
    return json.dumps(obj, default=_plain, allow_nan=True).encode()


def from_json_object(payload, what):
    """A JSON object (dict) from bytes; RemoteError for anything else."""
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
        codec.check_depth(obj)
    except (UnicodeDecodeError, ValueError, RecursionError, codec.CodecError):
        raise RemoteError(f"{what} is not JSON of at most {codec.MAX_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise RemoteError(f"{what} is not a JSON object")
    return obj


# ----- the envelope around a Dispatch ----------------------------------------------------------------------------
def wrap(dispatch, ticket, splits=None, initial_state=None, keep_from=0, snapshot=None):
    """The bytes a client service receives for `dispatch`: its tensors and typed header plus, in a reserved header
    entry, the client's upload ticket, the evaluation splits, its oldest snapshot a resume from the server's
    checkpoint needs (`keep_from`) and, on first contact, the run's initial state (in reserved extra entries) and
    the round after which the client's state is the one the server counts (`snapshot`; 0: it has not trained)."""
    envelope = {"ticket": ticket, "keep_from": int(keep_from)}
    if snapshot is not None:
        envelope["snapshot"] = int(snapshot)
    extra = dict(dispatch.extra)
    if splits is not None:
        envelope["splits"] = list(splits)
    if initial_state is not None:
        envelope["initial"] = True
        extra.update({INITIAL_PREFIX + key: value for key, value in initial_state.items()})
    return pack({"state": dispatch.state, "extra": extra}, {**dispatch.header(), ENVELOPE_KEY: envelope})


def unwrap(payload, settings_type=None):
    """(the algorithm's Dispatch, envelope dict, initial state or None) from `wrap`'s bytes; `settings_type`: the
    Settings class of the algorithm's part (its client's `settings_type`). RemoteError or CodecError otherwise."""
    groups, header = unpack(payload)
    envelope = header.pop(ENVELOPE_KEY, None) if isinstance(header, dict) else None
    ticket = envelope.get("ticket") if isinstance(envelope, dict) else None
    if not isinstance(ticket, str) or len(ticket) != 64 or set(ticket) - set(string.hexdigits):
        raise RemoteError("dispatch envelope is malformed or carries no upload ticket")
    for key in ("keep_from", "snapshot"):
        value = envelope.get(key, 0)
        if type(value) is not int or value < 0:
            raise RemoteError(f"dispatch envelope entry {key!r} must be a round count (an integer >= 0)")
    extra, initial = {}, {}
    for key, value in groups["extra"].items():
        if key.startswith(INITIAL_PREFIX):
            initial[key[len(INITIAL_PREFIX):]] = value
        else:
            extra[key] = value
    dispatch = Dispatch.from_parts({**groups, "extra": extra}, header, settings_type)
    return dispatch, envelope, (initial if envelope.get("initial") else None)
