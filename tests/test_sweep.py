"""Sweeps: the table maths on hand-made cells, the grid, and a real sweep that resumes and survives a failed cell."""
import json
import math
import statistics

import pytest
import yaml

from fedcmd_plugin import sweep
from fedcmd_plugin.errors import PluginError

from conftest import SMALL_DIGITS, dotted


def cell(label, setting, seed, value, curve=None, **extra):
    return {"label": label, "setting": setting, "seed": seed, "metric": "accuracy", "value": value, "rounds": 5,
            "seconds_per_round": 1.0 + seed, "curve": curve or [[5, value]], **extra}


def test_table_is_mean_and_sample_std_per_method_and_setting():
    results = [cell("a", "s1", 0, 90.0), cell("a", "s1", 1, 92.0), cell("a", "s1", 2, 97.0),
               cell("a", "s2", 0, 50.0), cell("b", "s1", 0, 80.0), cell("b", "s1", 1, 10.0, error="boom")]
    table = sweep.summarise(results)
    a = table["s1"]["a"]
    assert a["mean"] == 93.0 and a["n"] == 3
    assert math.isclose(a["std"], round(math.sqrt(((90 - 93) ** 2 + (92 - 93) ** 2 + (97 - 93) ** 2) / 2), 2))
    assert a["per_seed"] == {"0": 90.0, "1": 92.0, "2": 97.0} and a["seconds_per_round"] == 2.0
    assert table["s1"]["b"] == {**table["s1"]["b"], "mean": 80.0, "std": 0.0, "n": 1}  # the failed cell is left out
    assert table["s2"]["a"]["n"] == 1
    text = sweep.markdown(table, ["a", "b"])
    assert "| a | 93.00 ± 3.61 (n=3) | 50.00 ± 0.00 (n=1) |" in text and "| b | 80.00 ± 0.00 (n=1) | - |" in text


def test_mean_curve_uses_rounds_every_seed_evaluated():
    runs = [cell("a", "s", 0, 0, curve=[[5, 10.0], [10, 20.0]]), cell("a", "s", 1, 0, curve=[[10, 30.0], [15, 1.0]])]
    assert sweep.mean_curve(runs) == ([10], [25.0], [statistics.stdev([20.0, 30.0])])


def test_grid_axes_and_fixed_overrides():
    fixed, axes = sweep.parse_grid(["data.alpha=0.1,0.5", "server.rounds=3", "personalization.personal_blocks=[a,b]"])
    assert fixed == ["server.rounds=3", "personalization.personal_blocks=[a,b]"]
    assert axes == [("data.alpha", ["0.1", "0.5"])]
    assert sweep.axis_names([("data.alpha", []), ("a.seed", []), ("b.seed", [])]) == ["alpha", "a.seed", "b.seed"]
    with pytest.raises(PluginError):
        sweep.parse_grid(["data.alpha=0.1,"])
    with pytest.raises(PluginError):
        sweep.parse_grid(["noequals"])


def write_config(path, **overrides):
    tree = {}
    for item in dotted({**SMALL_DIGITS, "server.rounds": 1, **overrides}):
        key, _, value = item.partition("=")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.slow
def test_real_sweep_reports_a_failed_cell_and_resumes_skipping_finished_cells(tmp_run_dir):
    good = write_config(tmp_run_dir.path / "fedavg_digits.yaml", **{"data.root": str(tmp_run_dir.data_root)})
    broken = write_config(tmp_run_dir.path / "broken.yaml", **{"data.dataset": "fmnist",
                                                              "data.path": str(tmp_run_dir.path / "missing")})
    methods = [(sweep.label_of(good, sweep_conf(good)), str(good), ()), ("broken", str(broken), ())]
    root = tmp_run_dir.path / "sweep"
    table, failed = sweep.run_sweep(sweep.plan(methods, [0], []), root, workers=2, progress=False)
    assert [f["label"] for f in failed] == ["broken"] and "missing" in failed[0]["error"]
    assert table["digits"]["fedavg"]["n"] == 1
    first = (root / "cells" / "fedavg__digits__seed0.json").read_text()

    table, failed = sweep.run_sweep(sweep.plan(methods, [0, 1], []), root, workers=2, progress=False)
    written = json.loads((root / "sweep.json").read_text())
    assert written["meta"]["resumed_cells"] == 1  # seed 0 of fedavg was not run again
    assert (root / "cells" / "fedavg__digits__seed0.json").read_text() == first
    assert table["digits"]["fedavg"]["n"] == 2 and set(table["digits"]["fedavg"]["per_seed"]) == {"0", "1"}
    assert len(failed) == 2 and (root / "sweep.png").is_file() and (root / "sweep.md").is_file()
    moved = tmp_run_dir.path / "elsewhere"  # the same configs in another checkout: still the same cells
    moved.mkdir()
    copy = moved / good.name
    copy.write_text(good.read_text())
    again = sweep.plan([("fedavg", str(copy), ())], [0, 1], [])
    assert all(sweep.finished(root, c) for c in again)
    changed = sweep.plan([("fedavg", str(copy), ())], [0], ["client.local_epoch=2"])
    assert sweep.finished(root, changed[0]) is None
    rows = (root / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("label,setting,seed")


def sweep_conf(path):
    from fedcmd_plugin import load_config

    return load_config(path)
