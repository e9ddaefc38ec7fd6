"""Hands each decoded upload to the round that waits for it.

A round registers what it expects, keyed by (run id, round, train|test), with the client ids it asked. An
upload is accepted only while that round waits, only from one of those clients and only once; anything
else (a late answer to a finished round, another run's, a duplicate) is refused and never reaches the run.
"""
import threading
import time


class Waiter:
    """The outstanding answers of one request to a set of clients."""

    def __init__(self, router, key, cids):
        self.router = router
        self.key = key
        self.expected = list(cids)
        self.results = {}  # cid -> decoded upload / evaluation result
        self.failures = {}  # cid -> reason

    def pending(self):
        return [cid for cid in self.expected if cid not in self.results and cid not in self.failures]

    def fail(self, cid, reason):
        """The client cannot answer (refused, unreachable, reported an error)."""
        with self.router.condition:
            if cid not in self.results and cid not in self.failures:
                self.failures[cid] = reason
                self.router.condition.notify_all()

    def wait(self, timeout):
        """Block until every client answered or failed, or `timeout` seconds passed. Returns the pending cids."""
        deadline = time.monotonic() + timeout
        with self.router.condition:
            while self.pending():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.router.condition.wait(left)
            return self.pending()

    def close(self):
        self.router.close(self)


class UploadRouter:
    def __init__(self):
        self.condition = threading.Condition()
        self.waiting = {}  # key -> Waiter

    def expect(self, key, cids):
        with self.condition:
            waiter = Waiter(self, key, cids)
            self.waiting[key] = waiter
            return waiter

    def close(self, waiter):
        with self.condition:
            if self.waiting.get(waiter.key) is waiter:
                del self.waiting[waiter.key]

    def deliver(self, key, cid, value=None, error=None):
        """Give the waiting round `key` client `cid`'s answer (or its error). Returns (accepted, message)."""
        with self.condition:
            waiter = self.waiting.get(key)
            if waiter is None:
                return False, f"no round is waiting for {key[2]} results of round {key[1] + 1} of run {key[0]}"
            if cid not in waiter.expected:
                return False, f"client {cid} was not asked in round {key[1] + 1}"
            if cid in waiter.results or cid in waiter.failures:
                return False, f"client {cid} already answered round {key[1] + 1}"
            if error is not None:
                waiter.failures[cid] = error
            else:
                waiter.results[cid] = value
            self.condition.notify_all()
            return True, "accepted"
