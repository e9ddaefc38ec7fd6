"""The one home for child processes of the tests: each starts in its own process group, and the whole group
(with anything it spawned, e.g. a launcher's ranks) is killed and reaped when the test is done with it, whatever
the outcome. Every wait has a deadline.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone


def reap(procs, grace=STOP_GRACE):
    """SIGTERM to the process group of each of `procs` still running, SIGKILL to every group after `grace`
    seconds (members that outlived their leader too), then wait for each leader."""
    for proc in procs:
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)


def run(command, timeout, **options):
    """subprocess.run in a new process group, captured as text: the CompletedProcess. Fails the test when the
    command outlives `timeout` seconds; the group is reaped in every case."""
    proc = subprocess.Popen([str(part) for part in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True, **options)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"{' '.join(map(str, command))} did not end within {timeout} s:\n{stdout[-3000:]}\n"
                    f"{stderr[-3000:]}")
    finally:
        reap([proc], grace=0)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


class Processes:
    """Long-running processes (services) with logs in `folder` and `env` in their environment; `stop()` reaps
    them all (the `processes` fixture calls it)."""

    def __init__(self, folder, env=None):
        self.folder = Path(folder)
        self.procs = {}
        self.env = {**os.environ, **(env or {})}

    def start(self, name, args, script=None):
        """`python -m fedcmd_plugin ARGS` (or `python SCRIPT ARGS`) as `name`, its output in `name`.log."""
        command = [sys.executable, str(script)] if script else [sys.executable, "-m", "fedcmd_plugin"]
        with open(self.folder / f"{name}.log", "w") as log:
            proc = subprocess.Popen([*command, *map(str, args)], cwd=self.folder, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=self.env)
        self.procs[name] = proc
        return proc

    def log(self, name):
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_listening(self, name, port, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited with {self.procs[name].returncode} before listening:\n{self.log(name)}")
            if listening(port):
                return
            time.sleep(0.5)
        pytest.fail(f"{name} did not listen on {port} within {timeout} s:\n{self.log(name)}")

    def stop(self):
        reap(list(self.procs.values()))
