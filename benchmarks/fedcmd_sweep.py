"""FedCMD against the personalised baselines over several partitions: mean ± std over seeds per setting.

Runs `fedcmd-plugin sweep` (one worker process per core by default) over the FMNIST configs of
`configs/<method>_fmnist.yaml` (100 clients, balanced Dirichlet, LeNet-5 with BatchNorm, 10 clients per round)
at each alpha and seed, and writes `benchmarks/results/fedcmd_sweep.json` shaped as
{"<dataset>/alpha=<a>": {"<method>": {"mean", "std", "per_seed", "rounds", ...}}} plus a `_meta.json` beside it
(machine, commit, workers, wall time). Cells already finished in `--work` or committed in
`benchmarks/results/fedcmd_sweep_cells/` are skipped, so it resumes from any checkout; finished cells are copied
there.

    python benchmarks/fedcmd_sweep.py                     # FMNIST, alpha 0.1 and 0.5, seeds 0 1 2, 100 rounds
    python benchmarks/fedcmd_sweep.py --rounds 200 --methods fedcmd fedper pfedsim --output ...200.json
    python benchmarks/fedcmd_sweep.py --quick             # digits, 2 methods, 2 seeds, 8 rounds (about a minute)
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from common import ROOT, write_json

from fedcmd_plugin import sweep

CELLS = ROOT / "benchmarks" / "results" / "fedcmd_sweep_cells"  # finished cells, kept so any checkout resumes
# FedCMD (both aggregation modes and the reference code's selection rule), the paper's eleven comparison methods,
# then the personalised baselines users reach for next.
METHODS = ["fedcmd", "fedcmd_round", "fedcmd_reference", "local", "fedavg", "fedbn", "fedap", "fedbabu", "fedfomo",
           "fedprox", "fedrep", "pfedsim", "feddyn", "fedper", "lg_fedavg", "ditto", "apfl"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, fedcmd and fedper, seeds 0 1, 8 rounds")
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--alphas", default="0.5,0.1", help="comma-separated Dirichlet alphas")
    parser.add_argument("--only-alphas", default=None, help="run only these of --alphas now (comma-separated); the "
                        "cells keep the names and identities of the whole grid, so later runs fill the rest")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=None, help="default: the configs' own (FMNIST: 100)")
    parser.add_argument("--workers", type=int, default=None, help="default: one per usable core")
    parser.add_argument("--work", default=str(ROOT / "runs" / "fedcmd_sweep"), help="sweep folder (resumable)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "fedcmd_sweep.json"))
    parser.add_argument("--collect", action="store_true", help="run nothing: tabulate the cells finished so far")
    return parser.parse_args()


def restore_cells(work):
    """Start from the cells already finished and committed (they are identified by config content, not path)."""
    target = Path(work) / "cells"
    target.mkdir(parents=True, exist_ok=True)
    for cell in CELLS.glob("*.json"):
        if not (target / cell.name).exists():
            shutil.copy(cell, target / cell.name)


def keep_cells(work):
    """The finished cells into benchmarks/results, without the paths of this machine."""
    CELLS.mkdir(parents=True, exist_ok=True)
    for cell in (Path(work) / "cells").glob("*.json"):
        result = json.loads(cell.read_text())
        result.pop("folder", None)
        result["config"] = str(Path(result["config"]).relative_to(ROOT)) if result["config"].startswith(str(ROOT)) \
            else result["config"]
        write_json(CELLS / cell.name, result)


def main():
    args = parse_args()
    if args.quick:
        args.dataset, args.methods, args.seeds, args.rounds = "digits", ["fedcmd", "fedper"], [0, 1], 8
        args.work, args.output = args.work + "_quick", str(Path(args.output).with_name("fedcmd_sweep_quick.json"))
    items = [f"data.alpha={args.alphas}", "output.save_model=false", "output.tensorboard=false"]
    if args.rounds:
        items += [f"server.rounds={args.rounds}", f"server.test_every={max(1, args.rounds // 10)}"]
    methods = []
    for method in args.methods:
        config = ROOT / "configs" / f"{method}_{args.dataset}.yaml"
        if not config.is_file():
            sys.exit(f"error: {config} does not exist")
        methods.append((method, str(config), ()))
    cells = sweep.plan(methods, args.seeds, items)
    if args.only_alphas:
        wanted = {f"data.alpha={a.strip()}" for a in args.only_alphas.split(",")}
        cells = [c for c in cells if wanted & set(c.overrides)]
    if not args.quick:
        restore_cells(args.work)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **sweep.machine()}
    if args.collect:
        cells = [c for c in cells if sweep.finished(args.work, c)]
        meta["collected_only"] = True
    table, failed = sweep.run_sweep(cells, args.work, args.workers, progress=sys.stderr.isatty(), meta=meta)
    write_json(args.output, table)
    if not args.quick:
        keep_cells(args.work)
    summary = json.loads((Path(args.work) / "sweep.json").read_text())["meta"]
    write_json(Path(args.output).with_name(Path(args.output).stem + "_meta.json"), summary)
    print(sweep.markdown(table, args.methods))
    print(f"this invocation: {summary['wall_seconds']} s wall with {summary['workers']} workers; all cells together: "
          f"{summary['cell_seconds_total']} s; written: {args.output}")
    for result in failed:
        print(f"failed: {result['label']} {result['setting']} seed {result['seed']}: {result['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
