"""FedCMD against the personalised-FL baselines, shaped like the paper's Table VI (methods x data sets).

Every method of a data set runs on the same cached partition (same data config and seed). Accuracy is the
final personalised accuracy (sample-weighted mean over all clients of each client's model on its own test
split); seconds per round is the median of the per-round training times (evaluation excluded).

    python benchmarks/fedcmd_table.py --quick          # digits, few rounds (< 3 minutes)
    python benchmarks/fedcmd_table.py                  # digits + Fashion-MNIST, full setting
    python benchmarks/fedcmd_table.py --datasets fmnist --methods fedper fedcmd --seeds 1 2   # other partitions

With several `--seeds` (each seed draws its own partition and initial model), accuracy is the mean over seeds
and `accuracy_per_seed` keeps each one.
"""
import argparse
import statistics
import sys
from pathlib import Path

from common import ROOT, machine, run_config, write_json
METHODS = ["local", "fedavg", "fedper", "fedrep", "fedbn", "lg_fedavg", "fedbabu", "pfedsim", "fedprox", "feddyn",
           "fedfomo", "fedap", "ditto", "apfl", "fedcmd", "fedcmd_fixed", "fedcmd_noweight"]
PAPER_FMNIST = {"fedcmd": 96.57, "pfedsim": 96.17, "fedper": 95.71, "local": 95.53, "fedrep": 95.50,
                "fedavg": 77.70}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits only, 10 rounds")
    parser.add_argument("--datasets", nargs="+", default=None, help="default: digits fmnist (quick: digits)")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the configs' own)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="run every method once per seed "
                        "(default: the configs' own seed)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "fedcmd_table.json"))
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every run")
    return parser.parse_args()


def run_one(config, overrides):
    summary, _, per_round, wall = run_config(config, overrides)
    final = summary["final"]
    return {"accuracy": round(final["accuracy"], 2), "accuracy_mean": round(final["accuracy_mean"], 2),
            "seconds_per_round": round(per_round, 3), "rounds": summary["rounds"], "wall_seconds": round(wall, 1),
            "personal_block": summary.get("personal_block"), "folder": summary["folder"]}


def run_seeds(config, overrides, seeds):
    """One run per seed; accuracy and seconds per round are the mean and median over the seeds."""
    if not seeds:
        return run_one(config, overrides)
    runs = [run_one(config, [*overrides, f"seed={seed}"]) for seed in seeds]
    return {"accuracy": round(statistics.mean(r["accuracy"] for r in runs), 2),
            "accuracy_per_seed": {str(seed): r["accuracy"] for seed, r in zip(seeds, runs)},
            "seconds_per_round": round(statistics.median(r["seconds_per_round"] for r in runs), 3),
            "rounds": runs[0]["rounds"], "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 1),
            "personal_block": [r["personal_block"] for r in runs], "folder": [r["folder"] for r in runs]}


def table(results, datasets, methods):
    head = f"{'method':<16}" + "".join(f"{d + ' acc':>14}{'s/round':>9}" for d in datasets)
    lines = [head, "-" * len(head)]
    for method in methods:
        cells = ""
        for d in datasets:
            r = results.get(d, {}).get(method)
            cells += f"{r['accuracy']:>14.2f}{r['seconds_per_round']:>9.3f}" if r else f"{'-':>14}{'-':>9}"
        lines.append(f"{method:<16}{cells}")
    for d in datasets:
        cmd, avg = results.get(d, {}).get("fedcmd"), results.get(d, {}).get("fedavg")
        if cmd and avg:
            lines.append(f"{d}: FedCMD s/round / FedAvg s/round = {cmd['seconds_per_round'] / avg['seconds_per_round']:.2f}"
                         f" (chosen layer: {cmd['personal_block']})")
    return "\n".join(lines)


def main():
    args = parse_args()
    datasets = args.datasets or (["digits"] if args.quick else ["digits", "fmnist"])
    rounds = args.rounds or (10 if args.quick else None)
    overrides = ["output.tensorboard=false", "output.save_model=false", f"output.root={ROOT / 'runs' / 'fedcmd_table'}",
                 *args.overrides]
    if rounds:
        overrides.append(f"server.rounds={rounds}")
        if args.quick:
            overrides += ["fedcmd.selection_rounds=3", "personalization.warmup_rounds=3", "fedap.pretrain_rounds=3",
                          f"server.test_every={rounds}"]
    results = {}
    output = Path(args.output)
    for dataset in datasets:
        for method in args.methods:
            config = ROOT / "configs" / f"{method}_{dataset}.yaml"
            if not config.is_file():
                print(f"skip {method} on {dataset}: {config.name} does not exist", file=sys.stderr)
                continue
            results.setdefault(dataset, {})[method] = run_seeds(config, overrides, args.seeds)
            print(f"{dataset:<8} {method:<16} {results[dataset][method]['accuracy']:6.2f}%  "
                  f"{results[dataset][method]['seconds_per_round']:.3f} s/round", flush=True)
            write_json(output, results)
    write_json(output.with_name(output.stem + "_meta.json"),
               {**machine(), "command": " ".join(sys.argv), "paper_fmnist": PAPER_FMNIST})
    print()
    print(table(results, datasets, args.methods))
    print(f"\nwritten: {output}")


if __name__ == "__main__":
    main()
