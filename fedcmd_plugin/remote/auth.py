"""Who may call what: bearer tokens for the operator (Run, Stop, status) and for the server (a client service's
Operate), and per-dispatch tickets that bind every upload to the (run, round, kind, client) it answers.

Tokens travel as gRPC metadata `authorization: Bearer <token>`; they are read from an environment variable
(`env:NAME`) or a file (`file:PATH`) named in the config and never logged. A ticket is
HMAC-SHA256(run key, run|round|kind|client) with a random key per run that never leaves the server; it reaches
the one client asked, inside its Operate request, and that client signs its upload with it
(HMAC-SHA256(ticket, digest of the upload)). A forged upload, one replayed into another round, or one sent
for another client does not verify.
"""
import hashlib
import hmac
import os
import secrets
import struct
from pathlib import Path

import grpc

from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.session import logger

AUTHORIZATION = "authorization"
UPLOAD_MAC = "fedcmd-upload-mac"  # metadata key of an upload's signature
MIN_TOKEN_CHARS = 16


def read_token(source, key):
    """The token named by config value `source` ("env:NAME" or "file:PATH"); ConfigError naming `key`."""
    kind, _, where = str(source or "").partition(":")
    if kind == "env" and where:
        token = os.environ.get(where, "").strip()
        missing = f"environment variable {where} is not set"
    elif kind == "file" and where:
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"config key '{key}': token file {path} does not exist")
        token = path.read_text(encoding="utf-8", errors="replace").strip()
        missing = f"token file {path} is empty"
    else:
        raise ConfigError(f"config key '{key}' must be env:NAME or file:PATH; got {source!r}")
    if not token:
        raise ConfigError(f"config key '{key}': {missing} (`fedcmd-plugin remote certs DIR` writes tokens)")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"config key '{key}': the token must be at least {MIN_TOKEN_CHARS} characters without "
                          "spaces")
    return token


def bearer(token):
    """Call metadata carrying `token`."""
    return ((AUTHORIZATION, f"Bearer {token}"),)


def presented(metadata, key=AUTHORIZATION):
    """The value of metadata `key` of a call, or ""."""
    return next((str(value) for name, value in metadata or () if name == key), "")


def token_matches(metadata, token):
    given = presented(metadata)
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


class RequireToken(grpc.ServerInterceptor):
    """Refuses calls of `methods` (full gRPC method names) without `authorization: Bearer <token>`
    (UNAUTHENTICATED), before their request is decoded; other methods pass."""

    def __init__(self, token, methods, who):
        self.token = token
        self.methods = frozenset(methods)
        self.who = who

    def intercept_service(self, continuation, details):
        if details.method in self.methods and not token_matches(details.invocation_metadata, self.token):
            return self.refusal(details.method)
        return continuation(details)

    def refusal(self, method):
        def refuse(request, context):
            logger().warning(f"refused a call to {method} from {context.peer()}: no valid {self.who} token")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"this call needs the {self.who} token "
                                                           "(metadata authorization: Bearer <token>)")

        return grpc.unary_unary_rpc_method_handler(refuse)


# ----- tickets ------------------------------------------------------------------------------------------------
def upload_digest(request):
    """SHA-256 over every field of an UploadRequest the server uses, each length-prefixed."""
    content = request.content
    parts = [request.task_id.encode(), str(int(request.round_id)).encode(), request.client_id.encode(),
             str(int(content.type)).encode(), bytes(content.data), bytes(content.extra)]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(struct.pack("<Q", len(part)))
        digest.update(part)
    return digest.digest()


def sign_upload(ticket, request):
    """The signature a client attaches (metadata `fedcmd-upload-mac`) to the upload answering `ticket`."""
    return hmac.new(bytes.fromhex(ticket), upload_digest(request), hashlib.sha256).hexdigest()


class Tickets:
    """The upload credentials of one run."""

    def __init__(self, run_id):
        self.run_id = run_id
        self.key = secrets.token_bytes(32)

    def issue(self, round_index, kind, cid):
        """The ticket (hex) of client `cid` for the `kind` (train|test) request of `round_index`."""
        message = f"{self.run_id}|{int(round_index)}|{kind}|{cid}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def verify(self, request, kind, signature):
        """Whether `signature` is the one the client asked for this run, round, kind and client id made."""
        if request.task_id != self.run_id or not signature:
            return False
        expected = sign_upload(self.issue(request.round_id, kind, request.client_id), request)
        return hmac.compare_digest(expected.encode(), str(signature).encode())
