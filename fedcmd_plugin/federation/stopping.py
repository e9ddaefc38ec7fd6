"""SIGTERM and SIGINT during a run: the first asks the run to stop after the current round (it is checkpointed
and recorded as stopped); another one, later than SAME_REQUEST_SECONDS after the first, stops it at once.

A signal can reach a process twice for one request: a terminal's Ctrl-C reaches the whole process group, and
the `--nproc` launcher forwards what it receives to its ranks. Signals that close together count as one.
"""
import signal
import threading
import time
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SAME_REQUEST_SECONDS = 2.0


class RunInterrupted(KeyboardInterrupt):
    """A second stop signal: the run ends in the middle of a round; a resume continues from its last checkpoint."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


@contextmanager
def stop_on_signals(request_stop):
    """Within the block, the first SIGTERM/SIGINT calls `request_stop(signal name)`; a later one raises
    RunInterrupted. Signals can only be handled in the main thread: elsewhere (the remote server runs each run in
    a thread of its service, which handles the signals itself) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first = []

    def handle(number, frame):
        name = signal.Signals(number).name
        if not first:
            first.append(time.monotonic())
            request_stop(name)
        elif time.monotonic() - first[0] > SAME_REQUEST_SECONDS:
            raise RunInterrupted(name)

    with handling(handle):
        yield


@contextmanager
def handling(handler):
    """`handler(number, frame)` for SIGTERM and SIGINT within the block; the previous handlers come back after it."""
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def exit_status(name):
    """The shell's status for a process ended by signal `name` (128 + its number); 1 for a stop of another kind."""
    number = signal.Signals.__members__.get(name)
    return 128 + number.value if number else 1
