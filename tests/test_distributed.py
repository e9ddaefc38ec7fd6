"""torch.distributed mode: `fedcmd-plugin run --nproc 2` (gloo, 2 processes on 127.0.0.1) ends with the same
per-client results as the standalone run of the same config and seed; and a rank that fails or hangs ends the
run on every rank within bounded time.

Selection and local training are seeded by (seed, round, client) only and uploads are aggregated in selection
order on every rank, so which rank trains which client must not change a single number.
"""
import csv
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from processes import free_port
from processes import run as run_process

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per run (two processes on a shared 2-core machine)

# 4 clients, 3 per round: the ranks train 2 and 1 clients, so the shards differ in size.
COMMON = ["data.num_of_clients=4", "server.clients_per_round=3", "server.rounds=3", "server.test_every=1",
          "client.local_epoch=2", "output.progress=false", "output.tensorboard=false", "output.save_fig=false",
          "num_threads=1"]  # one torch thread per process in both modes (no oversubscribed cores)
CASES = {
    # BatchNorm: its 0-dim num_batches_tracked counters cross the ranks too.
    "fedavg": ("fedavg_digits.yaml", ["model=lenet5_bn"]),
    # One voting round, then two decoupled rounds (personal layer, per-client similarity-weighted aggregates).
    "fedcmd": ("fedcmd_digits.yaml", ["fedcmd.selection_rounds=1"]),
    "fedfomo": ("fedfomo_digits.yaml", []),  # the latest models and affinity matrix on every rank
    "fedap": ("fedap_digits.yaml", ["fedap.pretrain_rounds=1"]),  # statistics gathered, local BatchNorm synced
    "fedprox": ("fedprox_digits.yaml", ["fedprox.mu=0.1"]),
    # Personal models in kept state, trained on one rank and synced to the other.
    "ditto": ("ditto_digits.yaml", []),
}


def run(config, overrides, folder, nproc):
    command = [sys.executable, "-m", "fedcmd_plugin", "run", str(REPO / "configs" / config), *overrides,
               f"output.root={folder / 'runs'}", f"data.root={folder.parent / 'data'}"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    folder.mkdir(parents=True, exist_ok=True)
    result = run_process(command, TIMEOUT, cwd=folder)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    (run_folder,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
    assert json.loads((run_folder / "status.json").read_text())["state"] == "complete"
    return run_folder


def final_rows(run_folder):
    with open(run_folder / "clients.csv") as handle:
        rows = list(csv.DictReader(handle))
    last = max(int(r["round"]) for r in rows)
    return {r["cid"]: r for r in rows if int(r["round"]) == last}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_two_process_run_matches_standalone(algorithm, tmp_path):
    import fedcmd_plugin

    if algorithm not in fedcmd_plugin.algorithms():
        pytest.skip(f"algorithm {algorithm!r} is not registered in this version")
    config, extra = CASES[algorithm]
    overrides = [*COMMON, *extra]
    standalone = run(config, overrides, tmp_path / "standalone", 1)
    distributed = run(config, overrides, tmp_path / "distributed", 2)

    mine, theirs = final_rows(distributed), final_rows(standalone)
    assert sorted(mine) == sorted(theirs) == ["c000", "c001", "c002", "c003"]
    for cid in theirs:
        assert int(mine[cid]["test_total"]) == int(theirs[cid]["test_total"])
        assert float(mine[cid]["test_accuracy"]) == pytest.approx(float(theirs[cid]["test_accuracy"]), abs=1e-6), cid
        assert float(mine[cid]["test_loss"]) == pytest.approx(float(theirs[cid]["test_loss"]), rel=1e-4), cid
    rounds = json.loads((distributed / "metrics.json").read_text())
    assert [r["clients"] for r in rounds] == [3, 3, 3]  # every rank's uploads reached the aggregation
    if algorithm == "fedcmd":
        chosen = [json.loads((f / "summary.json").read_text()).get("personal_block") for f in (standalone, distributed)]
        assert chosen[0] is not None and chosen[0] == chosen[1]


def test_the_process_group_gets_the_configured_deadline(small_digits_config, monkeypatch):
    """The rendezvous and every collective give up after distributed.timeout_seconds; nccl's watchdog acts on it
    only with asynchronous error handling, which is switched on unless the environment chose otherwise."""
    import easyfl
    import easyfl.coordinator
    import torch.distributed as dist

    from fedcmd_plugin.federation import distributed, workers
    from fedcmd_plugin.registry import register

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    distributed.init_process_group("gloo", "env://", 2, 1, 7)
    assert calls[-1] == (("gloo",), {"init_method": "env://", "world_size": 2, "rank": 1,
                                     "timeout": timedelta(seconds=7)})
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ
    distributed.init_process_group("nccl", "env://", 2, 0, 7)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    distributed.init_process_group("nccl", "env://", 2, 0, 7)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"

    # easyfl.run() joins the group through the plugin, with the config's deadline, before the rounds start
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    register("fedavg")
    easyfl.init(small_digits_config(distributed__timeout_seconds=2.5), init_all=False)
    coordinator = easyfl.coordinator.get_coordinator()
    joined = []
    coordinator.server = SimpleNamespace(start=lambda model, clients: joined.append(calls[-1]))
    coordinator.model, coordinator.clients = None, []
    monkeypatch.setattr(workers, "local_fleet", lambda *args: SimpleNamespace())
    easyfl.run()
    assert joined == [(("gloo",), {"init_method": "env://", "world_size": 2, "rank": 0,
                                   "timeout": timedelta(seconds=2.5)})]


# ------------------------------------------------------------------------------------------ failing ranks
# Runs as the launcher and as each rank: rank 1 misbehaves as FEDCMD_TEST_FAULT says when its second round begins.
FAULTY_RANK = """
import os, signal, sys, time

from fedcmd_plugin import launcher
from fedcmd_plugin.federation.client import FederatedClient

launcher.RANK_COMMAND = (sys.executable, __file__)  # the ranks this script launches run it too
original = FederatedClient.run_round


def run_round(self, dispatch):
    if os.environ.get("RANK") == "1" and dispatch.settings.round >= 1:
        fault = os.environ["FEDCMD_TEST_FAULT"]
        if fault == "raise":
            raise RuntimeError("injected failure in round 2")
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)  # "hang": alive, but never reaches the round's collective
    return original(self, dispatch)


FederatedClient.run_round = run_round
from fedcmd_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""
FAULT_RUN = [*COMMON, "server.rounds=4", "client.local_epoch=1"]


def faulty(tmp_path, fault, timeout_seconds=600):
    """(the script, its arguments for `run`, its environment) of a run whose rank 1 misbehaves."""
    script = tmp_path / "faulty_rank.py"
    script.write_text(FAULTY_RANK)
    arguments = ["run", REPO / "configs" / "fedavg_digits.yaml", *FAULT_RUN, f"output.root={tmp_path / 'runs'}",
                 f"data.root={tmp_path / 'data'}", f"distributed.timeout_seconds={timeout_seconds}"]
    return script, arguments, {"FEDCMD_TEST_FAULT": fault}


def processes_running(script):
    """Live processes (not zombies) that run `script`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if str(script).encode() in (entry / "cmdline").read_bytes() and \
                    (entry / "stat").read_text().rpartition(") ")[2][:1] != "Z":
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def never_complete(tmp_path):
    for folder in (tmp_path / "runs").iterdir():
        assert json.loads((folder / "status.json").read_text())["state"] != "complete", folder


@pytest.mark.slow
@pytest.mark.parametrize("fault,expected", [
    ("raise", "rank 1 exited with status 1: RuntimeError: injected failure in round 2"),
    ("kill", "rank 1 was killed by SIGKILL"),
])
def test_the_launcher_ends_the_run_when_a_rank_fails(tmp_path, processes, fault, expected):
    script, arguments, env = faulty(tmp_path, fault)
    processes.env.update(env, TMPDIR=str(tmp_path))  # the rank logs the failed run keeps
    launcher = processes.start("launcher", [*arguments, "--nproc", "2"], script=script)
    launcher.wait(timeout=TIMEOUT)
    log = processes.log("launcher")
    assert launcher.returncode == 2, log
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {expected} (every rank's log: "), log
    assert "Traceback" not in log
    assert processes_running(script) == []  # the launcher stopped rank 0 itself
    never_complete(tmp_path)


@pytest.mark.slow
def test_a_hung_rank_fails_the_others_at_the_collective_deadline(tmp_path, processes):
    """Without a launcher (as under torchrun or across machines): rank 1 hangs in round 2, and rank 0 gives up
    waiting for it after distributed.timeout_seconds, with its run folder marked failed."""
    script, arguments, env = faulty(tmp_path, "hang", timeout_seconds=5)
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    processes.env.update(env, **master)
    ranks = []
    for rank in (0, 1):
        processes.env.update(RANK=str(rank), LOCAL_RANK=str(rank))
        ranks.append(processes.start(f"rank{rank}", arguments, script=script))
    ranks[0].wait(timeout=TIMEOUT)
    log = processes.log("rank0")
    assert ranks[0].returncode != 0 and "Timed out waiting 5000ms" in log, log  # the configured deadline
    assert ranks[1].poll() is None  # still hanging: whoever started it stops it (the launcher, torchrun, here the test)
    (folder,) = (tmp_path / "runs").iterdir()
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "failed" and "Timed out" in status["error"]
