"""Time and peak memory of one BUC relabel step at Market-1501 scale.

One step = `fedcmd_plugin.fedureid.buc.merge_step` (blockwise distances, pair selection with the size penalty,
union-find merges, relabel) on N random L2-normalised 2048-d features (ResNet-50's feature size), starting from
singletons (BUC's first and largest step) and merging 5% of N. Every N runs in a fresh process, so the peak
RSS (ru_maxrss, torch and the features included) belongs to that N alone.

    python benchmarks/buc_relabel.py           # N = 1000 ... 12936 (Market-1501's training set)
    python benchmarks/buc_relabel.py --quick   # stop at N = 4000

Writes benchmarks/results/buc_relabel.json.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import machine, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "buc_relabel.json"
SIZES = (1000, 2000, 4000, 8000, 12936)
QUICK_MAX = 4000
DIM = 2048
MERGE_FRACTION = 0.05


def measure(n):
    """Run in the child process: one timed step on n features; returns the row."""
    sys.path.insert(0, str(REPO))
    import torch

    from fedcmd_plugin.fedureid.buc import merge_step

    gen = torch.Generator().manual_seed(n)
    features = torch.nn.functional.normalize(torch.randn(n, DIM, generator=gen), dim=1)
    labels = torch.arange(n)
    merge_step(features[:64], labels[:64], 3)  # load the kernels outside the timed step
    start = time.perf_counter()
    new_labels = merge_step(features, labels, round(MERGE_FRACTION * n))
    seconds = time.perf_counter() - start
    assert int(new_labels.max()) + 1 == n - round(MERGE_FRACTION * n)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"n": n, "seconds": round(seconds, 3), "peak_mb": round(peak_mb, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"stop at N = {QUICK_MAX}")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)  # the per-N child process
    parser.add_argument("--output", default=str(RESULTS), help="result JSON path")
    args = parser.parse_args()
    if args.single:
        print(json.dumps(measure(args.single)))
        return
    rows = []
    print(f"{'n':>6} {'seconds':>8} {'peak_mb':>8}")
    for n in (s for s in SIZES if not args.quick or s <= QUICK_MAX):
        child = subprocess.run([sys.executable, __file__, "--single", str(n)], capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"N={n} failed:\n{child.stderr}")
        row = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['n']:>6} {row['seconds']:>8.2f} {row['peak_mb']:>8.0f}", flush=True)
    command = " ".join(["python", os.path.relpath(__file__, REPO), *sys.argv[1:]])
    write_json(args.output, {"rows": rows, "machine": machine(), "command": command})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
