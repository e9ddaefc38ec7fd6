"""Checkpoints and resume: a run killed with SIGKILL at a seeded-random round and resumed from its run folder ends
with the same per-client results as the run that was never interrupted; SIGTERM stops a run cleanly (status
`stopped`); a checkpoint of another config, version or format is refused; a checkpoint is replaced atomically.

Every process a test starts runs in its own session and is killed with its whole group in a `finally`.
"""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fedcmd_plugin import load_config
from fedcmd_plugin.cli import main, run_experiment
from fedcmd_plugin.federation import checkpoint
from fedcmd_plugin.federation.fleet import LocalFleet
from fedcmd_plugin.tracking import files

from conftest import CONFIGS, cli_env

KILL_SEED = 11  # the rounds the processes are killed after are drawn from this seed
DEADLINE = 600  # seconds for any wait on a process (subprocesses import torch on a loaded machine)
TINY = ["server.test_every=1", "client.local_epoch=1", "output.progress=false", "output.tensorboard=false",
        "output.save_fig=false", "num_threads=1"]
DIGITS = ["data.num_of_clients=4", "server.clients_per_round=3", *TINY]
CASES = {  # config, overrides, rounds
    "fedavg": ("fedavg_digits.yaml", ["model=lenet5_bn", *DIGITS], 8),
    # two voting rounds, then the decoupled phase with the similarity memory and every client's latest layers
    "fedcmd": ("fedcmd_digits.yaml", ["fedcmd.selection_rounds=2", *DIGITS], 8),
    # 4 small edges: memories and pseudo labels on the edges, EMA models on the server
    "fedureid": ("fedureid_synthetic.yaml", ["fedureid.synthetic.identities=8", "fedureid.synthetic.test_identities=4",
                                             "fedureid.synthetic.cameras=2", "fedureid.synthetic.images_per_camera=2",
                                             "client.local_epoch=2", *TINY], 6),
}


# ----- reading run folders --------------------------------------------------------------------------------------------
def run_folder(root):
    folders = [p for p in Path(root).iterdir() if p.is_dir()] if Path(root).is_dir() else []
    assert len(folders) <= 1, folders
    return folders[0] if folders else None


def status(folder):
    return json.loads((folder / "status.json").read_text())


def clients_rows(folder):
    with open(folder / "clients.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def last_round(rows):
    last = max(int(r["round"]) for r in rows)
    return {r["cid"]: r for r in rows if int(r["round"]) == last}


def metrics_without_times(folder):
    rows = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


def assert_same_results(resumed, uninterrupted):
    """The same per-client results in the last round, the same rows in every round, the same final summary."""
    assert status(resumed)["state"] == "complete"
    assert last_round(clients_rows(resumed)) == last_round(clients_rows(uninterrupted))
    assert clients_rows(resumed) == clients_rows(uninterrupted)
    assert metrics_without_times(resumed) == metrics_without_times(uninterrupted)
    mine, theirs = (json.loads((f / "summary.json").read_text()) for f in (resumed, uninterrupted))
    assert mine["final"] == theirs["final"] and mine["rounds_run"] == theirs["rounds_run"] == theirs["rounds"]


def checkpoint_round(folder):
    """The round of the folder's checkpoint, or 0 while it has none."""
    path = folder / checkpoint.FILE if folder else None
    if path is None or not path.is_file():
        return 0
    return torch.load(path, weights_only=True)["round"]


def wait_for_checkpoint(root, at_least, alive):
    """The run folder below `root` once its checkpoint holds `at_least` rounds; fails if the run ends first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        folder = run_folder(root)
        if checkpoint_round(folder) >= at_least:
            return folder
        if not alive():
            pytest.fail(f"the run ended before its checkpoint of round {at_least}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of round {at_least} within {DEADLINE} s")


def kill_group(pid, number=signal.SIGKILL):
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass


# ----- in-process runs and forked ones --------------------------------------------------------------------------------
ROUNDS = 4
DIGITS_RUN = [*DIGITS, f"server.rounds={ROUNDS}", "parallel.workers=1"]  # FedAvg on 4 digits clients
PAUSE = 0.3  # seconds a forked run waits in each round between training and aggregation: time to kill it there


def digits_config(root, *extra):
    return load_config(CONFIGS / "fedavg_digits.yaml",
                       [*DIGITS_RUN, f"output.root={root}", f"data.root={root.parent / 'data'}", *extra])


def forked(conf):
    """A child process (its own session, forked from this one, so nothing is imported again) running `conf`, whose
    rounds pause for PAUSE seconds after the clients trained and before the server aggregates."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            train = LocalFleet.train

            def train_then_pause(self, dispatches):
                uploads = train(self, dispatches)
                time.sleep(PAUSE)
                return uploads

            LocalFleet.train = train_then_pause
            run_experiment(conf)
            code = 0
        finally:
            os._exit(code)
    return pid


def alive(pid):
    return os.waitpid(pid, os.WNOHANG) == (0, 0)


def reap(pid):
    """Kill the child's process group (whatever happened) and collect its exit status."""
    kill_group(pid)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The small FedAvg run on digits, never interrupted."""
    root = tmp_path_factory.mktemp("uninterrupted") / "runs"
    return run_experiment(digits_config(root))["folder"]


def resume_override(folder):
    return f"resume={json.dumps(str(folder))}"


def test_a_run_killed_with_sigkill_resumes_to_the_same_results(uninterrupted, tmp_path):
    target = random.Random(KILL_SEED).randint(1, ROUNDS - 2)
    root = tmp_path / "runs"
    pid = forked(digits_config(root, "server.checkpoint_every=1"))
    try:
        folder = wait_for_checkpoint(root, target, lambda: alive(pid))
        kill_group(pid)
    finally:
        reap(pid)
    assert status(folder)["state"] == "running"  # what a killed run leaves: it never said complete
    assert target <= checkpoint_round(folder) < ROUNDS
    run_experiment(digits_config(root, "server.checkpoint_every=1", resume_override(folder)))
    assert_same_results(folder, uninterrupted)
    assert run_folder(root) == folder  # the same folder, nothing new


@pytest.mark.slow
def test_sigterm_stops_after_the_round_then_resume_completes(uninterrupted, tmp_path):
    root = tmp_path / "runs"
    pid = forked(digits_config(root, "server.checkpoint_every=0"))
    try:
        folder = None
        deadline = time.monotonic() + DEADLINE
        while not (folder and (folder / "metrics.json").is_file()):  # the first round is recorded
            assert alive(pid) and time.monotonic() < deadline, "the run ended before its first round was recorded"
            folder = run_folder(root)
            time.sleep(0.05)
        os.kill(pid, signal.SIGTERM)
        _, code = os.waitpid(pid, 0)
    finally:
        reap(pid)
    assert os.WIFEXITED(code) and os.WEXITSTATUS(code) == 0, code  # it ended on its own, cleanly
    stopped = status(folder)
    assert stopped["state"] == "stopped" and stopped["reason"] == "SIGTERM" and stopped["rounds"] == ROUNDS
    assert 1 <= stopped["round"] < ROUNDS
    assert stopped["checkpoint_round"] == stopped["round"] == checkpoint_round(folder)
    assert json.loads((folder / "summary.json").read_text())["rounds_run"] == stopped["round"]
    run_experiment(digits_config(root, "output.save_fig=true", resume_override(folder)))  # output keys may change
    assert_same_results(folder, uninterrupted)


# ----- what is refused ---------------------------------------------------------------------------------------------
@pytest.fixture
def resumable(tmp_path):
    """A run folder as a killed run leaves it (status running) with a checkpoint of round 3, and its config."""
    conf = digits_config(tmp_path / "runs")
    folder = tmp_path / "runs" / "fedavg-digits-1"
    files.write_json(folder / "status.json", {"state": "running"})
    checkpoint.write(folder, conf, 3, {"weights": torch.zeros(2), "fleet": {"mode": "local"}})
    return folder, conf


def refusal(folder, conf):
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.read(folder, conf)
    message = str(caught.value)
    assert message.startswith(f"cannot resume {folder}: ") and "\n" not in message
    return message


def test_a_checkpoint_of_another_config_is_refused_in_one_line_before_the_run(resumable, capsys):
    folder, _ = resumable
    code = main(["run", str(CONFIGS / "fedavg_digits.yaml"), *DIGITS_RUN, f"output.root={folder.parent}",
                 f"data.root={folder.parent.parent / 'data'}", "seed=1", "client.optimizer.lr=0.1",
                 "server.checkpoint_every=1", "--resume", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    assert err[0].startswith(f"error: cannot resume {folder}: its checkpoint belongs to another config: ")
    assert "seed 0 -> 1" in err[0] and "client.optimizer.lr 0.05 -> 0.1" in err[0]
    assert "checkpoint_every" not in err[0].partition("(only")[0]  # a key a resume may change
    assert not (folder.parent.parent / "data").exists()  # refused before any data was loaded


def test_another_version_or_format_is_refused(resumable, monkeypatch):
    folder, conf = resumable
    assert checkpoint.read(folder, conf)["round"] == 3
    monkeypatch.setattr(checkpoint, "version", lambda: "9.9.9")
    assert "written by fedcmd_plugin 0.1.0, this is 9.9.9" in refusal(folder, conf)
    written = checkpoint.FORMAT
    monkeypatch.setattr(checkpoint, "FORMAT", written + 1)
    assert f"checkpoint format {written}; this version reads format {written + 1}" in refusal(folder, conf)


def test_a_checkpoint_is_resumed_only_in_the_mode_that_keeps_its_clients_state(resumable):
    """A remote run's checkpoint has no client state (the client services keep it), a local run's has it all."""
    folder, conf = resumable
    remote = OmegaConf.merge(conf, {"is_remote": True})
    assert "resume it with `fedcmd-plugin run CONFIG --resume" in refusal(folder, remote)
    checkpoint.write(folder, conf, 3, {"fleet": {"mode": "remote", "run_id": "0123456789ab", "clients": ["c000"]}})
    assert checkpoint.read(folder, remote)["fleet"]["run_id"] == "0123456789ab"
    assert "resume it with `fedcmd-plugin remote server CONFIG --resume" in refusal(folder, conf)


def test_folders_that_cannot_be_resumed(resumable):
    folder, conf = resumable
    (folder / checkpoint.FILE).write_bytes((folder / checkpoint.FILE).read_bytes()[:1000])
    assert "is not a readable checkpoint" in refusal(folder, conf)
    (folder / checkpoint.FILE).unlink()
    assert "has no checkpoint.pt" in refusal(folder, conf)
    files.write_json(folder / "status.json", {"state": "complete"})
    assert "the run is complete" in refusal(folder, conf)
    (folder / "status.json").unlink()
    assert "not a run folder" in refusal(folder, conf)


# ----- atomic replacement ------------------------------------------------------------------------------------------
def write_round(folder, conf, done, size=1):
    checkpoint.write(folder, conf, done, {"weights": torch.full((size,), float(done)), "fleet": {"mode": "local"}})


def test_a_failed_write_never_replaces_the_previous_checkpoint(tmp_path, monkeypatch):
    conf = digits_config(tmp_path / "runs")
    write_round(tmp_path, conf, 1)
    before = (tmp_path / checkpoint.FILE).read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_round(tmp_path, conf, 2)
    assert (tmp_path / checkpoint.FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILE]  # no temporary file left behind


WRITTEN = 1024 * 1024  # floats in each checkpoint of the writer that is killed


def test_sigkill_during_writes_leaves_a_whole_checkpoint(tmp_path):
    """A process rewriting a 4 MB checkpoint in a loop is killed at a seeded-random moment: the file is always
    one whole checkpoint, and the next write clears the killed writer's temporary file."""
    conf = digits_config(tmp_path / "runs")
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            for done in range(1, 10 ** 6):
                write_round(tmp_path, conf, done, size=WRITTEN)
        finally:
            os._exit(1)
    try:
        deadline = time.monotonic() + DEADLINE
        while not (tmp_path / checkpoint.FILE).is_file() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.Random(KILL_SEED).uniform(0.2, 0.6))
        kill_group(pid)
    finally:
        reap(pid)
    saved = torch.load(tmp_path / checkpoint.FILE, weights_only=True)
    assert saved["round"] >= 1 and torch.equal(saved["weights"], torch.full((WRITTEN,), float(saved["round"])))
    write_round(tmp_path, conf, saved["round"] + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILE]


# ----- what goes into a checkpoint ------------------------------------------------------------------------------------
def test_only_tensors_and_plain_values_are_checkpointed():
    view = torch.arange(4)[1:3]
    value = checkpoint.plain({"a": [np.int64(3), (1.5, None)], "t": view}, "state")
    assert value["a"] == [3, [1.5, None]] and type(value["a"][0]) is int
    assert torch.equal(value["t"], view) and value["t"].untyped_storage().nbytes() == view.nbytes  # not all 4
    with pytest.raises(checkpoint.CheckpointError, match=r"algorithm\['fedx'\]\['h'\] is a ndarray"):
        checkpoint.plain({"fedx": {"h": np.zeros(3)}}, "algorithm")
    with pytest.raises(checkpoint.CheckpointError, match="keys that are not strings"):
        checkpoint.plain({1: 2}, "algorithm")


def test_the_global_generators_continue_where_they_were():
    saved = checkpoint.plain(checkpoint.generator_states(), "generators")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    checkpoint.restore_generators(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1]) and again[2] == expected[2]


# ----- real processes: the CLI, every algorithm, distributed mode --------------------------------------------------
def cli(case, folder, *extra, nproc=1):
    config, overrides, rounds = CASES[case]
    command = [sys.executable, "-m", "fedcmd_plugin", "run", str(CONFIGS / config), *overrides,
               f"server.rounds={rounds}", f"output.root={folder / 'runs'}", f"data.root={folder.parent / 'data'}",
               *extra]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    folder.mkdir(parents=True, exist_ok=True)
    return command


def start(command, cwd, **pipes):
    return subprocess.Popen(command, cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL, start_new_session=True,
                            **pipes)


def run_to_end(command, cwd):
    process = start(command, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=DEADLINE)
    finally:
        kill_group(process.pid)  # the --nproc launcher's ranks too, whatever happened
        process.wait()
    assert process.returncode == 0, f"{' '.join(command)}:\n{out[-3000:]}\n{err[-3000:]}"


def kill_and_resume(case, tmp_path, nproc, target, *extra):
    """(resumed folder, uninterrupted folder) of `case`: the first killed with SIGKILL (every process of it) once its
    checkpoint holds `target` rounds, then resumed with the CLI's --resume."""
    uninterrupted = tmp_path / "uninterrupted"
    run_to_end(cli(case, uninterrupted, *extra, nproc=nproc), uninterrupted)
    killed = tmp_path / "killed"
    command = cli(case, killed, "server.checkpoint_every=1", *extra, nproc=nproc)
    process = start(command, killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        folder = wait_for_checkpoint(killed / "runs", target, lambda: process.poll() is None)
    finally:
        kill_group(process.pid)
        process.wait()
    assert status(folder)["state"] == "running" and checkpoint_round(folder) < CASES[case][2]
    run_to_end([*command, "--resume", str(folder)], killed)
    return folder, run_folder(uninterrupted / "runs")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fedavg", "fedcmd", "fedureid"])
def test_cli_run_killed_and_resumed_matches_the_uninterrupted_run(case, tmp_path):
    """Worker processes hold the clients' state (parallel.workers=2); the checkpoint takes the server's copy."""
    target = random.Random(f"{KILL_SEED}/{case}").randint(1, CASES[case][2] - 3)
    resumed, uninterrupted = kill_and_resume(case, tmp_path, 1, target, "parallel.workers=2")
    assert_same_results(resumed, uninterrupted)
    if case == "fedcmd":
        chosen = [json.loads((f / "summary.json").read_text())["personal_block"] for f in (resumed, uninterrupted)]
        assert chosen[0] == chosen[1] is not None


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fedavg", "fedcmd", "fedureid"])
def test_distributed_run_killed_and_resumed_matches_the_uninterrupted_run(case, tmp_path):
    """--nproc 2: every rank restores every client from the checkpoint rank 0 wrote."""
    target = random.Random(f"{KILL_SEED}/{case}/distributed").randint(1, CASES[case][2] - 3)
    resumed, uninterrupted = kill_and_resume(case, tmp_path, 2, target)
    assert_same_results(resumed, uninterrupted)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_after_the_same_round(tmp_path):
    """The --nproc launcher forwards SIGTERM: every rank stops before the same round, rank 0 checkpoints it, the
    launcher exits with 143; `--resume` then completes the run."""
    folder = tmp_path / "run"
    command = cli("fedavg", folder, "server.checkpoint_every=0", nproc=2)
    process = start(command, folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + DEADLINE
        while not (run_folder(folder / "runs") and (run_folder(folder / "runs") / "metrics.json").is_file()):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first round"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # the launcher only
        _, err = process.communicate(timeout=DEADLINE)
    finally:
        kill_group(process.pid)
        process.wait()
    run = run_folder(folder / "runs")
    stopped = status(run)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert stopped["state"] == "stopped" and stopped["checkpoint_round"] == stopped["round"] < CASES["fedavg"][2]
    assert f"--resume {run}" in err
    run_to_end([*command, "--resume", str(run)], folder)
    assert status(run)["state"] == "complete"
    rounds = CASES["fedavg"][2]
    assert [m["round"] for m in json.loads((run / "metrics.json").read_text())] == list(range(1, rounds + 1))


# ----- algorithms with state beyond the model ----------------------------------------------------------------------
STATEFUL = {  # overrides; what the checkpoint must carry for a resume to continue exactly
    "feddyn": ["algorithm=feddyn"],  # the server's h, every client's linear term
    "ditto": ["algorithm=ditto"],  # every client's personal model
    "apfl": ["algorithm=apfl"],  # every client's personal model and its adapted alpha
    "fedfomo": ["algorithm=fedfomo"],  # every client's latest model and the affinity matrix
    "fedap": ["algorithm=fedap", "model=lenet5_bn", "fedap.pretrain_rounds=1"],  # statistics and aggregates
}
STOP_AFTER = 2  # rounds the interrupted run does before it is stopped and checkpointed


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(STATEFUL))
def test_algorithms_with_state_resume_to_the_uninterrupted_results(algorithm, tmp_path, monkeypatch):
    """Stopped after round 2 (the checkpoint written on stop), then resumed: the same per-client results as the
    run that was never stopped, which needs the server's and the clients' state beyond the model."""
    from fedcmd_plugin.federation.server import FederatedServer

    extra = STATEFUL[algorithm]
    uninterrupted = run_experiment(digits_config(tmp_path / "whole", *extra))["folder"]
    asked = FederatedServer.should_stop
    with monkeypatch.context() as patch:
        patch.setattr(FederatedServer, "should_stop", lambda self: self.rounds_done >= STOP_AFTER or asked(self))
        folder = run_experiment(digits_config(tmp_path / "runs", *extra))["folder"]
    assert status(folder)["state"] == "stopped" and checkpoint_round(folder) == STOP_AFTER
    run_experiment(digits_config(tmp_path / "runs", *extra, resume_override(folder)))
    assert_same_results(folder, uninterrupted)
