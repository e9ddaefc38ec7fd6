"""How a role's gRPC traffic travels: TLS (optionally mutual) from the PEM files of `remote.tls.*`, or plaintext,
which is allowed only when every configured address is loopback or `remote.insecure: true` says so; and the
largest message, derived from the model's size unless `remote.max_message_mb` sets it.

A message over the limit is refused by gRPC before any of it is decoded.
"""
import ipaddress
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.session import logger

MIB = 1024 * 1024
BASE_MESSAGE = 4 * MIB  # gRPC's own default: room for headers, JSON results and status
MODEL_COPIES = 3  # the largest message holds the model about three times (state + initial state + extras)


def is_loopback(host):
    host = str(host).strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_addresses(conf):
    """The configured interface and addresses that are not loopback, as (key, value) pairs."""
    remote = conf.remote
    hosts = [("remote.bind", str(remote.bind), str(remote.bind)),
             ("remote.server_address", str(remote.server_address), str(remote.server_address).rpartition(":")[0])]
    hosts += [("remote.client_addresses", str(a), str(a).rpartition(":")[0]) for a in remote.client_addresses]
    return [(key, value) for key, value, host in hosts if not is_loopback(host)]


def check_plaintext(conf):
    """ConfigError unless TLS is configured, every address is loopback, or remote.insecure is set."""
    if conf.remote.tls.ca is not None or conf.remote.insecure:
        return
    outside = plaintext_addresses(conf)
    if outside:
        key, address = outside[0]
        raise ConfigError(f"config key '{key}' is {address}, not a loopback address: plaintext gRPC would leave "
                          "this machine; set remote.tls.ca/cert/key (`fedcmd-plugin remote certs DIR` makes them) "
                          "or, knowingly, remote.insecure=true")


def read_pem(value, key, index=None):
    """The bytes of PEM file config `key` ({index} replaced by a client's index); ConfigError naming it."""
    path = Path(str(value).replace("{index}", str(index)) if index is not None else str(value))
    if not path.is_file():
        raise ConfigError(f"config key '{key}': file {path} does not exist")
    data = path.read_bytes()
    if b"-----BEGIN " not in data:
        raise ConfigError(f"config key '{key}': file {path} is not PEM")
    return data


RECONNECT_MS = 1000  # the longest a channel waits before trying to reach a vanished peer again


@dataclass(frozen=True)
class TLS:
    ca: bytes
    cert: bytes | None
    key: bytes | None
    mutual: bool


@dataclass(frozen=True)
class Transport:
    max_message: int
    tls: TLS | None = None

    @property
    def options(self):
        return [("grpc.max_send_message_length", self.max_message),
                ("grpc.max_receive_message_length", self.max_message)]

    def channel(self, address):
        """A channel to `address` that tries to reconnect at least every RECONNECT_MS while its peer is gone (gRPC's
        default backoff grows to 2 minutes, so a restarted server or client service would stay unreachable)."""
        options = [*self.options, ("grpc.initial_reconnect_backoff_ms", RECONNECT_MS // 2),
                   ("grpc.min_reconnect_backoff_ms", RECONNECT_MS // 2),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_MS)]
        if self.tls is None:
            return grpc.insecure_channel(address, options=options)
        tls = self.tls
        own = (tls.key, tls.cert) if tls.mutual else (None, None)
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=own[0],
                                                   certificate_chain=own[1])
        return grpc.secure_channel(address, credentials, options=options)

    def server(self, bind, port, workers, interceptors=()):
        """A started-later gRPC server on bind:port; ConfigError when the port cannot be used."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=self.options,
                             interceptors=list(interceptors))
        host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
        try:
            if self.tls is None:
                bound = server.add_insecure_port(f"{host}:{port}")
            else:
                credentials = grpc.ssl_server_credentials([(self.tls.key, self.tls.cert)],
                                                          root_certificates=self.tls.ca if self.tls.mutual else None,
                                                          require_client_auth=self.tls.mutual)
                bound = server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError:
            bound = 0
        if not bound:
            raise ConfigError(f"cannot listen on {bind}:{port} (port in use or address not available)")
        return server


def state_bytes(state):
    """Bytes of a state dict's tensors."""
    return sum(tensor.numel() * tensor.element_size() for tensor in state.values())


def message_limit(conf, model_bytes):
    """remote.max_message_mb, else room for the model MODEL_COPIES times over gRPC's default."""
    configured = conf.remote.max_message_mb
    return int(configured * MIB) if configured is not None else BASE_MESSAGE + MODEL_COPIES * int(model_bytes)


def transport_for(conf, role, model_bytes=0, index=None):
    """The Transport of one role (server, client or trigger); a warning when it runs in plaintext by
    remote.insecure. Listening roles need remote.tls.cert/key; the trigger needs them only for mutual TLS."""
    check_plaintext(conf)
    limit = message_limit(conf, model_bytes)
    tls = conf.remote.tls
    if tls.ca is None:
        if plaintext_addresses(conf):
            logger().warning(f"remote {role}: plaintext gRPC on non-loopback addresses (remote.insecure=true): "
                             "anyone on the network can read and alter the traffic")
        return Transport(limit)
    needs_own = role != "trigger" or tls.mutual
    for key in ("cert", "key"):
        if needs_own and tls[key] is None:
            raise ConfigError(f"config key 'remote.tls.{key}' is required for the {role} role when remote.tls.ca "
                              "is set" + (" and remote.tls.mutual is true" if role == "trigger" else ""))
    own = {key: read_pem(tls[key], f"remote.tls.{key}", index) if tls[key] is not None else None
           for key in ("cert", "key")}
    return Transport(limit, TLS(read_pem(tls.ca, "remote.tls.ca"), own["cert"], own["key"], bool(tls.mutual)))
