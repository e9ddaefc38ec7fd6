"""Does the checked-out code still give the results that older commits measured? Same short runs, compared.

A sweep keeps cells measured on earlier commits (each cell records its commit). For every (commit, method) among
`benchmarks/results/fedcmd_sweep_cells/`, this runs the method's FMNIST config for a few rounds at that commit (a
temporary git worktree) and in this checkout, and compares every client's evaluation row by row: the test counts
must be equal, the loss equal either as-is or divided by the test total (clients.csv's `test_loss` changed from a
per-client sum to a mean per sample). Prints a table and writes `benchmarks/results/reproduce.json`.

    python benchmarks/reproduce.py                    # every (commit, method) of the sweep's cells, 12 rounds
    python benchmarks/reproduce.py --pairs 52f3340:fedcmd --rounds 5
    python benchmarks/reproduce.py --quick            # digits, FedAvg, the checkout's own commit, 3 rounds
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, write_json

CELLS = ROOT / "benchmarks" / "results" / "fedcmd_sweep_cells"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, fedavg at HEAD, 3 rounds")
    parser.add_argument("--pairs", nargs="+", default=None, help="COMMIT:METHOD ... (default: the sweep's cells)")
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "reproduce.json"))
    return parser.parse_args()


def git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def sweep_pairs():
    """(commit, method) of every committed sweep cell, one pair each."""
    pairs = set()
    for cell in CELLS.glob("*.json"):
        result = json.loads(cell.read_text())
        pairs.add((result["commit"][:7], result["label"]))
    return sorted(pairs)


def client_rows(tree, method, dataset, rounds, root):
    """clients.csv of a short run of `method` in checkout `tree` (its own code, configs and data cache)."""
    command = [sys.executable, "-m", "fedcmd_plugin", "run", f"configs/{method}_{dataset}.yaml",
               f"server.rounds={rounds}", "client.local_epoch=1", "seed=0", f"output.root={root}",
               "output.save_model=false", "output.tensorboard=false", "output.progress=false"]
    if dataset == "fmnist":
        command.append("data.alpha=0.1")
    done = subprocess.run(command, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} at {tree}: {done.stderr.strip().splitlines()[-1:]}")
    (folder,) = [p for p in Path(root).iterdir() if p.is_dir()]
    with open(folder / "clients.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def same_row(old, new):
    if any(old[k] != new[k] for k in ("round", "cid", "test_correct", "test_total")):
        return False
    before, after, total = float(old["test_loss"]), float(new["test_loss"]), int(old["test_total"])
    close = 1e-4 * max(1.0, abs(after))
    return abs(before - after) <= close or abs(before / total - after) <= close


def compare(commit, method, dataset, rounds, scratch):
    tree = Path(scratch) / commit
    if not tree.exists():
        git("worktree", "add", "--detach", str(tree), commit)
    started = time.time()
    old = client_rows(tree, method, dataset, rounds, Path(scratch) / f"{method}-{commit}-runs")
    new = client_rows(ROOT, method, dataset, rounds, Path(scratch) / f"{method}-here-runs")
    differing = len(old) != len(new) or sum(not same_row(a, b) for a, b in zip(old, new))
    return {"commit": commit, "method": method, "rows": len(new), "old_rows": len(old),
            "differing_rows": int(differing), "identical": not differing, "seconds": round(time.time() - started, 1)}


def main():
    args = parse_args()
    if args.quick:
        args.dataset, args.rounds = "digits", 3
        args.pairs = args.pairs or [f"{git('rev-parse', '--short', 'HEAD')}:fedavg"]
    pairs = [tuple(p.split(":", 1)) for p in args.pairs] if args.pairs else sweep_pairs()
    rows = []
    with tempfile.TemporaryDirectory(prefix="reproduce-") as scratch:
        try:
            for commit, method in pairs:
                try:
                    r = compare(commit, method, args.dataset, args.rounds, scratch)
                except (RuntimeError, subprocess.CalledProcessError) as exc:  # reported; the other pairs go on
                    r = {"commit": commit, "method": method, "identical": False, "error": str(exc)}
                    print(f"{commit:<9} {method:<14} failed: {exc}", flush=True)
                else:
                    print(f"{commit:<9} {method:<14} {r['rows']:>5} client rows  "
                          f"{'identical' if r['identical'] else str(r['differing_rows']) + ' differ'}  "
                          f"({r['seconds']} s)", flush=True)
                rows.append(r)
        finally:
            for commit, _ in pairs:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(scratch) / commit)], cwd=ROOT,
                               capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    write_json(args.output, {"dataset": args.dataset, "rounds": args.rounds, "local_epoch": 1, "pairs": rows,
                             **machine(), "command": " ".join(["python", *sys.argv])})
    print(f"\n{sum(r['identical'] for r in rows)} of {len(rows)} identical; written: {args.output}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
