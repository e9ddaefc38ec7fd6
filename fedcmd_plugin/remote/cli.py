"""`fedcmd-plugin remote server|client|trigger CONFIG.yaml [key.sub=value ...]` and `remote certs DIR`.

All roles read the same config (the same YAML and data overrides); `remote.*` keys say where each listens,
whom it talks to and with which certificates and tokens. Exit status: 0 on success, 2 with a one-line
`error: ...` otherwise.
"""
import os
import re
import socket

from fedcmd_plugin.errors import ConfigError

EPILOG = """examples (one machine, configs/remote_digits.yaml names the loopback addresses; every role needs
FEDCMD_OPERATOR_TOKEN and FEDCMD_SERVER_TOKEN, e.g. from the files `remote certs` writes):
  fedcmd-plugin remote certs   secrets --clients 2
  export FEDCMD_OPERATOR_TOKEN=$(cat secrets/operator.token) FEDCMD_SERVER_TOKEN=$(cat secrets/server.token)
  fedcmd-plugin remote server  configs/remote_digits.yaml
  fedcmd-plugin remote client  configs/remote_digits.yaml --index 0 remote.client_port=23000
  fedcmd-plugin remote client  configs/remote_digits.yaml --index 1 remote.client_port=23001
  fedcmd-plugin remote trigger configs/remote_digits.yaml
  fedcmd-plugin remote server  configs/remote_digits.yaml --resume runs/fedavg-digits-20260101-120000
                                                            (continue a killed run; its clients keep their state)
  fedcmd-plugin remote client  configs/fedavg_fmnist.yaml --index 0-49    (one service, 50 clients)
"""
ITEMS_HELP = "one YAML config, then key.sub=value overrides"


def one_config(items):
    from fedcmd_plugin.config import config_arguments, load_config

    configs, overrides = config_arguments(items)
    if len(configs) != 1:
        raise ConfigError(f"a remote role takes exactly one config file, got {len(configs)}: {', '.join(configs)}")
    return load_config(configs[0], overrides)


def parse_indexes(text, source):
    """"3" -> [3], "0-49" -> [0, ..., 49], "0,2,5" -> [0, 2, 5]."""
    indexes = []
    for part in str(text).replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ConfigError(f"{source} must be a client index (3), a range (0-49) or a list (0,2,5); got {text!r}")
        indexes.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    if not indexes:
        raise ConfigError(f"{source} names no client index: {text!r}")
    return sorted(set(indexes))


def client_indexes(given):
    """--index, else FEDCMD_CLIENT_INDEX, else the trailing number of the host name (StatefulSet pod
    fedcmd-client-1 -> 1)."""
    if given is not None:
        return parse_indexes(given, "--index")
    if os.environ.get("FEDCMD_CLIENT_INDEX", "").strip():
        return parse_indexes(os.environ["FEDCMD_CLIENT_INDEX"], "FEDCMD_CLIENT_INDEX")
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    match = re.search(r"(\d+)$", host.split(".")[0])
    if match is None:
        raise ConfigError(f"no client index: give --index I, set FEDCMD_CLIENT_INDEX, or run on a host whose "
                          f"name ends in the index (e.g. fedcmd-client-1); host name is {host!r}")
    return [int(match.group(1))]


def command_server(args):
    import json

    from fedcmd_plugin.remote.server import serve

    items = [*args.items, f"resume={json.dumps(args.resume)}"] if args.resume else args.items
    return serve(one_config(items))


def command_client(args):
    from fedcmd_plugin.remote.client import serve

    items, given = pop_index(args.items, args.index)
    return serve(one_config(items), client_indexes(given))


def pop_index(items, given):
    """(items without `--index I` / `--index=I`, the value given there or `given`)."""
    rest, items = [], list(items)
    while items:
        item = items.pop(0)
        if item == "--index" or item.startswith("--index="):
            given = item.partition("=")[2] if "=" in item else (items.pop(0) if items else "")
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item!r} for `remote client` (options: --index I)")
        else:
            rest.append(item)
    return rest, given


def command_trigger(args):
    from fedcmd_plugin.remote.trigger import trigger

    trigger(one_config(args.items), timeout=args.timeout or None, connect_timeout=args.connect_timeout)
    return 0


def command_certs(args):
    from fedcmd_plugin.remote.certs import make_certificates

    written = make_certificates(args.folder, args.clients, args.server_name, args.client_name, args.days)
    print(f"wrote {len(written)} files to {args.folder}: {', '.join(path.name for path in written)}")
    return 0


def add_commands(subparsers):
    """Add `remote server|client|trigger` to the CLI's subcommands."""
    import argparse

    remote = subparsers.add_parser("remote", help="remote training over gRPC: server, client and trigger roles",
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    roles = remote.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server", help="serve runs: EasyFL's ServerService on remote.bind:remote.server_port")
    server.add_argument("items", nargs="+", metavar="CONFIG.yaml | key.sub=value", help=ITEMS_HELP)
    server.add_argument("--resume", metavar="RUN_FOLDER", default=None,
                        help="continue the stopped or killed run of RUN_FOLDER from its checkpoint at once, with its "
                        "clients (sets config key resume)")
    server.set_defaults(handler=command_server)
    client = roles.add_parser("client", help="host a client (or several) of the partition: EasyFL's ClientService "
                              "on remote.client_port, uploading to remote.server_address")
    # REMAINDER: `--index I` may also come after the config or between overrides (as in docker-compose.yml).
    client.add_argument("items", nargs=argparse.REMAINDER, metavar="CONFIG.yaml | key.sub=value", help=ITEMS_HELP)
    client.add_argument("--index", default=None,
                        help="the partition's client to host (0 = c000), or several (0-49, 0,2,5); default: "
                        "FEDCMD_CLIENT_INDEX, else the trailing number of the host name")
    client.set_defaults(handler=command_client)
    trigger = roles.add_parser("trigger", help="start a run with the clients of remote.client_addresses and wait "
                               "until it is complete")
    trigger.add_argument("items", nargs="+", metavar="CONFIG.yaml | key.sub=value", help=ITEMS_HELP)
    trigger.add_argument("--timeout", type=float, default=0.0,
                         help="give up after this many seconds (the run goes on on the server); default 0 = wait")
    trigger.add_argument("--connect-timeout", type=float, default=120.0,
                         help="seconds to wait for the server to accept connections (default 120)")
    trigger.set_defaults(handler=command_trigger)
    certs = roles.add_parser("certs", help="write a development CA, certificates for the server, N clients and the "
                             "operator, and random tokens, to a new folder")
    certs.add_argument("folder", help="where the files go (nothing is overwritten)")
    certs.add_argument("--clients", type=int, required=True, help="client certificates client-0 ... client-<N-1>")
    certs.add_argument("--server-name", action="append", default=[], metavar="NAME",
                       help="another DNS name or IP of the server (repeatable; localhost and 127.0.0.1 are always in)")
    certs.add_argument("--client-name", action="append", default=[], metavar="TEMPLATE",
                       help="another name of client i, {i} = its index, e.g. fedcmd-client-{i}.fedcmd-client "
                       "(repeatable)")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    certs.set_defaults(handler=command_certs)
