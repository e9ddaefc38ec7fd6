"""Seconds to partition Fashion-MNIST's 70,000 labels over many clients, and how fast an impossible request fails.

For N = 1,000 and 10,000 clients (and 50,000 without --quick; there cannot be more clients than samples):
Dirichlet(0.1) with data.min_size 1 (balanced, as the configs use it), IID and 2 classes per client, each
`fedcmd_plugin.data.partition.make_partition` with seed 0 in this process (the labels are read once before any
timing; the IDX reader is not timed). Repetitions are interleaved over the cases; medians are reported. Also:
how long `data.min_size=10` over 10,000 clients (100,000 samples needed, 70,000 there) takes to be refused.
Targets: every partition of 10,000 clients within 5 s, the refusal within 1 s.

    python benchmarks/partitions.py            # N 1,000 / 10,000 / 50,000, 3 repetitions
    python benchmarks/partitions.py --quick    # N 1,000 and 10,000, 1 repetition

Writes benchmarks/results/partitions.json.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, machine, write_json

sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "partitions.json"
CASES = {"dir": {"alpha": 0.1, "min_size": 1}, "iid": {}, "class": {"class_per_client": 2}}
TARGET_SECONDS, REFUSAL_SECONDS = 5.0, 1.0


def fmnist_labels(folder):
    from fedcmd_plugin.data.sources import IDX_FILES, read_idx

    return np.concatenate([read_idx(Path(folder) / IDX_FILES[f"{split}_labels"]) for split in ("train", "test")])


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def refusal_seconds(labels):
    from fedcmd_plugin.errors import ConfigError

    started = time.perf_counter()
    try:
        make(labels, "dir", 10000, alpha=0.1, min_size=10)
    except ConfigError:
        return time.perf_counter() - started
    raise AssertionError("10,000 clients x 10 samples of 70,000 were not refused")


def make(labels, split_type, clients, **options):
    from fedcmd_plugin.data.partition import make_partition

    return make_partition(labels, split_type, clients, 0, **options)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N 1,000 and 10,000, one repetition")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--data-path", default="/usr/share/datasets/fashion-mnist",
                        help="folder with Fashion-MNIST's IDX files")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    counts = [1000, 10000] if args.quick else [1000, 10000, 50000]
    repeats = args.repeats or (1 if args.quick else 3)
    labels = fmnist_labels(args.data_path)
    seconds = {(kind, n): [] for n in counts for kind in CASES}
    for _ in range(repeats):  # interleaved: every case once per repetition
        for (kind, n) in seconds:
            seconds[(kind, n)].append(timed(lambda: make(labels, kind, n, **CASES[kind])))
    refused = statistics.median(refusal_seconds(labels) for _ in range(repeats))
    rows = [{"split_type": kind, "clients": n, "median_s": round(statistics.median(v), 3),
             "runs_s": [round(x, 3) for x in v],
             "within_target": n != 10000 or statistics.median(v) <= TARGET_SECONDS} for (kind, n), v in seconds.items()]
    print(f"{'split':<6} {'clients':>8} {'median s':>9}  target")
    for row in rows:
        target = ("pass" if row["within_target"] else "FAIL") if row["clients"] == 10000 else "-"
        print(f"{row['split_type']:<6} {row['clients']:>8} {row['median_s']:>9.3f}  {target}")
    verdict = "pass" if refused <= REFUSAL_SECONDS else "FAIL"
    print(f"impossible data.min_size refused after {refused:.4f} s ({verdict})")
    write_json(args.output, {"machine": machine(), "samples": int(len(labels)), "repeats": repeats, "rows": rows,
                             "refusal_seconds": round(refused, 4),
                             "targets": {"partition_10000_s": TARGET_SECONDS, "refusal_s": REFUSAL_SECONDS}})
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
