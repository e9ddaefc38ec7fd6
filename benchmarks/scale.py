"""Memory and time against the number of clients: peak memory, seconds per round and total wall for N = 100, 1,000,
10,000 and 100,000 clients, for FedAvg, FedCMD and FedPer.

Settings (3 rounds of 10 clients, the configs' 5 local epochs and batch 32, one evaluation of every client after the
last round, the default outputs: metrics, plots, TensorBoard, checkpoints):
* FMNIST IID, N = 100, 1,000, 10,000: configs/<method>_fmnist.yaml split IID over N clients, data.min_size =
  min(10, 70,000 // N) (at 10,000 clients each holds 7 samples).
* synthetic, N = 1,000 and 100,000: configs/<method>_synthetic.yaml with every device holding 20 samples
  (data.synthetic.size_sigma 0: a round trains the same amount at every N, so seconds per round compare what N adds).
Each configuration is one child process `python -m fedcmd_plugin run ...` (the checkout's code) under a small
wrapper that reports getrusage(RUSAGE_CHILDREN).ru_maxrss, the largest single process of the run. Meanwhile this
script samples the run's process tree (the server and its worker processes) every 0.2 s from /proc: peak tree RSS
(pages shared by forked workers counted in each) and the peak tree footprint (every page the tree holds counted once,
`tree_memory`; the targets are checked against it). Decoded Fashion-MNIST and its partitions are cached before any
timing. Repetitions (--repeats) are interleaved; medians are reported.

Targets: FedCMD on FMNIST IID over 10,000 clients at most 2 GB and 60 s wall; at 100,000 synthetic clients at most
4 GB with seconds per round within 1.2x of the 1,000-client run (each method).

    python benchmarks/scale.py                       # every N (long: 10,000 and 100,000 clients)
    python benchmarks/scale.py --quick               # N 100 and 1,000, one round (FedCMD two: select, then decouple)
    python benchmarks/scale.py --clients 10000 --methods fedcmd --repeats 3

Writes benchmarks/results/scale.json (--output to change).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, finish, machine

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
METHODS = ("fedavg", "fedcmd", "fedper")
CASES = (("fmnist", 100), ("fmnist", 1000), ("fmnist", 10000), ("synthetic", 1000), ("synthetic", 100000))
FMNIST_SAMPLES = 70000
SYNTHETIC_SAMPLES = 20
SAMPLE_SECONDS = 0.2
MB = 1024 * 1024
TARGETS = {"fmnist_10000_fedcmd_peak_mb": 2048, "fmnist_10000_fedcmd_wall_s": 60, "synthetic_100000_peak_mb": 4096,
           "synthetic_100000_round_ratio": 1.2}
# Runs the command given after it and prints the largest resident set of any process it waited for (kilobytes).
WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(code)")


def overrides(data, clients, method, rounds, workdir, args):
    """The dotted overrides of one configuration; its files go below `workdir`."""
    values = {"data.num_of_clients": clients, "server.rounds": rounds, "server.clients_per_round": 10,
              "server.join_ratio": None, "server.test_every": rounds, "output.progress": False,
              "data.root": workdir / "data", "seed": 0}
    if data == "fmnist":
        values.update({"data.split_type": "iid", "data.min_size": min(10, FMNIST_SAMPLES // clients)})
        if args.data_path:
            values["data.path"] = args.data_path
    else:
        values.update({"data.synthetic.mean_samples": SYNTHETIC_SAMPLES, "data.synthetic.size_sigma": 0})
    return [f"{key}={'null' if value is None else value}" for key, value in values.items()]


def rounds_for(method, quick):
    """Quick: one round, FedCMD two (its selection phase needs a decoupled round after it)."""
    return (2 if method == "fedcmd" else 1) if quick else 3


def config_file(data, method):
    return ROOT / "configs" / f"{method}_{data}.yaml"


# --------------------------------------------------------------------------------------------- memory sampling


def process_tree(root):
    """`root` and every process below it (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_memory(root):
    """(RSS summed over the tree, the tree's footprint) in bytes; processes that end meanwhile count 0.

    The footprint counts each page the tree holds once: anonymous and shared-memory pages by their PSS (anonymous
    pages are shared only between forked relatives, so PSS splits them within the tree alone), plus the file-backed
    pages of the process holding most (the same libraries in every process). Plain PSS would also split library
    pages with unrelated processes that map them."""
    rss = private = files = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line and not line[0].isdigit())
            with open(f"/proc/{pid}/status") as handle:
                status = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        kb = {key: int(value.split()[0]) * 1024 for key, value in {**fields, **status}.items()
              if key in ("Rss", "Pss_Anon", "Pss_Shmem", "RssFile")}
        rss += kb.get("Rss", 0)
        private += kb.get("Pss_Anon", 0) + kb.get("Pss_Shmem", 0)
        files = max(files, kb.get("RssFile", 0))
    return rss, private + files


class Sampler(threading.Thread):
    """Peak tree RSS and footprint of a running process, sampled every SAMPLE_SECONDS."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_footprint, self.done = pid, 0, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            rss, footprint = tree_memory(self.pid)
            self.peak_rss, self.peak_footprint = max(self.peak_rss, rss), max(self.peak_footprint, footprint)
            self.done.wait(SAMPLE_SECONDS)


# --------------------------------------------------------------------------------------------- one run


def run_one(data, clients, method, rounds, args, scratch):
    """One configuration in a child process: its memory, seconds per round and wall."""
    workdir = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{data}-{clients}-{method}-"))
    (workdir / "data").symlink_to(scratch / "data", target_is_directory=True)  # shared decoded data and partitions
    command = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "fedcmd_plugin", "run",
               str(config_file(data, method)), *overrides(data, clients, method, rounds, workdir, args),
               f"output.root={workdir / 'runs'}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    started = time.time()
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL)
    sampler = Sampler(process.pid)
    sampler.start()
    out, err = process.communicate()
    wall = time.time() - started
    sampler.done.set()
    sampler.join()
    result = {"data": data, "clients": clients, "method": method, "rounds": rounds, "wall_s": wall,
              "peak_tree_mb": sampler.peak_footprint / MB, "peak_tree_rss_mb": sampler.peak_rss / MB,
              "returncode": process.returncode}
    marks = [line.split()[1] for line in err.splitlines() if line.startswith("MAXRSS_KB")]
    result["max_process_rss_mb"] = int(marks[-1]) * 1024 / MB if marks else None
    folders = sorted((workdir / "runs").glob("*/metrics.json"))
    if process.returncode != 0 or not folders:
        result["error"] = (err or out)[-2000:]
    else:
        rows = json.loads(folders[-1].read_text())
        result["round_seconds"] = [r["round_seconds"] for r in rows if "round_seconds" in r]
        result["seconds_per_round"] = statistics.median(result["round_seconds"])
    shutil.rmtree(workdir / "runs", ignore_errors=True)
    return result


def warm_caches(cases, methods, quick, args, scratch):
    """Decode Fashion-MNIST and cache its partitions once, so no timed run pays for them."""
    from fedcmd_plugin.config import load_config
    from fedcmd_plugin.data import load_federated

    for data, clients in cases:
        if data == "fmnist":
            method = methods[0]
            load_federated(load_config(config_file(data, method), overrides(
                data, clients, method, rounds_for(method, quick), scratch, args)))


# --------------------------------------------------------------------------------------------- report


def median_runs(runs):
    """One row per (data, clients, method): medians over its repetitions."""
    rows = {}
    for run in runs:
        rows.setdefault((run["data"], run["clients"], run["method"]), []).append(run)
    table = []
    for (data, clients, method), group in rows.items():
        row = {"data": data, "clients": clients, "method": method, "repeats": len(group),
               "rounds": group[0]["rounds"], "failed": sum(1 for r in group if "error" in r)}
        for key in ("peak_tree_mb", "peak_tree_rss_mb", "max_process_rss_mb", "seconds_per_round", "wall_s"):
            values = [r[key] for r in group if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        table.append(row)
    check_targets(table)
    return table


def check_targets(table):
    """The issue's targets as pass/fail fields of the rows they concern."""
    index = {(r["data"], r["clients"], r["method"]): r for r in table}
    for row in table:
        if (row["data"], row["clients"], row["method"]) == ("fmnist", 10000, "fedcmd"):
            row["peak_ok"] = ok(row["peak_tree_mb"], TARGETS["fmnist_10000_fedcmd_peak_mb"])
            row["wall_ok"] = ok(row["wall_s"], TARGETS["fmnist_10000_fedcmd_wall_s"])
        if (row["data"], row["clients"]) == ("synthetic", 100000):
            row["peak_ok"] = ok(row["peak_tree_mb"], TARGETS["synthetic_100000_peak_mb"])
            small = index.get(("synthetic", 1000, row["method"]))
            if small and small["seconds_per_round"] and row["seconds_per_round"]:
                row["round_ratio"] = row["seconds_per_round"] / small["seconds_per_round"]
                row["round_ratio_ok"] = row["round_ratio"] <= TARGETS["synthetic_100000_round_ratio"]


def ok(value, limit):
    return None if value is None else value <= limit


def format_table(table):
    def cell(value, spec):
        return "-" if value is None else format(value, spec)

    def verdict(row, key):
        return "-" if row.get(key) is None else ("pass" if row[key] else "FAIL")

    header = (f"{'data':<10} {'clients':>8} {'method':<7} {'tree MB':>8} {'tree RSS':>9} {'proc RSS':>9} "
              f"{'s/round':>8} {'wall s':>7} {'<=2GB/4GB':>9} {'<=60s':>6} {'x1k':>5} {'<=1.2x':>7}")
    lines = ["", header, "-" * len(header)]
    for row in sorted(table, key=lambda r: (r["data"] != "fmnist", r["clients"], r["method"])):
        lines.append(f"{row['data']:<10} {row['clients']:>8} {row['method']:<7} {cell(row['peak_tree_mb'], '8.0f')} "
                     f"{cell(row['peak_tree_rss_mb'], '9.0f')} {cell(row['max_process_rss_mb'], '9.0f')} "
                     f"{cell(row['seconds_per_round'], '8.2f')} {cell(row['wall_s'], '7.1f')} "
                     f"{verdict(row, 'peak_ok'):>9} {verdict(row, 'wall_ok'):>6} {cell(row.get('round_ratio'), '5.2f')} "
                     f"{verdict(row, 'round_ratio_ok'):>7}" + (f"  ({row['failed']} failed)" if row["failed"] else ""))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N 100 and 1,000 only, one round (FedCMD: two)")
    parser.add_argument("--clients", type=int, nargs="+", help="client counts to run (default: all of the setting)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repetitions (medians are reported)")
    parser.add_argument("--data-path", help="folder with Fashion-MNIST's IDX files (default: the Debian package's)")
    parser.add_argument("--output", default=str(RESULTS), help="result JSON path")
    args = parser.parse_args(argv)
    wanted = args.clients or ([100, 1000] if args.quick else sorted({n for _, n in CASES}))
    cases = [(data, n) for data, n in CASES if n in wanted]
    if not cases:
        parser.error(f"--clients: no setting has {wanted} clients; choose from {sorted({n for _, n in CASES})}")
    started, info = time.time(), dict(machine(), cores=os.cpu_count(), load_average_at_start=list(os.getloadavg()))
    scratch = Path(tempfile.mkdtemp(prefix="scale-"))
    (scratch / "data").mkdir()
    try:
        warm_caches(cases, args.methods, args.quick, args, scratch)
        runs = []
        for repeat in range(args.repeats):
            for data, clients in cases:
                for method in args.methods:
                    run = run_one(data, clients, method, rounds_for(method, args.quick), args, scratch)
                    runs.append(dict(run, repeat=repeat))
                    status = "failed" if "error" in run else f"{run['wall_s']:.1f} s, {run['peak_tree_mb']:.0f} MB"
                    print(f"[{repeat + 1}/{args.repeats}] {data} {clients} {method}: {status}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = median_runs(runs)
    print(format_table(table))
    document = {"setting": {"rounds": 1 if args.quick else 3, "clients_per_round": 10, "quick": args.quick,
                            "synthetic_samples_per_device": SYNTHETIC_SAMPLES, "repeats": args.repeats,
                            "memory": "peak_tree_mb (the process tree's footprint, see tree_memory) is checked against the targets"},
                "targets": TARGETS, "table": table, "runs": runs, "machine": info,
                "command": " ".join(["python", "benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
                "benchmark_seconds": time.time() - started}
    return finish(args.output, document, runs, lambda run: f"{run['data']} {run['clients']} {run['method']}")


if __name__ == "__main__":
    sys.exit(main())
