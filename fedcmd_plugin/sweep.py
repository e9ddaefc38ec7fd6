"""Sweeps: methods x seeds x override grid, each cell a separate run in its own worker process.

A cell is one `fedcmd-plugin run` in a child process (so one failing or crashing cell cannot take the others
down, and no framework state leaks between cells). Finished cells leave `cells/<cell>.json`; a sweep started
again over the same folder skips them, so an interrupted sweep resumes where it stopped. After every cell the
sweep rewrites `sweep.json`, `sweep.csv`, `sweep.md` (mean ± std per method and setting) and `sweep.png`.
"""
import hashlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.session import usable_cores
from fedcmd_plugin.tracking import files, plots


@dataclass(frozen=True)
class Cell:
    label: str  # the method's name in the tables
    config: str  # YAML file
    setting: str  # e.g. "fmnist/alpha=0.1": one column of the table
    seed: int
    overrides: tuple  # dotted overrides of this cell (fixed ones and its grid values)

    @property
    def identity(self):
        """What makes two cells the same run: the config's content (extends followed) and the overrides, not
        where the file lies, so a sweep resumes from another checkout of the same configs."""
        from fedcmd_plugin.config import read_yaml

        document = json.dumps([read_yaml(self.config), list(self.overrides)], sort_keys=True, default=str)
        return hashlib.sha1(document.encode()).hexdigest()[:16]

    @property
    def name(self):
        slug = self.setting.replace("/", "_").replace("=", "-")
        return f"{self.label}__{slug}__seed{self.seed}"


def machine():
    """Where a sweep ran: processor, cores, Python, and the commit of the working tree when it is a checkout."""
    import platform

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"machine": f"{platform.machine()}, {usable_cores()} usable cores, Python {platform.python_version()}",
            "commit": commit}


def parse_grid(items):
    """Split `key=value` items into fixed overrides and grid axes (`key=v1,v2`); lists `[..]` stay whole."""
    fixed, axes = [], []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PluginError(f"override {item!r} must look like key.sub=value or key.sub=v1,v2")
        stripped = value.strip()
        if "," in stripped and not stripped.startswith(("[", "{")):
            values = [v.strip() for v in stripped.split(",")]
            if any(not v for v in values):
                raise PluginError(f"override {item!r} has an empty value in its list")
            axes.append((key, values))
        else:
            fixed.append(item)
    return fixed, axes


def axis_names(axes):
    """Short names for the grid keys in settings: the last component, or the whole key where two clash."""
    short = [key.rsplit(".", 1)[-1] for key, _ in axes]
    return [s if short.count(s) == 1 else key for s, (key, _) in zip(short, axes)]


def label_of(config_path, conf):
    """A config's method name: its file stem without a trailing `_<dataset>` (fedcmd_fmnist.yaml -> fedcmd)."""
    stem = Path(config_path).stem
    suffix = f"_{conf.data.dataset}"
    return stem[:-len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem


def plan(methods, seeds, items):
    """Every cell of the sweep. `methods`: [(label, config path, extra overrides)]; `items`: overrides/grid."""
    from fedcmd_plugin.config import load_config

    fixed, axes = parse_grid(items)
    names = axis_names(axes)
    combos = list(itertools.product(*[values for _, values in axes])) or [()]
    labels = [label for label, _, _ in methods]
    if len(set(labels)) != len(labels):
        raise PluginError(f"two methods share a name in this sweep: {labels}; rename a config file")
    cells = []
    for label, config, extra in methods:
        for combo in combos:
            grid = [f"{key}={value}" for (key, _), value in zip(axes, combo)]
            for seed in seeds:
                overrides = (*extra, *fixed, *grid, f"seed={seed}")
                conf = load_config(config, overrides)  # every cell is checked before the first one runs
                setting = "/".join([conf.data.dataset, *(f"{n}={v}" for n, v in zip(names, combo))])
                cells.append(Cell(label, str(config), setting, int(seed), overrides))
    return cells


def read_run(cell_root):
    """The result of the completed run below `cell_root`: final metrics, curve and timing."""
    folders = [p.parent for p in Path(cell_root).glob("*/status.json")
               if json.loads(p.read_text()).get("state") == "complete"]
    if not folders:
        raise PluginError(f"no complete run folder below {cell_root}")
    folder = max(folders, key=lambda p: p.stat().st_mtime)
    summary = json.loads((folder / "summary.json").read_text())
    final = summary.get("final", {})
    metric = "accuracy" if "accuracy" in final else "mAP"
    rows = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else []
    return {"metric": metric, "value": final.get(metric), "rounds": summary.get("rounds"),
            "seconds": summary.get("seconds"), "seconds_per_round": summary.get("seconds_per_round"),
            "personal_block": summary.get("personal_block"),
            "curve": [[r["round"], r[metric]] for r in rows if metric in r], "folder": str(folder)}


def run_cell(cell, root, python=sys.executable, cell_workers=1):
    """Run one cell in a child process; returns its result dict (with "error" when it failed).

    `cell_workers` is the cell's own `parallel.workers` (the sweep's cells already share the cores), unless the
    cell's overrides set it.
    """
    cell_root = Path(root) / "cells" / cell.name
    shutil.rmtree(cell_root, ignore_errors=True)  # a half-finished earlier attempt starts over
    cell_root.mkdir(parents=True)
    command = [python, "-m", "fedcmd_plugin", "run", cell.config, f"parallel.workers={cell_workers}", *cell.overrides,
               f"output.root={cell_root}", "output.progress=false"]
    started = time.time()
    with open(cell_root / "log.txt", "wb") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    base = {"label": cell.label, "setting": cell.setting, "seed": cell.seed, "config": cell.config,
            "overrides": list(cell.overrides), "identity": cell.identity,
            "wall_seconds": round(time.time() - started, 1)}
    if code != 0:
        lines = (cell_root / "log.txt").read_text(errors="replace").strip().splitlines()
        return {**base, "error": f"exit status {code}: {lines[-1] if lines else 'no output'}"}
    try:
        return {**base, **read_run(cell_root)}
    except (PluginError, OSError, ValueError, KeyError) as exc:
        return {**base, "error": str(exc)}


def mean_std(values):
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results):
    """{setting: {label: {mean, std, n, per_seed, rounds, seconds_per_round}}} over the finished cells."""
    groups = {}
    for r in results:
        if "error" not in r and r.get("value") is not None:
            groups.setdefault(r["setting"], {}).setdefault(r["label"], []).append(r)
    table = {}
    for setting, methods in groups.items():
        for label, runs in methods.items():
            runs = sorted(runs, key=lambda r: r["seed"])
            mean, std = mean_std([r["value"] for r in runs])
            per_round = [r["seconds_per_round"] for r in runs if r.get("seconds_per_round") is not None]
            table.setdefault(setting, {})[label] = {
                "mean": round(mean, 2), "std": round(std, 2), "n": len(runs),
                "per_seed": {str(r["seed"]): round(r["value"], 2) for r in runs},
                "rounds": runs[0]["rounds"], "metric": runs[0]["metric"],
                "seconds_per_round": round(statistics.median(per_round), 3) if per_round else None,
                **({"personal_block": {str(r["seed"]): r["personal_block"] for r in runs}}
                   if any(r.get("personal_block") for r in runs) else {})}
    return table


def mean_curve(runs):
    """(rounds, mean, std) over seeds at the rounds every seed evaluated."""
    by_round = [dict((int(x), float(y)) for x, y in r["curve"]) for r in runs]
    common = sorted(set.intersection(*(set(c) for c in by_round))) if by_round else []
    stats = [mean_std([c[x] for c in by_round]) for x in common]
    return common, [m for m, _ in stats], [s for _, s in stats]


def markdown(table, labels):
    settings = list(table)
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for label in labels:
        cells = []
        for setting in settings:
            entry = table[setting].get(label)
            cells.append(f"{entry['mean']:.2f} ± {entry['std']:.2f} (n={entry['n']})" if entry else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results, path, labels):
    """One panel per setting, one line per method: the mean over seeds per round, shaded ± std."""
    settings = sorted({r["setting"] for r in results if "error" not in r})
    if not settings:
        return None
    with plots.panels(path, "sweep: mean over seeds (band: ± std)", len(settings)) as axes:
        for ax, setting in zip(axes, settings):
            metric = "accuracy"
            for label in labels:
                runs = [r for r in results if r["label"] == label and r["setting"] == setting and "error" not in r]
                xs, mean, std = mean_curve(runs)
                if xs:
                    metric = runs[0]["metric"]
                    ax.plot(xs, mean, label=label)
                    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                    alpha=0.15)
            ax.set_title(setting)
            ax.set_xlabel("round")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return path


def write_outputs(root, results, labels, meta):
    root = Path(root)
    table = summarise(results)
    failed = [r for r in results if "error" in r]
    # what the cells cost, including those finished by an earlier, resumed invocation
    meta = {**meta, "cell_seconds_total": round(sum(r.get("wall_seconds", 0.0) for r in results), 1)}
    files.write_json(root / "sweep.json", {"meta": meta, "table": table, "failed": failed,
                                           "cells": [r for r in results if "error" not in r]})
    files.write_csv(root / "sweep.csv", [{k: v for k, v in r.items() if k not in ("curve", "overrides")}
                                         for r in results])
    files.write_text(root / "sweep.md", markdown(table, labels))
    plot(results, root / "sweep.png", labels)
    return table


def finished(root, cell):
    """The stored result of `cell` when an earlier sweep over `root` finished it with the same config."""
    path = Path(root) / "cells" / f"{cell.name}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("identity") == cell.identity else None


def run_sweep(cells, root, workers=None, progress=True, meta=None, python=sys.executable):
    """Run the cells not finished yet over `workers` processes; returns (table, failed results)."""
    from tqdm import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or usable_cores()
    labels = list(dict.fromkeys(c.label for c in cells))
    done = {c.name: finished(root, c) for c in cells}
    results = [r for r in done.values() if r]
    todo = [c for c in cells if not done[c.name]]
    meta = {**(meta or {}), "workers": workers, "cells": len(cells), "resumed_cells": len(results),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    started = time.time()
    bar = tqdm(total=len(cells), initial=len(results), desc="sweep", unit="cell", disable=not progress,
               dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        cell_workers = max(1, usable_cores() // workers)
        futures = {pool.submit(run_cell, cell, root, python, cell_workers): cell for cell in todo}
        for future in as_completed(futures):
            cell, result = futures[future], future.result()
            if "error" in result:
                bar.write(f"cell {cell.name} failed: {result['error']}")
            else:
                result["commit"] = meta.get("commit")  # the code a cell ran on, also when resumed elsewhere
                files.write_json(root / "cells" / f"{cell.name}.json", result)
            results.append(result)
            bar.update(1)
            write_outputs(root, results, labels, {**meta, "wall_seconds": round(time.time() - started, 1)})
    bar.close()
    meta.update(wall_seconds=round(time.time() - started, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    table = write_outputs(root, results, labels, meta)
    return table, [r for r in results if "error" in r]
