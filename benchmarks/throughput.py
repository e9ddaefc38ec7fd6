"""Training throughput (images per second over rounds 3 and later) of the plugin's standalone, distributed and
sequential runs, against the limit of the machine's cores and against Flower's simulation engine.

Workload W1: FedAvg, Fashion-MNIST (the IDX files, read by the plugin's data layer), LeNet-5 without BatchNorm
(`model=lenet5`), 100 clients with Dirichlet(0.1) label skew (configs/fedavg_fmnist.yaml: balanced, 50/50
train/test per client), 10 clients per round, 5 local epochs, batch 32, SGD lr 0.01, no momentum; evaluation off
(no round evaluates; nothing is evaluated at the end either), no plots, TensorBoard or checkpoints.

Configurations, each run as its own child process (a fresh interpreter; nothing leaks between them):
* default: `python -m fedcmd_plugin run configs/fedavg_fmnist.yaml model=lenet5 ...` with the project's defaults
  (parallel.workers auto = the usable cores, num_threads 1 per worker);
* nproc2: the same with `--nproc 2` (two torch.distributed ranks, gloo);
* sequential: the same with `parallel.workers=1` (one process, one torch thread). Its throughput x the usable
  cores is "the limit": what perfect scaling of the one-core run over every core would give;
* flower: Flower's simulation engine (`flwr.simulation.run_simulation`, Ray backend, the Message API: a ClientApp
  and a ServerApp running a FedAvg strategy) with one actor per usable core (client resources: 1 CPU, one torch
  thread per actor) and one virtual SuperNode per client. The strategy (a FedAvg subclass) sends each round to the
  clients the plugin selects in that round (the plugin's seeded selection, recomputed) and tells each node which
  client it is; the ClientApp trains that client's samples from the plugin's data layer (`load_federated(conf)`:
  the same cached partition, so the same client ids hold the same sample indices) with the same batches (the
  plugin's per-(seed, round, client) shuffling), model, optimizer and epochs, and replies with its weights and
  sample count; FedAvg weights the average by those counts, as the plugin does. No evaluation (fraction_evaluate 0).
  Ray would start its actors at niceness +15; RAY_worker_niceness=0 keeps them at the plugin runs' priority.

Timing. Plugin runs: each round's seconds are the run folder's metrics.json `round_seconds` (selection, dispatch,
local training, upload, aggregation) and its images are metrics.json `images` (samples trained x local epochs,
summed over the round's clients). Flower: a round lasts from the strategy's configure_train call to the end of its
aggregate_train, and its images are the replies' trained-sample counts. Throughput of one run = images of rounds
3.. / seconds of rounds 3.. (rounds 1 and 2 pay for worker start-up, actor start-up and first data loads). Every
configuration trains the same clients each round, so the images per round agree (checked: `same_images`).
Decoded Fashion-MNIST and its partition are cached before any timing. Repetitions are interleaved (default,
nproc2, sequential, flower, default, ...); medians over repetitions are reported.

Targets: the default run at least 0.9 x the limit and at least 1.8 x Flower.

    python benchmarks/throughput.py                  # 3 repetitions of 8 rounds (run it on a quiet machine)
    python benchmarks/throughput.py --quick          # 1 repetition of 4 rounds (about 2 minutes on 2 idle cores)
    python benchmarks/throughput.py --configs default sequential --repeats 5
    python benchmarks/throughput.py --flower-path DIR  # flwr installed elsewhere (pip install --target DIR ...)

Flower is `pip install "flwr[simulation]"` (or the project's `bench` extra); without it the flower configuration
is reported as skipped and the others are measured. flwr 1.42 needs protobuf < 7, while grpcio-tools 1.85 (through
easyfl) needs protobuf >= 7.35: installing flwr into such an environment downgrades protobuf under grpcio-tools'
feet. Instead flwr and what it adds can be installed beside the environment (`pip install --no-deps --target DIR flwr==1.42.0 ray==2.55.1
protobuf==6.33.6 ...`) and pass `--flower-path DIR`: only the Flower child (and its Ray actors) sees DIR. Ray's
session files go to a temporary folder that is removed afterwards. Writes benchmarks/results/throughput.json
(--output).
"""
import argparse
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, W1, finish, machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "throughput.json"
CONFIG = ROOT / "configs" / "fedavg_fmnist.yaml"
CONFIGS = ("default", "nproc2", "sequential", "flower")
FIRST_TIMED_ROUND = 3  # 1-based; earlier rounds pay for start-up
TARGETS = {"default_vs_limit": 0.9, "default_vs_flower": 1.8}
PIP_FLOWER = 'pip install "flwr[simulation]"  (or: pip install -e ".[bench]")'
OVERRIDES_ENV = "THROUGHPUT_OVERRIDES"  # the Flower child hands its config overrides to its Ray actors

SETTING = dict(W1)


def overrides(args, data_root):
    """The dotted overrides every configuration shares (no parallel.workers / num_threads: the defaults')."""
    values = dict(SETTING, **{"server.rounds": args.rounds, "server.test_every": 10 * args.rounds + 1000,
                              "data.root": data_root})
    if args.clients:
        values["data.num_of_clients"] = args.clients
    if args.data_path:
        values["data.path"] = args.data_path
    return [f"{key}={'null' if value is None else value}" for key, value in values.items()]


def child_env(extra_paths=()):
    paths = [*extra_paths, str(ROOT), str(HERE), os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)), FLWR_TELEMETRY_ENABLED="0",
                RAY_USAGE_STATS_ENABLED="0")


def call(command, folder, env, log, timeout):
    """Run `command` in its own process group (ranks, workers, Ray's processes); the exit code, or "timeout" after
    `timeout` seconds, when the whole group is ended."""
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        end_group(process)


def end_group(process):
    """SIGTERM to what is left of the process's group (a finished run normally leaves nothing), SIGKILL 10 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 10
        try:
            os.killpg(process.pid, sig)
            while time.monotonic() < deadline:
                if process.poll() is None:
                    time.sleep(0.2)
                    continue
                os.killpg(process.pid, 0)  # raises once no process of the group is left
                time.sleep(0.2)
        except (ProcessLookupError, PermissionError):
            return


def usable_cores():
    from fedcmd_plugin.session import usable_cores as cores

    return cores()


def plugin_selection(conf, rounds):
    """{0-based round: [cid]}: the plugin's seeded selection (FederatedServer.selection), recomputed."""
    import numpy as np

    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.federation.seeding import derived_seed

    order = list(load_federated(conf).train.users)
    chosen = {}
    for r in range(rounds):
        rng = np.random.default_rng(derived_seed(conf.seed, r, "selection"))
        picks = rng.choice(len(order), min(conf.server.clients_per_round, len(order)), replace=False)
        chosen[r] = [order[i] for i in sorted(picks)]
    return chosen


# --------------------------------------------------------------------------------------------- plugin runs


def run_plugin(name, args, common, workdir):
    """One plugin run in a child process; returns its per-round seconds and images from metrics.json."""
    folder = workdir / f"{name}-{time.time_ns()}"
    folder.mkdir(parents=True)
    extra = {"default": [], "nproc2": ["--nproc", "2"], "sequential": ["parallel.workers=1"]}[name]
    command = [sys.executable, "-m", "fedcmd_plugin", "run", str(CONFIG), *common, f"output.root={folder / 'runs'}",
               *extra]
    started = time.time()
    with open(folder / "log.txt", "w") as log:
        code = call(command, folder, child_env(), log, args.timeout)
    result = {"config": name, "command": " ".join(["python", "-m", "fedcmd_plugin", "run",
                                                    str(CONFIG.relative_to(ROOT)), *extra, "..."]),
              "wall_s": time.time() - started, "returncode": code}
    metrics = sorted((folder / "runs").glob("*/metrics.json"))
    if code != 0 or not metrics:
        result["error"] = (folder / "log.txt").read_text(errors="replace")[-3000:]
    else:
        rows = [r for r in json.loads(metrics[-1].read_text()) if "round_seconds" in r]
        result["rounds"] = [r["round"] for r in rows]
        result["round_seconds"] = [r["round_seconds"] for r in rows]
        result["images"] = [int(r["images"]) for r in rows]
    shutil.rmtree(folder, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------- Flower


def flower_available(args):
    """(flwr version, ray version) in the Flower child's environment, or None when flwr[simulation] is missing."""
    probe = subprocess.run([sys.executable, "-c", "import flwr, ray; print(flwr.__version__, ray.__version__)"],
                           check=False, env=child_env(args.flower_path), capture_output=True, text=True,
                           timeout=300,
                           stdin=subprocess.DEVNULL)
    return probe.stdout.split() if probe.returncode == 0 else None


def run_flower(args, common, workdir, cores):
    """The Flower configuration in a child process (this script with --flower-child)."""
    folder = workdir / f"flower-{time.time_ns()}"
    folder.mkdir(parents=True)
    out = folder / "rounds.json"
    ray_dir = tempfile.mkdtemp(prefix="ray-")  # Ray's session files; short: its socket paths must fit 107 bytes
    command = [sys.executable, str(Path(__file__).resolve()), "--flower-child", "--child-out", str(out),
               "--actors", str(cores), "--rounds", str(args.rounds), "--child-overrides", json.dumps(common),
               "--ray-dir", ray_dir]
    started = time.time()
    try:
        with open(folder / "log.txt", "w") as log:
            # Ray starts its workers at niceness +15; at the plugin runs' priority they compete on equal terms
            code = call(command, folder, dict(child_env(args.flower_path), RAY_worker_niceness="0"), log,
                        args.timeout)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    result = {"config": "flower", "command": f"run_simulation(..., num_supernodes=<clients>, {cores} actors of 1 CPU)",
              "wall_s": time.time() - started, "returncode": code}
    if code != 0 or not out.is_file():
        result["error"] = (folder / "log.txt").read_text(errors="replace")[-3000:]
    else:
        result.update(json.loads(out.read_text()))
    shutil.rmtree(folder, ignore_errors=True)
    return result


_ACTOR = {}  # per Ray actor process: the config, data, workspace model (this module is imported there by name)


def _actor_state():
    if not _ACTOR:
        import torch

        from fedcmd_plugin.config import load_config
        from fedcmd_plugin.data import load_federated
        from fedcmd_plugin.models import build_model

        torch.set_num_threads(1)  # as the plugin's num_threads default; Ray gives the actor 1 CPU
        conf = load_config(CONFIG, json.loads(os.environ[OVERRIDES_ENV]))
        data = load_federated(conf)
        info = data.info
        _ACTOR.update(conf=conf, data=data.train,
                      model=build_model(conf.model, info.in_channels, info.num_classes, info.image_size))
    return _ACTOR


def flower_train(msg, context):
    """The ClientApp's train function: the named client's local epochs, as the plugin's FederatedClient trains."""
    import torch
    import torch.nn.functional as F
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from fedcmd_plugin.federation.messages import RoundSettings
    from fedcmd_plugin.federation.seeding import client_generator

    state = _actor_state()
    conf, data, model = state["conf"], state["data"], state["model"]
    config = msg.content["config"]
    cid, round_index = str(config["cid"]), int(config["server-round"]) - 1
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    opt = conf.client.optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    settings = RoundSettings(round_index, int(conf.seed), int(conf.client.local_epoch))
    generator = client_generator(settings, cid, "train")
    seen, started, cpu = 0, time.perf_counter(), time.thread_time()
    for _ in range(conf.client.local_epoch):
        for x, y in data.batches(cid, conf.client.batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            seen += len(y)
    metrics = {"num-examples": data.size(cid), "images": seen, "train-seconds": time.perf_counter() - started,
               "train-cpu-seconds": time.thread_time() - cpu, "torch-threads": torch.get_num_threads()}
    content = RecordDict({"arrays": ArrayRecord.from_torch_state_dict(model.state_dict()),
                          "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def flower_child(args):
    """Runs in a fresh interpreter: Flower's simulation of the workload; writes per-round seconds and images."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedcmd_plugin.config import load_config
    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.models import build_model

    # This file by its module name (not __main__), so the ClientApp pickles `throughput.flower_train` by reference:
    # each Ray actor imports the module once and keeps its data and model in the module's _ACTOR.
    module = importlib.import_module("throughput")

    common = json.loads(args.child_overrides)
    os.environ[OVERRIDES_ENV] = json.dumps(common)
    torch.set_num_threads(1)
    conf = load_config(CONFIG, common)
    data = load_federated(conf)
    clients = list(data.train.users)
    selection = plugin_selection(conf, args.rounds)

    class PluginSelectionFedAvg(FedAvg):
        """FedAvg that trains the plugin's selected clients each round (one SuperNode per client) and times rounds."""

        def __init__(self):
            super().__init__(fraction_train=conf.server.clients_per_round / len(clients), fraction_evaluate=0.0)
            self.started, self.ended, self.images, self.trained, self.clients = {}, {}, {}, {}, {}

        def configure_train(self, server_round, arrays, config, grid):
            self.started[server_round] = time.time()
            nodes = sorted(grid.get_node_ids())
            while len(nodes) < len(clients):  # every node is up before the first round in practice
                time.sleep(0.1)
                nodes = sorted(grid.get_node_ids())
            messages = []
            for cid in selection[server_round - 1]:
                node_config = ConfigRecord({**dict(config), "server-round": server_round, "cid": cid})
                content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: node_config})
                messages.append(Message(content=content, message_type=MessageType.TRAIN,
                                        dst_node_id=nodes[clients.index(cid)]))
            self.trained[server_round] = list(selection[server_round - 1])
            return messages

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            metrics = [m.content["metrics"] for m in replies if not m.has_error()]
            self.images[server_round] = sum(int(m["images"]) for m in metrics)
            self.clients[server_round] = {key: [round(float(m[key]), 4) for m in metrics]
                                          for key in ("train-seconds", "train-cpu-seconds", "torch-threads")}
            aggregated = super().aggregate_train(server_round, replies)
            self.ended[server_round] = time.time()
            return aggregated

    info = data.info
    torch.manual_seed(conf.seed)
    model = build_model(conf.model, info.in_channels, info.num_classes, info.image_size)
    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy = PluginSelectionFedAvg()
        strategy.start(grid=grid, initial_arrays=ArrayRecord.from_torch_state_dict(model.state_dict()),
                       num_rounds=args.rounds, train_config=ConfigRecord({}))
        rounds = sorted(strategy.ended)
        document = {"rounds": rounds, "round_seconds": [strategy.ended[r] - strategy.started[r] for r in rounds],
                    "images": [strategy.images[r] for r in rounds], "actors": args.actors,
                    "client_train_seconds": [strategy.clients[r]["train-seconds"] for r in rounds],
                    "client_train_cpu_seconds": [strategy.clients[r]["train-cpu-seconds"] for r in rounds],
                    "actor_torch_threads": sorted({int(t) for r in rounds
                                                    for t in strategy.clients[r]["torch-threads"]}),
                    "selection_matches_plugin": all(strategy.trained[r] == selection[r - 1] for r in rounds)}
        Path(args.child_out).write_text(json.dumps(document))

    client = ClientApp()
    client.train()(module.flower_train)
    run_simulation(server_app=server, client_app=client, num_supernodes=len(clients),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": args.actors, "num_gpus": 0, "_temp_dir": args.ray_dir,
                                                 "logging_level": "ERROR", "log_to_driver": True}})
    if not Path(args.child_out).is_file():
        print("the ServerApp wrote no rounds (see the log above)", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------- report


def throughput_of(run):
    """Images per second over rounds FIRST_TIMED_ROUND..: their images / their seconds."""
    timed = [(s, n) for r, s, n in zip(run["rounds"], run["round_seconds"], run["images"]) if r >= FIRST_TIMED_ROUND]
    if not timed:
        return None
    return sum(n for _, n in timed) / sum(s for s, _ in timed)


def summarise(runs, configs, cores, skipped):
    rows = {}
    for name in configs:
        group = [r for r in runs if r["config"] == name]
        values = [r["images_per_second"] for r in group if r.get("images_per_second")]
        rows[name] = {"repeats": len(group), "failed": sum(1 for r in group if "error" in r),
                      "images_per_second": statistics.median(values) if values else None,
                      "per_repeat": values, "skipped": skipped.get(name)}
    sequential = rows.get("sequential", {}).get("images_per_second")
    flower = rows.get("flower", {}).get("images_per_second")
    limit = sequential * cores if sequential else None
    for row in rows.values():
        value = row["images_per_second"]
        row["vs_limit"] = value / limit if value and limit else None
        row["vs_flower"] = value / flower if value and flower else None
    default = rows.get("default", {})
    targets = {
        "default_vs_limit": {"target": TARGETS["default_vs_limit"], "value": default.get("vs_limit"),
                             "pass": None if default.get("vs_limit") is None
                             else default["vs_limit"] >= TARGETS["default_vs_limit"]},
        "default_vs_flower": {"target": TARGETS["default_vs_flower"], "value": default.get("vs_flower"),
                              "pass": None if default.get("vs_flower") is None
                              else default["vs_flower"] >= TARGETS["default_vs_flower"]},
    }
    return rows, limit, targets


LABELS = {"default": "default (workers auto = {cores})", "nproc2": "--nproc 2 (gloo)",
          "sequential": "sequential (workers=1)", "flower": "Flower {flower} ({cores} actors)"}


def format_table(rows, limit, targets, cores, flower_version):
    def cell(value, spec):
        return format(value, spec) if value is not None else format("-", ">" + spec.split(".")[0])

    lines = ["", f"{'run':<34} {'images/s':>10} {'vs the limit':>13} {'vs Flower':>10}", "-" * 70]
    for name, row in rows.items():
        label = LABELS[name].format(cores=cores, flower=flower_version or "").replace("  ", " ")
        if row["skipped"]:
            lines.append(f"{label:<34} {'skipped':>10}   ({row['skipped']})")
            continue
        failed = f"  ({row['failed']} of {row['repeats']} failed)" if row["failed"] else ""
        lines.append(f"{label:<34} {cell(row['images_per_second'], '10.0f')} {cell(row['vs_limit'], '13.2f')} "
                     f"{cell(row['vs_flower'], '10.2f')}{failed}")
    lines.append(f"{'the limit (sequential x ' + str(cores) + ')':<34} {cell(limit, '10.0f')}")
    for key, check in targets.items():
        verdict = "-" if check["pass"] is None else ("pass" if check["pass"] else "FAIL")
        lines.append(f"target {key} >= {check['target']}: {cell(check['value'], '.2f')} {verdict}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition of 4 rounds (about 2 minutes)")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions (default 3, quick 1); medians reported")
    parser.add_argument("--rounds", type=int, help=f"rounds per run (default 8, quick 4; at least {FIRST_TIMED_ROUND})")
    parser.add_argument("--clients", type=int, help="clients (default: W1's 100)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--data-path", help="folder with Fashion-MNIST's IDX files (default: the Debian package's)")
    parser.add_argument("--flower-path", action="append", default=[],
                        help="a folder put first on the Flower child's PYTHONPATH (flwr[simulation] installed with "
                        "pip install --target there, e.g. beside packages whose protobuf pin conflicts); repeatable")
    parser.add_argument("--timeout", type=float, help="seconds per run (default 300 + 60 per round)")
    parser.add_argument("--output", default=str(RESULTS), help="result JSON path")
    parser.add_argument("--flower-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-overrides", help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ray-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (4 if args.quick else 8)
    if args.flower_child:
        return flower_child(args)
    if args.rounds < FIRST_TIMED_ROUND:
        parser.error(f"--rounds: at least {FIRST_TIMED_ROUND} (rounds {FIRST_TIMED_ROUND}.. are timed)")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.timeout = args.timeout or 300 + 60 * args.rounds

    from fedcmd_plugin.config import load_config
    from fedcmd_plugin.data import load_federated

    started = time.time()
    info = dict(machine(), load_average_at_start=[round(x, 2) for x in os.getloadavg()])
    cores = usable_cores()
    scratch = Path(tempfile.mkdtemp(prefix="throughput-"))
    common = overrides(args, scratch / "data")
    skipped, flower_version, runs = {}, None, []
    try:
        conf = load_config(CONFIG, common)  # checks the overrides; decodes and partitions the data once, untimed
        load_federated(conf)
        if "flower" in args.configs:
            versions = flower_available(args)
            if versions:
                flower_version, info["ray"] = versions
                info["flwr"] = flower_version
            else:
                skipped["flower"] = f"flwr[simulation] is not installed: {PIP_FLOWER}"
                print(f"flower: skipped, flwr[simulation] is not installed ({PIP_FLOWER})", flush=True)
        for repeat in range(args.repeats):
            for name in args.configs:
                if name in skipped:
                    continue
                run = run_flower(args, common, scratch, cores) if name == "flower" else \
                    run_plugin(name, args, common, scratch)
                run["repeat"] = repeat
                if "error" not in run:
                    run["images_per_second"] = throughput_of(run)
                runs.append(run)
                status = "failed" if "error" in run else \
                    f"{run['images_per_second']:.0f} images/s, rounds {[round(s, 2) for s in run['round_seconds']]} s"
                print(f"[{repeat + 1}/{args.repeats}] {name}: {status} ({run['wall_s']:.0f} s wall)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows, limit, targets = summarise(runs, args.configs, cores, skipped)
    ok_runs = [r for r in runs if "error" not in r]
    same_images = len({tuple(r["images"]) for r in ok_runs}) <= 1 if ok_runs else None
    print(format_table(rows, limit, targets, cores, flower_version))
    print(f"images per round equal in every run: {same_images}")
    document = {
        "workload": "W1: FedAvg, Fashion-MNIST, LeNet-5 (no BatchNorm), 100 clients Dir(0.1), 10 per round, "
                    "5 local epochs, batch 32, SGD lr 0.01, evaluation off",
        "setting": {"config": str(CONFIG.relative_to(ROOT)),
                    **{k: v for k, v in SETTING.items() if not k.startswith(("output.", "evaluation."))},
                    "data.num_of_clients": args.clients or SETTING["data.num_of_clients"], "rounds": args.rounds,
                    "timed_rounds": f"{FIRST_TIMED_ROUND}..{args.rounds}", "repeats": args.repeats,
                    "quick": args.quick, "usable_cores": cores},
        "throughput": "images of the timed rounds / their seconds (metrics.json round_seconds and images; Flower: "
                      "configure_train to the end of aggregate_train), median over repeats",
        "limit_images_per_second": limit,
        "table": rows,
        "targets": targets,
        "same_images": same_images,
        "runs": runs,
        "machine": dict(info, load_average_at_end=[round(x, 2) for x in os.getloadavg()]),
        "command": " ".join(["python", "benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "benchmark_seconds": time.time() - started,
    }
    return finish(args.output, document, runs, lambda run: f"{run['config']} (repeat {run['repeat'] + 1})")


if __name__ == "__main__":
    sys.exit(main())
