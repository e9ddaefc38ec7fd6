"""Command line: `python -m fedcmd_plugin <command>` (installed as `fedcmd-plugin`).

Bad input ends with a one-line `error: ...` on stderr and exit status 2, never a stack trace.
"""
import argparse
import json
import os
import sys

from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation.stopping import exit_status

EPILOG = """examples:
  fedcmd-plugin run configs/fedcmd_digits.yaml
  fedcmd-plugin run configs/fedavg_fmnist.yaml server.rounds=5 client.local_epoch=1
  fedcmd-plugin run configs/fedcmd_digits.yaml configs/fedavg_digits.yaml     (prints a comparison)
  fedcmd-plugin run configs/fedavg_digits.yaml --nproc 2                      (torch.distributed, 2 processes)
  fedcmd-plugin run configs/fedcmd_digits.yaml --resume runs/fedcmd-digits-20260101-120000   (continue a run)
  fedcmd-plugin compare runs/fedcmd-digits-* runs/fedavg-digits-*           (finished runs side by side)
  fedcmd-plugin show-config configs/fedcmd_digits.yaml seed=3
  fedcmd-plugin list
"""


SWEEP_EPILOG = """examples:
  fedcmd-plugin sweep configs/fedcmd_fmnist.yaml configs/fedper_fmnist.yaml data.alpha=0.1,0.5
  fedcmd-plugin sweep --base configs/fmnist.yaml --methods fedcmd fedper fedavg --seeds 0 1 2 --workers 2
  fedcmd-plugin sweep configs/fedcmd_digits.yaml fedcmd.aggregation=reference,round --output runs/agg
"""


def run_experiment(conf):
    """Register the config's algorithm and run it the EasyFL way; returns the run's summary."""
    import easyfl

    from fedcmd_plugin.experiment import current
    from fedcmd_plugin.registry import register

    register(conf.algorithm)
    easyfl.init(conf)
    easyfl.run()
    return dict(current().outcome)


def command_run(args):
    from fedcmd_plugin.config import config_arguments, load_config
    from fedcmd_plugin.tracking.recorder import usable_root

    configs, overrides = config_arguments(args.items)
    if args.resume is not None:
        if len(configs) != 1:
            raise PluginError(f"--resume continues one run: give its one config file, not {len(configs)}")
        overrides.append(f"resume={json.dumps(args.resume)}")  # a quoted YAML string, whatever the path holds
        from fedcmd_plugin.federation import checkpoint

        checkpoint.read(args.resume, load_config(configs[0], overrides), mmap=True)  # refused before anything starts
    loaded = [load_config(path, overrides) for path in configs]  # check every file before the first run
    for conf in loaded:
        usable_root(conf.output.root)
    if args.nproc > 1:
        from fedcmd_plugin.launcher import launch

        return launch(args.nproc, [*configs, *overrides])
    results = []
    for path, conf in zip(configs, loaded):
        result = run_experiment(conf)
        if "stopped" in result:
            return report_stopped(path, result)
        results.append((os.path.basename(path), result.get("summary", {})))
    if len(results) > 1:
        print(comparison_table(results, "config"))
    return 0


def report_stopped(path, result):
    """A run stopped by a signal: how to continue it, and the shell's status for that signal."""
    stopped = result["stopped"]
    how = f"; continue with: fedcmd-plugin run {path} --resume {result['folder']}" \
        if stopped["checkpoint_round"] else ""
    print(f"stopped after round {stopped['round']} of {stopped['rounds']} ({stopped['reason']}){how}", file=sys.stderr)
    return exit_status(stopped["reason"])


def comparison_table(results, label):
    """Runs side by side: results = [(name, summary.json dict)]; `label` heads the names' column."""
    lines = ["", f"{label:<34} {'algorithm':<10} {'dataset':<15} {'result':<42} {'rounds':>6} {'s/round':>8} layer"]
    for name, summary in results:
        final = summary.get("final", {})
        if "accuracy" in final:
            result = f"acc {final['accuracy']:6.2f}% (clients {final['accuracy_mean']:.1f} ± {final['accuracy_std']:.1f})"
        elif "mAP" in final:
            result = f"mAP {final['mAP']:6.2f}  Rank-1 {final['rank1']:6.2f}"
        else:
            result = "-"
        per_round = summary.get("seconds_per_round")
        lines.append(f"{name:<34} {summary.get('algorithm', '-'):<10} {summary.get('dataset', '-'):<15} {result:<42} "
                     f"{summary.get('rounds', '-')!s:>6} {per_round if per_round is None else round(per_round, 2)!s:>8} "
                     f"{summary.get('personal_block') or '-'}")
    return "\n".join(lines)


def command_compare(args):
    from fedcmd_plugin.tracking import plots
    from fedcmd_plugin.tracking.runs import load_run

    runs = [load_run(folder) for folder in args.folders]
    print(comparison_table([(run.folder.name, run.summary) for run in runs], "run"))
    series = {}
    for run in runs:
        metric = "accuracy" if any("accuracy" in m for m in run.metrics) else "mAP"
        rows = [m for m in run.metrics if metric in m]
        series[run.folder.name] = ([m["round"] for m in rows], [m[metric] for m in rows])
    print(f"plot: {plots.curves(series, args.plot, 'accuracy per round', 'round', 'accuracy / mAP (%)')}")
    return 0


def command_sweep(args):
    from fedcmd_plugin import sweep

    configs = [i for i in args.items if "=" not in i]
    items = [i for i in args.items if "=" in i]
    if args.methods:
        if configs and not args.base:
            raise PluginError("with --methods, name the shared config with --base (positional configs are methods)")
        base = args.base or None
        methods = [(m, base, (f"algorithm={m}",)) for m in args.methods]
    else:
        methods = []
    from fedcmd_plugin.config import load_config

    for path in configs:
        methods.append((sweep.label_of(path, load_config(path)), path, ()))
    if not methods:
        raise PluginError("give config files or --methods (see `fedcmd-plugin sweep --help`)")
    cells = sweep.plan(methods, args.seeds, items)
    print(f"sweep: {len(cells)} cells -> {args.output}", file=sys.stderr)
    meta = {"command": " ".join(["fedcmd-plugin", "sweep", *sys.argv[2:]]), **sweep.machine()}
    table, failed = sweep.run_sweep(cells, args.output, args.workers, progress=not args.quiet, meta=meta)
    print(sweep.markdown(table, list(dict.fromkeys(c.label for c in cells))))
    for result in failed:
        print(f"failed: {result['label']} {result['setting']} seed {result['seed']}: {result['error']}",
              file=sys.stderr)
    return 1 if failed else 0


def command_show_config(args):
    from fedcmd_plugin.config import config_arguments, load_config, to_yaml

    configs, overrides = config_arguments(args.items)
    for path in configs:
        print(f"# {path}")
        print(to_yaml(load_config(path, overrides)))
    return 0


def command_list(args):
    from fedcmd_plugin.data.federated import BUILDERS
    from fedcmd_plugin.models import MODELS
    from fedcmd_plugin.registry import algorithms

    print("algorithms:")
    for name, algorithm in algorithms().items():
        print(f"  {name:<12} {algorithm.summary}")
    print("datasets:   " + ", ".join(sorted(BUILDERS)))
    print("models:     auto, " + ", ".join(sorted(MODELS)))
    return 0


def command_reid_generate(args):
    from fedcmd_plugin.data.reid import generate_synthetic

    paths = generate_synthetic(args.root, edges=args.edges, identities=args.identities,
                               test_identities=args.test_identities, cameras=args.cameras,
                               images_per_camera=args.images_per_camera, image_size=(args.height, args.width),
                               seed=args.seed, overwrite=args.overwrite)
    for path in paths:
        print(path)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fedcmd-plugin", description="FedCMD and FedUReID as EasyFL plugins.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one or more YAML experiments (key.sub=value overrides apply to all)",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    run.add_argument("items", nargs="+", metavar="CONFIG.yaml | key.sub=value")
    run.add_argument("--nproc", type=int, default=1, help="processes for torch.distributed on this machine "
                     "(gloo on the CPU, nccl with gpu > 0); default 1 = standalone simulation")
    run.add_argument("--resume", metavar="RUN_FOLDER", default=None,
                     help="continue the run in RUN_FOLDER from its checkpoint.pt, with the same config, in the same "
                     "folder (sets config key resume)")
    run.set_defaults(handler=command_run)
    sweep = commands.add_parser(
        "sweep", help="run methods x seeds x override grid in parallel worker processes, resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SWEEP_EPILOG,
        description="Each cell (method, setting, seed) is one run in a child process; `key=v1,v2` overrides "
                    "form the grid of settings, `key=v` ones apply to every cell. Finished cells are skipped "
                    "when the same --output is swept again; a failed cell is reported and the others go on.")
    sweep.add_argument("items", nargs="*", metavar="CONFIG.yaml | key.sub=value | key.sub=v1,v2")
    sweep.add_argument("--methods", nargs="+", metavar="ALGORITHM",
                       help="algorithms to run on the --base config (or the defaults)")
    sweep.add_argument("--base", metavar="CONFIG.yaml", help="the config every --methods entry starts from")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (partitions); default 0 1 2")
    sweep.add_argument("--workers", type=int, default=None, help="parallel cells; default: one per usable core")
    sweep.add_argument("--output", default="runs/sweep", help="sweep folder (cells, sweep.json/csv/md/png); "
                       "sweeping the same folder again resumes it (default: runs/sweep)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(handler=command_sweep)
    show = commands.add_parser("show-config", help="print the fully resolved config")
    show.add_argument("items", nargs="+", metavar="CONFIG.yaml | key.sub=value")
    show.set_defaults(handler=command_show_config)
    generate = commands.add_parser("reid-generate", help="write synthetic multi-camera pedestrian edges "
                                   "(Market-1501 layout, one folder per edge)")
    generate.add_argument("root", help="folder that receives edge_0, edge_1, ...")
    generate.add_argument("--edges", type=int, default=4)
    generate.add_argument("--identities", type=int, default=30, help="training identities per edge")
    generate.add_argument("--test-identities", type=int, default=20, help="query/gallery identities per edge")
    generate.add_argument("--cameras", type=int, default=4)
    generate.add_argument("--images-per-camera", type=int, default=4)
    generate.add_argument("--height", type=int, default=64)
    generate.add_argument("--width", type=int, default=32)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--overwrite", action="store_true", help="replace edges written with other settings")
    generate.set_defaults(handler=command_reid_generate)
    compare = commands.add_parser("compare", help="finished runs side by side: final accuracy (or mAP), rounds, "
                                  "s/round, FedCMD's layer; and a plot of accuracy per round")
    compare.add_argument("folders", nargs="+", metavar="RUN_FOLDER")
    compare.add_argument("--plot", default="comparison.png", help="PNG of accuracy (or mAP) per round, one line "
                         "per run (default: comparison.png)")
    compare.set_defaults(handler=command_compare)
    listing = commands.add_parser("list", help="list algorithms, data sets and models")
    listing.set_defaults(handler=command_list)
    from fedcmd_plugin.remote.cli import add_commands as add_remote_commands
    add_remote_commands(commands)
    return parser


def parse_arguments(argv=None):
    """The command line, with configs and overrides also after options (`run A.yaml --nproc 2 seed=3`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    options = [item for item in extra if item.startswith("-")]
    if options or (extra and not hasattr(args, "items")):
        parser.error(f"unrecognized arguments: {' '.join(options or extra)}")
    if extra:
        args.items = [*args.items, *extra]
    return args


def main(argv=None):
    args = parse_arguments(argv)
    try:
        return args.handler(args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return exit_status(getattr(exc, "name", "SIGINT"))
