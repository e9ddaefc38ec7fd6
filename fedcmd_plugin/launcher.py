"""`fedcmd-plugin run CONFIG --nproc N`: N local ranks of one torch.distributed run, watched until they end.

The first rank that exits non-zero ends the run: the others are stopped (SIGTERM, then SIGKILL after
`STOP_GRACE` seconds) and the launcher fails with one line naming that rank and its error. Each rank's stderr
(and the stdout of ranks > 0) goes to a log folder, kept and named in that line when the run fails; rank 0's
stdout stays on the terminal. The ranks share the launcher's process group, so Ctrl-C reaches all of them.
"""
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation.stopping import handling

RANK_COMMAND = (sys.executable, "-m", "fedcmd_plugin")  # what each rank runs, followed by `run ...`
STOP_GRACE = 10.0  # seconds a stopped rank gets to exit before it is killed
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(:|$)")  # a traceback's last line
RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s*")  # torch.distributed prefixes a rank's traceback lines with it


class RankFailed(PluginError):
    """A rank of a distributed run exited non-zero."""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(nproc, arguments):
    """Run `fedcmd_plugin run ARGUMENTS` as ranks 0..nproc-1 with torchrun-style variables; 0 when every rank
    succeeded, else RankFailed for the first rank that did not."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc))
    logs = Path(tempfile.mkdtemp(prefix="fedcmd-ranks-"))
    processes, forwarded = [], []
    try:
        for rank in range(nproc):
            with open(logs / f"rank{rank}.log", "wb") as log:  # the child keeps its own descriptor
                processes.append(subprocess.Popen(
                    [*RANK_COMMAND, "run", *arguments], env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdin=subprocess.DEVNULL, stdout=None if rank == 0 else log, stderr=log))
        with forwarding_stop_signals(processes, forwarded):
            failed = first_failure(processes, forwarded)
    finally:
        stop(processes)
    if failed is None:
        sys.stderr.write((logs / "rank0.log").read_text(errors="replace"))  # rank 0's warnings, in order
        shutil.rmtree(logs, ignore_errors=True)
        return processes[0].returncode if forwarded else 0
    raise RankFailed(f"{describe_exit(failed, processes[failed].returncode, logs / f'rank{failed}.log')} "
                     f"(every rank's log: {logs})")


def forwarding_stop_signals(processes, forwarded):
    """SIGTERM/SIGINT sent to the launcher reach every rank, which checkpoints after its current round and stops
    itself; each signal forwarded is appended to `forwarded`."""
    def forward(number, frame):
        forwarded.append(number)
        for process in processes:
            if process.poll() is None:
                process.send_signal(number)

    return handling(forward)


def first_failure(processes, forwarded=()):
    """Wait until every process exited 0 (None) or one exited non-zero: the index of the first to do so. After a
    forwarded stop signal the ranks end with that signal's status, which is no failure: all are awaited."""
    exits = queue.Queue()
    for index, process in enumerate(processes):
        threading.Thread(target=lambda i=index, p=process: exits.put((i, p.wait())), daemon=True).start()
    for _ in processes:
        while True:
            try:
                index, code = exits.get(timeout=1.0)  # a timeout keeps Ctrl-C responsive
                break
            except queue.Empty:
                continue
        if code != 0 and not forwarded:
            return index
    return None


def stop(processes):
    """SIGTERM to every process still running, SIGKILL to those still running STOP_GRACE seconds later."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def describe_exit(rank, code, log):
    """One line: how rank `rank` ended and the error its log ends with."""
    if code < 0:
        return f"rank {rank} was killed by {signal.Signals(-code).name}"
    error = error_line(Path(log).read_text(errors="replace"))
    return f"rank {rank} exited with status {code}" + (f": {error}" if error else " without an error message")


def error_line(text, limit=300):
    """The error a process reported: its one-line `error: ...`, else the last line of its last traceback,
    else its last line of output."""
    lines = [RANK_PREFIX.sub("", line.strip()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    found = next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), None)
    found = found or next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), None)
    found = found or (lines[-1] if lines else "")
    return found if len(found) <= limit else found[:limit] + "..."
