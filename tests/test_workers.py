"""Standalone training in worker processes: scheduling by hand, state that follows a client from worker to
worker, a worker that dies, and real runs identical to the sequential loop."""
import os
import signal
from dataclasses import dataclass

import pytest
import torch

from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.federation.messages import Report, Upload
from fedcmd_plugin.federation.workers import ProcessFleet, balance

from conftest import CONFIGS, make_dispatch


def test_balance_puts_the_longest_clients_first_on_the_least_loaded_worker():
    sizes = {"a": 50, "b": 40, "c": 30, "d": 20, "e": 10}
    # a -> 0 (50, 0); b -> 1 (50, 40); c -> 1 (50, 70); d -> 0 (70, 70); e: a tie -> the lower index 0
    assert balance(sizes, {}, 2) == [["a", "d", "e"], ["b", "c"]]
    # equal loads: the worker holding the client's state wins the tie
    assert balance({"x": 5, "y": 5}, {"x": 1}, 2) == [["y"], ["x"]]
    assert balance({"x": 5}, {}, 3) == [["x"], [], []]


@dataclass(frozen=True)
class WorkerReport(Report):
    pid: int  # the process that trained the client


class CountingClient:
    """A stand-in client whose whole state is `kept`: a counter of the rounds it trained and where."""
    settings_type = None  # no algorithm settings
    report_type = WorkerReport

    class Data:
        def size(self, cid):
            return {"a": 3, "b": 2, "c": 1}[cid]

    def __init__(self, cid):
        self.cid, self.kept, self.train_data = cid, {}, self.Data()

    def attach(self, model, initial_state, progress):
        pass

    def run_round(self, dispatch):
        count = self.kept.get("count", torch.tensor(0)) + 1
        self.kept = {"count": count}
        return Upload(self.cid, 1, {"w": dispatch.state["w"] + 1}, dict(self.kept), algorithm=WorkerReport(os.getpid()))

    def evaluate(self, dispatch, splits):
        return {"count": int(self.kept.get("count", torch.tensor(0)))}


def counting_fleet(workers=2):
    return ProcessFleet([CountingClient(c) for c in "abc"], None, {}, workers)


def test_a_clients_state_follows_it_to_whichever_worker_trains_it():
    fleet = counting_fleet()
    try:
        pids = {}
        for round_index, chosen in enumerate([["a", "b", "c"], ["c"], ["b", "c"], ["a", "c"]]):
            uploads = fleet.train({cid: make_dispatch({"w": torch.tensor(float(round_index))}) for cid in chosen})
            assert [u.cid for u in uploads] == chosen
            for upload in uploads:
                assert upload.state["w"].item() == round_index + 1
                pids.setdefault(upload.cid, set()).add(upload.algorithm.pid)
        counts = {cid: int(fleet.kept(cid)["count"]) for cid in "abc"}
        assert counts == {"a": 2, "b": 2, "c": 4}  # no round lost, whatever worker trained it
        assert len(set().union(*pids.values())) == 2 and len(pids["c"]) == 2  # c moved between the workers
        evaluated = fleet.evaluate({cid: make_dispatch({"w": torch.tensor(0.0)}) for cid in "abc"}, ("test",))
        assert {r["cid"]: r["count"] for r in evaluated} == counts
        fleet.set_kept("a", {"count": torch.tensor(10)})  # e.g. state restored from elsewhere reaches the worker
        fleet.train({"a": make_dispatch({"w": torch.tensor(0.0)})})
        assert int(fleet.kept("a")["count"]) == 11
    finally:
        fleet.close()
    assert all(not p.is_alive() for p in fleet.processes) and not fleet.processes


def test_a_dead_worker_is_an_error_not_a_hang():
    fleet = counting_fleet()
    try:
        os.kill(fleet.processes[0].pid, signal.SIGKILL)
        fleet.processes[0].join(timeout=10)
        with pytest.raises(RuntimeError, match="worker process 0 stopped unexpectedly"):
            fleet.train({cid: make_dispatch({"w": torch.tensor(0.0)}) for cid in "abc"})
    finally:
        fleet.close()


SHORT = ["server.rounds=4", "server.test_every=2", "client.local_epoch=1", "output.progress=false",
         "output.tensorboard=false", "fedcmd.selection_rounds=2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fedper", "fedcmd", "fedavg", "apfl"])
def test_two_workers_give_exactly_the_sequential_results(tmp_run_dir, name):
    from fedcmd_plugin import load_config

    folders = []
    for workers in (1, 2):
        conf = load_config(CONFIGS / f"{name}_digits.yaml", [*SHORT, f"parallel.workers={workers}", *tmp_run_dir,
                                                              f"output.name=w{workers}"])
        folders.append(run_experiment(conf)["folder"])
    sequential, parallel = ((f / "clients.csv").read_text() for f in folders)
    assert sequential == parallel and len(sequential.splitlines()) > 20
    name = "global.pt" if name == "fedavg" else "clients.pt"
    saved = [torch.load(f / "checkpoints" / name) for f in folders]
    flat = [{(cid, key): t for cid, state in s.items() for key, t in (state.items() if isinstance(state, dict)
                                                                      else [("", state)])} for s in saved]
    assert flat[0].keys() == flat[1].keys()
    assert all(torch.equal(flat[0][k], flat[1][k]) for k in flat[0])
