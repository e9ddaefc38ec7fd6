"""`python -m fedcmd_plugin`: a complete run folder from a YAML file plus overrides, and one-line errors."""
import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import CONFIGS

FAST = ["server.rounds=2", "server.test_every=1", "data.num_of_clients=8", "server.clients_per_round=4",
        "client.local_epoch=1", "output.name=cli", "num_threads=1"]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.slow
def test_run_with_overrides_writes_a_complete_run_folder(run_cli, tmp_run_dir):
    result = run_cli("run", CONFIGS / "fedavg_digits.yaml", *FAST, "seed=3", *tmp_run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = tmp_run_dir.run_folders()
    assert folder.name.startswith("cli-")
    assert str(folder) in result.stdout  # the run folder is announced

    expected = {"config.yaml", "partition.csv", "metrics.csv", "metrics.json", "clients.csv", "status.json",
                "summary.json", "tensorboard", "checkpoints", "plots"}
    assert expected <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "status.json").read_text())["state"] == "complete"

    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["server"]["rounds"] == 2 and saved["seed"] == 3 and saved["data"]["num_of_clients"] == 8
    assert saved["algorithm"] == "fedavg" and saved["client"]["optimizer"]["lr"] == 0.05  # from the YAML chain

    with open(folder / "partition.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [1, 2] and all(m["clients"] == 4 for m in metrics)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final"]["evaluated_clients"] == 8 and 0 <= summary["final"]["accuracy"] <= 100
    assert (folder / "checkpoints" / "global.pt").stat().st_size > 0
    assert (folder / "plots" / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert any((folder / "tensorboard").iterdir())


def test_unknown_config_key(run_cli, tmp_run_dir):
    result = run_cli("run", CONFIGS / "fedavg_digits.yaml", "server.roundz=3", *tmp_run_dir)
    assert_one_line_error(result, "'server.roundz'", "server.rounds")
    assert tmp_run_dir.run_folders() == []


def test_wrong_typed_value(run_cli, tmp_run_dir):
    result = run_cli("run", CONFIGS / "fedavg_digits.yaml", "client.batch_size=many", *tmp_run_dir)
    assert_one_line_error(result, "'client.batch_size'", "integer")


def test_unknown_algorithm(cli_here, tmp_run_dir):
    result = cli_here("run", CONFIGS / "fedavg_digits.yaml", "algorithm=fedmagic", *tmp_run_dir)
    assert_one_line_error(result, "fedmagic", "fedavg")  # names the bad one and lists the known ones
    assert tmp_run_dir.run_folders() == []


def test_missing_dataset_path(cli_here, tmp_run_dir):
    result = cli_here("run", CONFIGS / "fedavg_digits.yaml", "data.dataset=fmnist", "data.path=/nonexistent/fmnist",
                     *tmp_run_dir)
    assert_one_line_error(result, "/nonexistent/fmnist", "dataset-fashion-mnist")
    # no run folder passed off as a result
    for folder in tmp_run_dir.run_folders():
        assert json.loads((folder / "status.json").read_text())["state"] != "complete"


def test_missing_config_file_and_yaml_error(run_cli, tmp_run_dir):
    assert_one_line_error(run_cli("run", "absent.yaml"), "absent.yaml")
    broken = tmp_run_dir.path / "broken.yaml"
    broken.write_text("server:\n  rounds: [2\n")
    assert_one_line_error(run_cli("run", broken), "broken.yaml", "line")


def test_help_lists_the_commands(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "show-config", "list"):
        assert command in result.stdout
    run_help = run_cli("run", "--help")
    assert run_help.returncode == 0 and "key.sub=value" in run_help.stdout


def test_show_config_applies_overrides(run_cli):
    result = run_cli("show-config", CONFIGS / "fedavg_digits.yaml", "seed=11", "data.alpha=0.25")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["seed"] == 11 and shown["data"]["alpha"] == 0.25 and shown["algorithm"] == "fedavg"


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_bad_command_line_is_a_usage_error(run_cli, args):
    result = run_cli(*args)
    assert result.returncode == 2 and "usage" in result.stderr


def test_overrides_may_follow_options():
    from fedcmd_plugin.cli import parse_arguments

    args = parse_arguments(["run", "a.yaml", "--nproc", "2", "server.rounds=6", "b.yaml"])
    assert args.nproc == 2 and args.items == ["a.yaml", "server.rounds=6", "b.yaml"]
    with pytest.raises(SystemExit):
        parse_arguments(["run", "a.yaml", "--nproc", "2", "--frobnicate"])
    with pytest.raises(SystemExit):
        parse_arguments(["list", "server.rounds=6"])  # a command without configs takes no overrides


def test_run_applies_an_override_given_after_the_process_option(tmp_run_dir):
    from fedcmd_plugin.cli import main

    assert main(["run", str(CONFIGS / "fedavg_digits.yaml"), "--nproc", "1", "server.rounds=1", *FAST[2:],
                 "output.progress=false", *tmp_run_dir]) == 0
    (folder,) = tmp_run_dir.run_folders()
    assert [m["round"] for m in json.loads((folder / "metrics.json").read_text())] == [1]


def assert_one_line_error_in_process(capsys, argv, *fragments):
    """`main(argv)` in this process ends as `assert_one_line_error` expects."""
    from fedcmd_plugin.cli import main

    code = main([str(item) for item in argv])
    captured = capsys.readouterr()
    assert_one_line_error(SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err), *fragments)


def test_a_config_path_that_is_a_directory_or_not_utf8(tmp_run_dir, capsys):
    assert_one_line_error_in_process(capsys, ["run", CONFIGS], str(CONFIGS), "is a directory")
    latin1 = tmp_run_dir.path / "latin1.yaml"
    latin1.write_bytes("extends: fedavg_digits.yaml\noutput:\n  name: r\xe9sum\xe9\n".encode("latin-1"))
    assert_one_line_error_in_process(capsys, ["run", latin1], "latin1.yaml", "not UTF-8")


def read_only_root(tmp_path):
    """(a folder this process cannot write below, what the error says): a read-only mode, or (as root, whom
    modes do not stop) a path inside sysfs, which refuses new folders."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder, "not writable"
    return Path("/sys/fedcmd-plugin-test-runs"), "cannot be created"


def test_an_output_root_that_is_a_file_or_read_only(tmp_run_dir, capsys):
    afile = tmp_run_dir.path / "taken"
    afile.write_text("not a folder")
    for root, expected in ((afile, "not a directory"), (afile / "below", "cannot be created"),
                           read_only_root(tmp_run_dir.path)):
        assert_one_line_error_in_process(capsys, ["run", CONFIGS / "fedavg_digits.yaml", f"output.root={root}",
                                                  f"data.root={tmp_run_dir.data_root}"], "'output.root'", str(root),
                                         expected)
