"""Resuming remote runs: the client services keep each client's own state per round (`kept_store`), the server's
checkpoint names the run and its clients, and `remote server --resume` continues a killed server's run to the
per-client results of the same run uninterrupted."""
import json
import os
import random
import signal
import sys
import time

import pytest
import torch
from processes import run
from remote_helpers import RUN, RUN_TIMEOUT, Cluster, client_rows, read_json
from pytest import approx

from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation import checkpoint
from fedcmd_plugin.federation.messages import Upload, pack
from fedcmd_plugin.remote.client import ClientService
from fedcmd_plugin.remote.kept_store import KeptStore
from fedcmd_plugin.remote.transport import Transport
from fedcmd_plugin.remote.wire import ENVELOPE_KEY, TRAIN, unwrap, wrap

from conftest import CONFIGS, make_dispatch

KILL_SEED = 5  # the round after which the server is killed is drawn from this seed


# ----- the store ---------------------------------------------------------------------------------------------------
def test_the_store_keeps_what_a_resume_or_a_restart_can_need(tmp_path):
    store = KeptStore(tmp_path)
    for rounds in (1, 2, 3, 5):
        store.save("run1", "c000", rounds, {"w": torch.full((2,), float(rounds)), "step": rounds})
    latest, kept = store.latest("run1", "c000")
    assert latest == 5 and torch.equal(kept["w"], torch.full((2,), 5.0)) and kept["step"] == 5
    assert store.latest("run1", "c000", at_most=4)[0] == 3
    assert store.latest("run1", "c000", at_most=0) is None and store.latest("run2", "c000") is None
    store.forget_before("run1", "c000", 3)  # the server's checkpoint goes with the snapshot after round 3
    assert sorted(store.snapshots("run1", "c000")) == [3, 5]
    store.forget_before("run1", "c000", 0)  # nothing counted yet: nothing can go
    assert sorted(store.snapshots("run1", "c000")) == [3, 5]
    store.forget_after("run1", "c000", 3)
    assert sorted(store.snapshots("run1", "c000")) == [3]


@pytest.mark.parametrize("run_id, cid", [("../elsewhere", "c000"), ("run1", "c0/../.."), ("..", "c000"), ("", "c0")])
def test_names_from_the_wire_never_leave_the_state_folder(tmp_path, run_id, cid):
    with pytest.raises(PluginError, match="cannot name a state folder"):
        KeptStore(tmp_path / "state").save(run_id, cid, 1, {})
    assert not (tmp_path / "state").exists()


def test_a_damaged_snapshot_is_a_clear_error(tmp_path):
    store = KeptStore(tmp_path)
    store.save("run1", "c000", 1, {"w": torch.zeros(3)})
    path = store.snapshots("run1", "c000")[1]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(PluginError, match="is not a readable state snapshot"):
        store.latest("run1", "c000")


# ----- the client service ------------------------------------------------------------------------------------------
class CountingClient:
    """Kept state that says how many rounds the client trained, and in which."""

    def __init__(self, cid, initial_state):
        self.cid, self.kept, self.initial_state = cid, {}, initial_state

    def run_round(self, dispatch):
        trained = self.kept.get("trained", torch.zeros(0, dtype=torch.int64))
        self.kept = {"trained": torch.cat([trained, torch.tensor([dispatch.settings.round])])}
        return Upload(self.cid, 10, dict(dispatch.state))


def service_with(store):
    service = ClientService(CountingClient, {}, {0: "c000"}, "127.0.0.1:9", Transport(1 << 20), store)
    service.sent = []
    service.send = lambda request, metadata: service.sent.append(request.round_id)
    return service


def train(service, round_index, keep_from=0, snapshot=None):
    """One training request; `snapshot` set: a first contact (with the run's initial state) naming the snapshot
    the server counts. The rounds the client's state has trained in."""
    initial = None if snapshot is None else {}
    sent = wrap(make_dispatch({"w": torch.zeros(1)}, round=round_index), "ab" * 32, None, initial, keep_from, snapshot)
    dispatch, envelope, initial = unwrap(sent)
    service.work("c000", TRAIN, "run1", round_index, dispatch, envelope, initial)
    client = service.clients.get("c000")
    return client.kept["trained"].tolist() if client else None


def test_a_restarted_service_and_a_resumed_server_find_the_right_state(tmp_path):
    store = KeptStore(tmp_path)
    service = service_with(store)
    assert train(service, 0, snapshot=0) == [0]
    assert train(service, 2) == [0, 2]
    assert train(service, 3, keep_from=3) == [0, 2, 3]
    assert sorted(store.snapshots("run1", "c000")) == [3, 4]  # after round 1 (index 0) is older than needed
    restarted = service_with(store)  # a new process: no client objects, the same folder
    assert train(restarted, 4, keep_from=3) == [0, 2, 3, 4]  # its latest snapshot
    assert train(restarted, 5, keep_from=3) == [0, 2, 3, 4, 5]
    # The server is killed after round 6 and resumed from its checkpoint, which counts the client's state after
    # round 3 (index 2): the client is rolled back in the service that still holds the later state as well.
    assert train(restarted, 3, keep_from=3, snapshot=3) == [0, 2, 3]
    assert sorted(store.snapshots("run1", "c000")) == [3, 4]
    assert train(restarted, 4, keep_from=3, snapshot=4) == [0, 2, 3, 4]  # the state it holds is the one counted
    assert restarted.sent == [4, 5, 3, 4]


def test_a_snapshot_the_server_counts_but_the_client_lacks_is_an_error(tmp_path):
    """A lost state folder never passes for a fresh start: the request fails and the client gets no object."""
    service = service_with(KeptStore(tmp_path / "lost"))
    assert train(service, 5, snapshot=4) is None and service.sent == [5]  # the error report went out
    assert not KeptStore(tmp_path / "lost").snapshots("run1", "c000")


@pytest.mark.parametrize("entry", ["keep_from", "snapshot"])
@pytest.mark.parametrize("value", [-1, 1.5, "3", True])
def test_envelope_round_counts_must_be_counts(entry, value):
    dispatch = make_dispatch({"w": torch.zeros(1)})
    sent = pack({"state": dispatch.state, "extra": {}},
                {**dispatch.header(), ENVELOPE_KEY: {"ticket": "ab" * 32, entry: value}})
    with pytest.raises(PluginError, match=f"'{entry}' must be a round count"):
        unwrap(sent)


# ----- a real cluster: the server killed with SIGKILL and resumed ---------------------------------------------------
CONFIG = CONFIGS / "fedcmd_digits.yaml"
ROUNDS = 6
FEDCMD = ["fedcmd.selection_rounds=2", f"server.rounds={ROUNDS}"]  # votes, then the decoupled phase


def wait_for_checkpoint(cluster, at_least):
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        for folder in cluster.run_folders():
            path = folder / checkpoint.FILE
            if path.is_file() and torch.load(path, weights_only=True)["round"] >= at_least:
                return folder
        if cluster.processes.procs["server"].poll() is not None:
            pytest.fail(f"the server ended before a checkpoint of round {at_least}:\n{cluster.logs()}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of round {at_least} within {RUN_TIMEOUT} s:\n{cluster.logs()}")


def wait_for_state(folder, states, cluster):
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        state = read_json(folder / "status.json")["state"]
        if state in states:
            return state
        time.sleep(0.2)
    pytest.fail(f"{folder} did not reach {states} within {RUN_TIMEOUT} s:\n{cluster.logs()}")


@pytest.mark.slow
def test_a_killed_remote_server_resumes_to_the_uninterrupted_results(tmp_path):
    target = random.Random(KILL_SEED).randint(1, ROUNDS - 2)
    cluster = Cluster(tmp_path / "remote", extra=[*FEDCMD, "server.checkpoint_every=1"], config=CONFIG)
    cluster.folder.mkdir()
    try:
        cluster.start()
        cluster.processes.start("trigger", cluster.trigger_command())
        folder = wait_for_checkpoint(cluster, target)
        os.killpg(cluster.processes.procs["server"].pid, signal.SIGKILL)
        cluster.processes.procs["server"].wait()
        killed_at = torch.load(folder / checkpoint.FILE, weights_only=True)["round"]
        assert read_json(folder / "status.json")["state"] == "running" and killed_at < ROUNDS
        cluster.start_server("--resume", folder)
        assert wait_for_state(folder, ("complete", "failed", "stopped"), cluster) == "complete", cluster.logs()
        logs = cluster.processes.log("client0") + cluster.processes.log("client1")
    finally:
        cluster.processes.stop()
    assert [row["round"] for row in read_json(folder / "metrics.json")] == list(range(1, ROUNDS + 1))
    standalone = run([sys.executable, "-m", "fedcmd_plugin", "run", CONFIG, *RUN, *FEDCMD,
                      f"output.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"], RUN_TIMEOUT, cwd=tmp_path)
    assert standalone.returncode == 0, standalone.stderr
    (local,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    resumed, uninterrupted = client_rows(folder), client_rows(local)
    assert len(resumed) == len(uninterrupted) == 2 * ROUNDS
    for mine, theirs in zip(resumed, uninterrupted):
        assert (mine["round"], mine["cid"], mine["test_correct"]) == (theirs["round"], theirs["cid"],
                                                                       theirs["test_correct"])
        assert float(mine["test_loss"]) == approx(float(theirs["test_loss"]), rel=1e-5)
    chosen = [json.loads((f / "summary.json").read_text())["personal_block"] for f in (folder, local)]
    assert chosen[0] == chosen[1] is not None
    assert "continues run" in logs  # the clients took up their snapshots
