"""The same FedAvg run in the three modes: standalone, torch.distributed (2 processes, gloo) and remote
(gRPC: 1 server + 2 client services on loopback, each hosting half of the clients).

Setting: Fashion-MNIST, LeNet-5, 100 clients with Dirichlet(0.1) label skew, 10 clients per round, 5 local
epochs, batch 32 (configs/fedavg_fmnist.yaml). Seconds per round = the median of the run's per-round training
times (metrics.json `round_seconds`, evaluation excluded); every run evaluates all clients once, at the end.
All modes share one cached partition and seed, so their final accuracies should agree.

    python benchmarks/modes.py --quick      # 3 rounds per mode (a few minutes)
    python benchmarks/modes.py              # 20 rounds per mode

Each process trains with one torch thread by default (--threads): with more threads than free cores (other
processes, other modes' processes) small models slow down by an order of magnitude, which would measure the
machine's load rather than the mode. Writes benchmarks/results/modes.json and prints a table.
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, write_json

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")  # easyfl 0.1.2's protobuf modules

CONFIG = ROOT / "configs" / "fedavg_fmnist.yaml"
MODES = ("standalone", "distributed", "remote")
START_TIMEOUT = 300  # seconds for a remote service to listen


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds per mode")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 20, quick 3)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--timeout", type=float, default=None, help="seconds per mode (default: 120 + 60/round)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "modes.json"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (num_threads); 1 (default) keeps the modes comparable and "
                        "immune to oversubscribed cores; 0 = the plugin's default (cores / processes on the machine)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed at the end)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every mode")
    return parser.parse_args()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args):
    return [sys.executable, "-m", "fedcmd_plugin", *map(str, args)]


def env(**extra):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    environment.update(extra)
    return environment


class Group:
    """Processes in their own process groups, all killed on exit (also on errors and Ctrl-C)."""

    def __init__(self, folder, **environment):
        self.folder = folder
        self.environment = environment
        self.procs = []

    def start(self, name, command):
        with open(self.folder / f"{name}.log", "w") as log:
            proc = subprocess.Popen(command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env(**self.environment))
        proc.name = name
        self.procs.append(proc)
        return proc

    def log_tail(self, name, lines=20):
        path = self.folder / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait(self, proc, timeout):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{proc.name} did not finish within {timeout:.0f} s") from None
        if code:
            raise RuntimeError(f"{proc.name} exited with {code}:\n{self.log_tail(proc.name)}")

    def wait_listening(self, proc, port, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.returncode}:\n{self.log_tail(proc.name)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{proc.name} did not listen on port {port} within {timeout} s")

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def run_local(group, mode, overrides, timeout):
    command = cli("run", CONFIG, *overrides)
    if mode == "distributed":
        command += ["--nproc", "2"]
    group.wait(group.start(mode, command), timeout)


def run_remote(group, overrides, timeout, num_clients):
    """1 server + 2 client services (clients 0..n/2-1 and n/2..n-1), started with EasyFL's RunRequest."""
    from easyfl.pb import common_pb2, server_service_pb2, server_service_pb2_grpc

    from fedcmd_plugin.data.federated import client_ids
    from fedcmd_plugin.remote.auth import bearer
    from fedcmd_plugin.remote.transport import BASE_MESSAGE, Transport
    from fedcmd_plugin.remote.trigger import wait_for_run
    from fedcmd_plugin.remote.wire import wait_ready

    server_port, ports = free_port(), [free_port(), free_port()]
    address = f"127.0.0.1:{server_port}"
    half = num_clients // 2
    hosts = [f"0-{half - 1}", f"{half}-{num_clients - 1}"]
    addresses = [f"127.0.0.1:{ports[0 if i < half else 1]}" for i in range(num_clients)]
    common = [*overrides, "remote.bind=127.0.0.1", f"remote.server_address={address}",
              f"server.round_timeout={timeout:.0f}", f"remote.client_addresses=[{','.join(addresses)}]"]
    server = group.start("remote-server", cli("remote", "server", CONFIG, *common, f"remote.server_port={server_port}"))
    clients = [group.start(f"remote-client{i}", cli("remote", "client", CONFIG, "--index", hosts[i], *common,
                                                    f"remote.client_port={ports[i]}")) for i in range(2)]
    group.wait_listening(server, server_port)
    for proc, port in zip(clients, ports):
        group.wait_listening(proc, port)
    operator = bearer(group.environment["FEDCMD_OPERATOR_TOKEN"])
    chan = Transport(BASE_MESSAGE).channel(address)
    try:
        wait_ready(chan, address, 60)
        request = server_service_pb2.RunRequest(clients=[
            server_service_pb2.Client(client_id=cid, address=addresses[i], index=i)
            for i, cid in enumerate(client_ids(num_clients))])
        answer = server_service_pb2_grpc.ServerServiceStub(chan).Run(request, timeout=120, metadata=operator)
        if answer.status.code != common_pb2.SC_OK:
            raise RuntimeError(f"the server refused the run: {answer.status.message}")
        wait_for_run(chan, address, operator, answer.status.message.split()[1], timeout=timeout)
    finally:
        chan.close()


def measure(mode, work, overrides, timeout, num_clients):
    folder = work / mode
    folder.mkdir(parents=True)
    overrides = [*overrides, f"output.root={folder / 'runs'}"]
    # The two remote client services share this machine's cores like the two distributed ranks do (the
    # plugin gives each process cores / LOCAL_WORLD_SIZE torch threads).
    # Remote roles also get fresh tokens (remote.operator_token / server_token read these variables).
    group = Group(folder, **({"LOCAL_WORLD_SIZE": "2", "FEDCMD_OPERATOR_TOKEN": secrets.token_urlsafe(24),
                              "FEDCMD_SERVER_TOKEN": secrets.token_urlsafe(24)} if mode == "remote" else {}))
    started = time.time()
    try:
        if mode == "remote":
            run_remote(group, overrides, timeout, num_clients)
        else:
            run_local(group, mode, overrides, timeout)
    finally:
        group.stop()
    wall = time.time() - started
    (run_folder,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
    rows = json.loads((run_folder / "metrics.json").read_text())
    seconds = [r["round_seconds"] for r in rows if "round_seconds" in r]
    final = json.loads((run_folder / "summary.json").read_text())["final"]
    return {"seconds_per_round": round(statistics.median(seconds), 3),
            "round_seconds": [round(s, 3) for s in seconds], "wall_seconds": round(wall, 1),
            "accuracy": round(final.get("accuracy", float("nan")), 2), "folder": str(run_folder)}


def table(results):
    head = f"{'mode':<13}{'s/round (median)':>18}{'rounds':>8}{'wall s':>9}{'accuracy':>10}"
    lines = [head, "-" * len(head)]
    for mode, r in results.items():
        lines.append(f"{mode:<13}{r['seconds_per_round']:>18.3f}{len(r['round_seconds']):>8}{r['wall_seconds']:>9.1f}"
                     f"{r['accuracy']:>10.2f}")
    return "\n".join(lines)


def main():
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    from fedcmd_plugin.config import load_config

    load_before = os.getloadavg()  # other work on the machine skews the timings
    rounds = args.rounds or (3 if args.quick else 20)
    timeout = args.timeout or 120 + 60 * rounds
    work = Path(tempfile.mkdtemp(prefix="fedcmd-modes-"))
    overrides = [f"server.rounds={rounds}", f"server.test_every={rounds}", f"data.root={work / 'data'}",
                 "output.progress=false", "output.tensorboard=false", "output.save_fig=false",
                 "output.save_model=false", f"num_threads={args.threads}", *args.overrides]
    conf = load_config(CONFIG, overrides)  # checks the overrides before anything starts
    setting = {"config": str(CONFIG.relative_to(ROOT)), "dataset": conf.data.dataset, "model": conf.model,
               "clients": conf.data.num_of_clients, "split": f"{conf.data.split_type}({conf.data.alpha})",
               "clients_per_round": conf.server.clients_per_round, "local_epoch": conf.client.local_epoch,
               "batch_size": conf.client.batch_size, "rounds": rounds, "seed": conf.seed,
               "torch_threads_per_process": conf.num_threads or "cores / processes"}
    results = {}
    try:
        # The partition is computed once, outside the timings (every mode reads it from data.root).
        from fedcmd_plugin.data import load_federated

        load_federated(conf)
        for mode in args.modes:
            print(f"{mode} ...", flush=True)
            results[mode] = measure(mode, work, overrides, timeout, conf.data.num_of_clients)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            for result in results.values():
                result.pop("folder", None)  # removed with the working folder
    report = {"setting": setting, "quick": args.quick, "modes": results,
              "notes": "distributed: 2 processes (gloo) on this machine; remote: 1 server + 2 client services "
                       "(gRPC on 127.0.0.1), each hosting half of the clients; seconds per round = median of the "
                       "per-round training times (evaluation excluded)",
              "load_average": {"before": [round(x, 2) for x in load_before],
                               "after": [round(x, 2) for x in os.getloadavg()]},
              "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    output = Path(args.output)
    write_json(output, report)
    print(table(results))
    print(f"written: {output}" + (f"; run folders below {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
