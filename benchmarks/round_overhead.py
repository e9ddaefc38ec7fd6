"""How much a FedAvg round through EasyFL + fedcmd_plugin costs over the bare compute, and how long start-up takes.

Setting (FedCMD's Table VI protocol): Fashion-MNIST, LeNet-5, 100 clients with Dirichlet(0.1) label skew,
10 clients per round, 5 local epochs, batch 32, SGD lr 0.01.

* plugin: `fedcmd_plugin.register("fedavg"); easyfl.init(conf); easyfl.run()`, evaluation off; seconds per round
  are the recorder's `round_seconds` (selection, dispatch, local training, upload, aggregation).
* floor: the same rounds as a bare PyTorch loop in the same process: the same selected clients, the same
  batches (the data set's `batches(cid, batch_size, generator)` with the plugin's seeds from
  `fedcmd_plugin.federation.seeding`), SGD steps, then a sample-weighted average.
Plugin blocks and floor blocks alternate (plugin, floor, plugin, floor, ...); medians are reported. The final
weights of both are compared, so the floor is known to do the same work.

* start-up: a fresh interpreter (launched by this script) runs the plugin's quick start until the first round
  begins; its own timestamps split the time into interpreter, import torch, import easyfl, import the plugin,
  config, data (IDX files + cached partition), easyfl.init (model, server, clients) and server set-up.

    python benchmarks/round_overhead.py            # 5 blocks of 4 rounds, 3 start-ups
    python benchmarks/round_overhead.py --quick    # 3 blocks of 2 rounds, 1 start-up (under 2 minutes)
    python benchmarks/round_overhead.py --threads 1   # on a busy machine: competing intra-op threads spin
                                                      # and make rounds vary by 10x or more

Writes benchmarks/results/round_overhead.json.
"""
import time

_T_SCRIPT = time.time()  # first statement: the start-up child measures from here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from common import W1, machine  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "round_overhead.json"
RATIO_TARGET = 1.05
STARTUP_TARGET = 3.0

SETTING = {
    "parallel.workers": 1,  # the framework's overhead per process against one bare loop: one process each
    **W1,
}


def overrides(args, workdir, rounds):
    values = dict(SETTING)
    values.update({"server.rounds": rounds, "output.root": str(workdir / "runs"),
                   "data.root": str(workdir / "data")})
    if args.data_path:
        values["data.path"] = args.data_path
    if args.threads is not None:
        values["num_threads"] = args.threads
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


# --------------------------------------------------------------------------------------------- plugin rounds


class SelectionLog:
    """Records the clients the plugin's server selects each round (wraps the method, adds no work)."""

    def __init__(self):
        from fedcmd_plugin.federation.server import FederatedServer

        self.rounds = {}
        original = FederatedServer.selection

        def selection(server, *a, **kw):
            chosen = original(server, *a, **kw)
            self.rounds[server._current_round] = list(chosen)
            return chosen

        FederatedServer.selection = selection


def plugin_block(conf_overrides, selections):
    """One `easyfl.init` + `easyfl.run`; returns (round_seconds list, images per round, initial and final state)."""
    import easyfl
    from easyfl.coordinator import get_coordinator

    import fedcmd_plugin
    from fedcmd_plugin.experiment import last_run

    fedcmd_plugin.register("fedavg")
    conf = fedcmd_plugin.load_config(None, conf_overrides)
    easyfl.init(conf)
    coordinator = get_coordinator()  # the one fedcmd_plugin.register gave EasyFL
    initial = {k: v.detach().clone() for k, v in coordinator.model.state_dict().items()}
    selections.rounds.clear()
    easyfl.run()
    folder = last_run()["folder"]
    metrics = json.loads((folder / "metrics.json").read_text())
    final = {k: v.detach().clone() for k, v in coordinator.server._model.state_dict().items()}
    shutil.rmtree(folder, ignore_errors=True)
    return ([m["round_seconds"] for m in metrics], [m["images"] for m in metrics], initial, final,
            dict(selections.rounds), coordinator.conf)


# --------------------------------------------------------------------------------------------- compute floor


def floor_block(conf, data, initial, selections):
    """The same rounds as a bare PyTorch loop: returns (seconds per round, images per round, final state)."""
    import torch
    import torch.nn.functional as F

    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.federation.messages import RoundSettings
    from fedcmd_plugin.federation.seeding import client_generator
    from fedcmd_plugin.models import build_model

    info = load_federated(conf).info
    model = build_model("lenet5", info.in_channels, info.num_classes, info.image_size)
    state = {k: v.clone() for k, v in initial.items()}
    epochs, batch_size, lr = conf.client.local_epoch, conf.client.batch_size, conf.client.optimizer.lr
    seconds, images = [], []
    for round_index in sorted(selections):
        started = time.perf_counter()
        uploads, weights, seen = [], [], 0
        for cid in selections[round_index]:
            model.load_state_dict(state)
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            settings = RoundSettings(round_index, int(conf.seed), int(conf.client.local_epoch))
            generator = client_generator(settings, cid, "train")
            for _ in range(epochs):
                for x, y in data.batches(cid, batch_size, generator):
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x), y).backward()
                    optimizer.step()
                    seen += len(y)
            uploads.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(float(data.size(cid)))
        total = sum(weights)
        state = {k: (sum(w * u[k].double() for u, w in zip(uploads, weights)) / total).to(initial[k].dtype)
                 for k in initial}
        seconds.append(time.perf_counter() - started)
        images.append(seen)
    return seconds, images, state


def expected_selection(conf, num_rounds):
    """The plugin's seeded selection, recomputed from fedcmd_plugin.federation.seeding."""
    import numpy as np

    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.federation.seeding import derived_seed

    order = sorted(load_federated(conf).train.users)
    chosen = {}
    for r in range(num_rounds):
        rng = np.random.default_rng(derived_seed(conf.seed, r, "selection"))
        picks = rng.choice(len(order), conf.server.clients_per_round, replace=False)
        chosen[r] = [order[i] for i in sorted(picks)]
    return chosen


# --------------------------------------------------------------------------------------------- start-up


class _FirstRound(Exception):
    """Raised by the start-up child's hook when the first round begins (ends the child's run there)."""


def startup_child(args):
    """Runs in a fresh interpreter: the quick start until the first round begins; prints its timestamps."""
    marks = {"script": _T_SCRIPT}
    import torch  # noqa: F401

    marks["import_torch"] = time.time()
    import easyfl

    marks["import_easyfl"] = time.time()
    import fedcmd_plugin
    from fedcmd_plugin.federation.server import FederatedServer

    fedcmd_plugin.register("fedavg")
    marks["import_plugin"] = time.time()
    conf = fedcmd_plugin.load_config(None, overrides(args, Path(args.workdir), 1))
    marks["config"] = time.time()
    from fedcmd_plugin.data import load_federated

    load_federated(conf)  # what easyfl.init would do first; done here to time it on its own
    marks["data"] = time.time()

    def first_round(server):
        marks["first_round"] = time.time()
        raise _FirstRound()

    FederatedServer.pre_train = first_round
    easyfl.init(conf)
    marks["easyfl_init"] = time.time()
    try:
        easyfl.run()
    except _FirstRound:
        pass
    print("STARTUP " + json.dumps(marks))


STARTUP_PHASES = [
    ("interpreter", "launch", "script"),
    ("import torch", "script", "import_torch"),
    ("import easyfl", "import_torch", "import_easyfl"),
    ("import fedcmd_plugin + register", "import_easyfl", "import_plugin"),
    ("config", "import_plugin", "config"),
    ("data (IDX files, cached partition)", "config", "data"),
    ("easyfl.init (model, server, clients)", "data", "easyfl_init"),
    ("run until the first round", "easyfl_init", "first_round"),
]


def measure_startup(args, workdir):
    command = [sys.executable, str(Path(__file__).resolve()), "--startup-child", "--workdir", str(workdir)]
    if args.data_path:
        command += ["--data-path", args.data_path]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    launch = time.time()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("STARTUP ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"start-up child failed ({result.returncode}):\n{result.stderr[-3000:]}")
    marks = dict(json.loads(lines[-1][len("STARTUP "):]), launch=launch)
    phases = {name: marks[end] - marks[start] for name, start, end in STARTUP_PHASES}
    return marks["first_round"] - launch, phases


# --------------------------------------------------------------------------------------------- report


def table(result):
    lines = ["", f"{'':38} {'median s/round':>15} {'mean':>8} {'rounds':>7}"]
    for name, key in [("plugin (easyfl.init/run)", "plugin"), ("floor (bare PyTorch loop)", "floor")]:
        values = result["per_round"][key]
        lines.append(f"{name:38} {statistics.median(values):15.3f} {statistics.mean(values):8.3f} {len(values):7d}")
    lines.append(f"{'ratio plugin / floor':38} {result['ratio']:15.3f}   (paired median {result['paired_ratio']:.3f}, "
                 f"target <= {RATIO_TARGET})")
    lines.append(f"{'start-up to first round (s)':38} {result['startup_seconds']:15.2f}   (target <= {STARTUP_TARGET})")
    for name, value in result["startup_breakdown"].items():
        lines.append(f"  {name:36} {value:15.2f}")
    lines.append(f"final weights plugin vs floor: max |diff| {result['max_weight_diff']:.2e}; images per round equal: "
                 f"{result['same_images']}")
    return "\n".join(lines)


def profile_block(conf_overrides, selections):
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    plugin_block(conf_overrides, selections)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(r"fedcmd_plugin|easyfl", 25)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 blocks of 2 rounds and one start-up (< 2 minutes on an idle machine)")
    parser.add_argument("--blocks", type=int, help="plugin/floor block pairs (default 5, quick 3)")
    parser.add_argument("--rounds", type=int, help="rounds per block (default 4, quick 2)")
    parser.add_argument("--startups", type=int, help="start-up measurements (default 3, quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads (config num_threads; default: the plugin's choice)")
    parser.add_argument("--data-path", help="folder with Fashion-MNIST's IDX files (default: the Debian package's)")
    parser.add_argument("--profile", action="store_true", help="also profile one plugin block (cProfile)")
    parser.add_argument("--output", default=str(RESULTS), help="result JSON path")
    parser.add_argument("--startup-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.startup_child:
        return startup_child(args)

    blocks = args.blocks or (3 if args.quick else 5)
    rounds = args.rounds or (2 if args.quick else 4)
    startups = args.startups if args.startups is not None else (1 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="round_overhead-"))
    started = time.time()
    previous = os.getcwd()
    os.chdir(workdir)  # EasyFL writes logs/ below the current directory
    try:
        return run(args, blocks, rounds, startups, workdir, started)
    finally:
        os.chdir(previous)
        shutil.rmtree(workdir, ignore_errors=True)


def run(args, blocks, rounds, startups, workdir, started):
    import torch

    from fedcmd_plugin.data import load_federated

    conf_overrides = overrides(args, workdir, rounds)
    load_before = [round(x, 2) for x in os.getloadavg()]
    selections = SelectionLog()
    plugin_rounds, floor_rounds, diffs, same_images = [], [], [], True
    for block in range(blocks):
        seconds, plugin_images, initial, plugin_final, chosen, conf = plugin_block(conf_overrides, selections)
        if block == 0:
            assert chosen == expected_selection(conf, rounds), "the floor would not train the plugin's clients"
        floor_seconds, floor_images, floor_final = floor_block(conf, load_federated(conf).train, initial, chosen)
        plugin_rounds += seconds
        floor_rounds += floor_seconds
        same_images &= plugin_images == floor_images
        diffs.append(max(float((plugin_final[k].double() - floor_final[k].double()).abs().max())
                         for k in plugin_final))
        print(f"block {block + 1}/{blocks}: plugin {[round(s, 3) for s in seconds]} s, "
              f"floor {[round(s, 3) for s in floor_seconds]} s", flush=True)
    if args.profile:
        profile_block(conf_overrides, selections)
    startup_runs = [measure_startup(args, workdir) for _ in range(startups)]
    startup_runs.sort(key=lambda item: item[0])
    startup, breakdown = startup_runs[len(startup_runs) // 2] if startup_runs else (float("nan"), {})

    paired = [p / f for p, f in zip(plugin_rounds, floor_rounds)]
    result = {
        "seconds_per_round": statistics.median(plugin_rounds),
        "floor_seconds_per_round": statistics.median(floor_rounds),
        "ratio": statistics.median(plugin_rounds) / statistics.median(floor_rounds),
        "paired_ratio": statistics.median(paired),
        "startup_seconds": startup,
        "startup_breakdown": breakdown,
        "startup_all": [s for s, _ in startup_runs],
        "per_round": {"plugin": plugin_rounds, "floor": floor_rounds},
        "blocks": blocks,
        "rounds_per_block": rounds,
        "max_weight_diff": max(diffs),
        "same_images": same_images,
        "setting": {k: v for k, v in SETTING.items() if not k.startswith(("output.", "evaluation."))},
        "targets": {"ratio": RATIO_TARGET, "startup_seconds": STARTUP_TARGET},
        "machine": dict(machine(), load_average_before=load_before),
        "command": " ".join(["python", "benchmarks/round_overhead.py", *sys.argv[1:]]),
        "benchmark_seconds": time.time() - started,
        "torch_threads": torch.get_num_threads(),
    }
    print(table(result))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {output} ({result['benchmark_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
