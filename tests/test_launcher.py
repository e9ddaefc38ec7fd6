"""The `--nproc` launcher watches its ranks: the first rank that exits non-zero ends the run, the others are
stopped (SIGTERM, then SIGKILL), and the error is one line naming that rank. Ranks here are tiny scripts that
behave as told by FAKE_<rank>, so no torch is imported."""
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedcmd_plugin import launcher

FAKE_RANK = """
import os, signal, sys, time
rank = os.environ["RANK"]
behaviour = os.environ["FAKE_" + rank]
print("rank", rank, "started", file=sys.stderr, flush=True)
if behaviour == "sleep":
    time.sleep(300)
elif behaviour == "stubborn":  # ignores SIGTERM: only SIGKILL ends it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(300)
elif behaviour == "raise":
    time.sleep(0.5)
    raise ValueError("boom in rank " + rank)
elif behaviour == "error":
    print("error: config key 'x' is wrong", file=sys.stderr)
    sys.exit(2)
elif behaviour == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def ranks(tmp_path, monkeypatch):
    """launch(behaviours) -> what `launcher.launch` returns, with rank i behaving as behaviours[i]."""
    script = tmp_path / "fake_rank.py"
    script.write_text(FAKE_RANK)
    monkeypatch.setattr(launcher, "RANK_COMMAND", (sys.executable, str(script)))
    monkeypatch.setattr(launcher, "STOP_GRACE", 2.0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the launcher's log folders

    def launch(*behaviours):
        for rank, behaviour in enumerate(behaviours):
            monkeypatch.setenv(f"FAKE_{rank}", behaviour)
        return launcher.launch(len(behaviours), ["config.yaml", "seed=1"])

    launch.script = script
    return launch


def alive(script):
    """Pids of live (not zombie) processes running `script`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if str(script).encode() in (entry / "cmdline").read_bytes() and \
                    (entry / "stat").read_text().split(") ")[-1][0] != "Z":
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("other", ["sleep", pytest.param("stubborn", marks=pytest.mark.slow)])
def test_the_first_failing_rank_ends_the_run(ranks, other):
    started = time.monotonic()
    with pytest.raises(launcher.RankFailed) as caught:
        ranks(other, "raise")
    assert time.monotonic() - started < 60  # not the 300 s the other rank would sleep
    message = str(caught.value)
    assert message.startswith("rank 1 exited with status 1: ValueError: boom in rank 1 (every rank's log: ")
    assert "\n" not in message
    logs = Path(message.rpartition("every rank's log: ")[2].rstrip(")"))
    assert "Traceback" in (logs / "rank1.log").read_text()  # the whole story stays in the log
    assert alive(ranks.script) == []


def test_a_one_line_error_or_a_signal_is_what_the_launcher_reports(ranks):
    with pytest.raises(launcher.RankFailed, match=r"^rank 0 exited with status 2: config key 'x' is wrong \("):
        ranks("error", "sleep")
    with pytest.raises(launcher.RankFailed, match=r"^rank 1 was killed by SIGKILL \("):
        ranks("sleep", "kill")
    assert alive(ranks.script) == []


def test_a_run_whose_ranks_succeed(ranks, capfd):
    assert ranks("ok", "ok") == 0
    assert "rank 0 started" in capfd.readouterr().err  # rank 0's stderr is passed on; its log folder removed


def test_the_error_line_of_a_log():
    traceback = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nKeyError: 'a'\n\n"
                 "During handling of the above exception, another exception occurred:\n\nTraceback (most recent "
                 "call last):\n  File \"x.py\", line 3\ntorch.distributed.DistBackendError: [gloo] Connection closed "
                 "by peer\nException raised from recvBytes at store.cpp:12 (most recent call first):\n"
                 "frame #0: c10::Error::Error() + 0x9\n")
    assert launcher.error_line(traceback) == "torch.distributed.DistBackendError: [gloo] Connection closed by peer"
    assert launcher.error_line("warning: slow\nerror: config key 'seed' expects an integer\n") == \
        "config key 'seed' expects an integer"
    assert launcher.error_line("just this\n") == "just this" and launcher.error_line("") == ""
    assert launcher.error_line("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"x.py\"\n"
                               "[rank1]: RuntimeError: injected\n") == "RuntimeError: injected"
    assert len(launcher.error_line("ValueError: " + "x" * 1000)) == 303
