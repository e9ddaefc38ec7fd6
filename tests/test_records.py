"""Honest run folders: `complete` only when every configured round ran, `stopped` with the round reached, the
rounds that ran in summary.json, and a headline that says how many clients it covers when some were missing."""
import json
import logging
import threading

import pytest
from conftest import dotted

import fedcmd_plugin
from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.session import logger
from fedcmd_plugin.tracking.recorder import Recorder, coverage, unique_folder

QUIET = {"output.save_fig": False, "output.tensorboard": False, "output.progress": False}
SEQUENTIAL = {"parallel__workers": 1}  # no worker processes to fork for a one-round run


@pytest.fixture
def plugin_log(caplog):
    """The plugin logger's messages of this test (it does not propagate to the root logger)."""
    logger().addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=logger().name)
    try:
        yield lambda: "\n".join(record.getMessage() for record in caplog.records)
    finally:
        logger().removeHandler(caplog.handler)


def read(folder, name):
    return json.loads((folder / name).read_text())


def recorder_for(tmp_run_dir, rounds=3):
    conf = fedcmd_plugin.load_config(None, [*dotted({**QUIET, "server.rounds": rounds}), *tmp_run_dir])
    recorder = Recorder(conf)
    recorder.start({})
    return recorder


def evaluation(cids, expected):
    results = [{"cid": cid, "test_correct": 9, "test_total": 10, "test_loss": 0.1, "test_accuracy": 90.0}
               for cid in cids]
    summary = {"accuracy": 90.0, "accuracy_mean": 90.0, "accuracy_std": 0.0, "accuracy_min": 90.0,
               "evaluated_clients": len(cids), "expected_clients": len(expected)}
    missing = [cid for cid in expected if cid not in cids]
    if missing:
        summary["missing_eval_clients"] = missing
    return summary, results


def test_a_stopped_run_says_so_with_the_round_reached(tmp_run_dir):
    recorder = recorder_for(tmp_run_dir, rounds=3)
    recorder.log_round(0, {"round_seconds": 1.0, "clients": 2})
    recorder.log_evaluation(0, *evaluation(["c000", "c001"], ["c000", "c001"]))
    recorder.log_round(1, {"round_seconds": 1.0, "clients": 1, "missing_clients": ["c001"]})
    recorder.stop(2, "a Stop request from the operator")

    status = read(recorder.folder, "status.json")
    assert status["state"] == "stopped" and status["round"] == 2 and status["rounds"] == 3
    assert status["reason"] == "a Stop request from the operator"
    summary = read(recorder.folder, "summary.json")
    assert (summary["rounds"], summary["rounds_run"], summary["final_round"]) == (3, 2, 1)
    assert summary["missing_clients"] == {"c001": [2]}
    assert [row["round"] for row in read(recorder.folder, "metrics.json")] == [1, 2]


def test_a_complete_run_ran_every_configured_round(tmp_run_dir):
    recorder = recorder_for(tmp_run_dir, rounds=1)
    recorder.log_round(0, {"round_seconds": 1.0})
    recorder.log_evaluation(0, *evaluation(["c000"], ["c000"]))
    recorder.finish({})
    assert read(recorder.folder, "status.json")["state"] == "complete"
    summary = read(recorder.folder, "summary.json")
    assert (summary["rounds"], summary["rounds_run"], summary["missing_clients"]) == (1, 1, {})


def test_the_headline_says_which_clients_an_evaluation_misses(tmp_run_dir):
    recorder = recorder_for(tmp_run_dir)
    complete, _ = evaluation(["c000", "c001"], ["c000", "c001"])
    assert coverage(complete) == "" and "[" not in recorder.headline(complete)
    partial, _ = evaluation(["c000"], ["c000", "c001"])
    assert recorder.headline(partial).endswith("90.00% (clients 90.0 ± 0.0, min 90.0) [over 1 of 2 clients, "
                                               "missing c001]")
    many, _ = evaluation(["c000"], [f"c{i:03d}" for i in range(8)])
    assert coverage(many) == " [over 1 of 8 clients, missing c001, c002, c003, c004, c005 and 2 more]"
    reid = {"mAP": 41.5, "rank1": 60.25, "evaluated_clients": 1, "expected_clients": 2,
            "missing_eval_clients": ["c001"]}
    assert recorder.headline(reid) == "mAP 41.50, rank1 60.25 [over 1 of 2 clients, missing c001]"


def test_concurrent_runs_never_share_a_folder(tmp_path):
    folders, start = [], threading.Barrier(8)

    def make():
        start.wait()
        folders.append(unique_folder(tmp_path / "runs", "same-name"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(folders)) == 8 and all(folder.is_dir() for folder in folders)


@pytest.mark.slow
def test_a_run_stopped_after_its_first_round(small_digits_config, monkeypatch, plugin_log):
    """server.stop(reason) during round 1 of 3: the round ends, then the run, and the folder says `stopped`."""
    post_train = FederatedServer.post_train

    def stop_in_first_round(self):
        post_train(self)
        if self._current_round == 0:
            self.stop("asked by the test")

    monkeypatch.setattr(FederatedServer, "post_train", stop_in_first_round)
    result = run_experiment(small_digits_config(server__rounds=3, **QUIET, **SEQUENTIAL))
    status = read(result["folder"], "status.json")
    assert (status["state"], status["round"], status["rounds"]) == ("stopped", 1, 3)
    assert (result["summary"]["rounds_run"], result["summary"]["final_round"]) == (1, 1)
    assert "stopped after 1 of 3 rounds (asked by the test)" in plugin_log()


@pytest.mark.slow
def test_an_evaluation_without_some_clients_reports_them(small_digits_config, monkeypatch, plugin_log):
    """A client whose evaluation never came back (as a dropped remote client's) is named next to the headline,
    in the round's metrics and in summary.json; the headline covers the others only."""
    evaluate = FederatedServer.evaluate_clients
    monkeypatch.setattr(FederatedServer, "evaluate_clients",
                        lambda self, cids, splits: [r for r in evaluate(self, cids, splits) if r["cid"] != "c003"])
    result = run_experiment(small_digits_config(server__rounds=1, **QUIET, **SEQUENTIAL))
    final = result["summary"]["final"]
    assert (final["evaluated_clients"], final["expected_clients"], final["missing_eval_clients"]) == (9, 10, ["c003"])
    assert result["summary"]["missing_clients"] == {"c003": [1]}
    assert read(result["folder"], "status.json")["state"] == "complete"  # every round ran
    assert "round 1/1: personalised accuracy" in plugin_log()
    assert plugin_log().count("[over 9 of 10 clients, missing c003]") == 2  # the round's line and the last one
