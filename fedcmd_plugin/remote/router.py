"""Hands each checked upload to the round that waits for it.

A round registers what it expects, keyed by (run id, round, train|test): for each client it asked, the
Expectation its answer is checked against (`validation`). An upload is accepted only while that round waits,
only from one of those clients and only once; anything else (a late answer to a finished round, another
run's, a duplicate) is refused and never reaches the run. A client whose answer failed the checks is
rejected for the round, with the reason.
"""
import threading
import time


class Waiter:
    """The outstanding answers of one request to a set of clients."""

    def __init__(self, router, key, expectations):
        self.router = router
        self.key = key
        self.expected = dict(expectations)  # cid -> Expectation
        self.results = {}  # cid -> decoded, checked upload / evaluation result
        self.failures = {}  # cid -> reason
        self.rejected = {}  # cid -> why its answer failed the checks (also in failures)

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


class Refused(Exception):
    """No round takes this answer: `late` when none waits for it (an honest straggler), else a duplicate or
    an answer from a client that was not asked."""

    def __init__(self, message, late):
        super().__init__(message)
        self.late = late


class UploadRouter:
    def __init__(self):
        self.condition = threading.Condition()
        self.waiting = {}  # key -> Waiter
        self.answered = set()  # (key, cid) of every answer a round took, kept after the round ends

    def expect(self, key, expectations):
        with self.condition:
            waiter = Waiter(self, key, expectations)
            self.waiting[key] = waiter
            return waiter

    def close(self, waiter):
        with self.condition:
            if self.waiting.get(waiter.key) is waiter:
                del self.waiting[waiter.key]

    def expectation(self, key, cid):
        """What the round `key` expects from client `cid`; Refused when it takes nothing from it now."""
        with self.condition:
            waiter = self.open_waiter(key, cid)
            return waiter.expected[cid]

    def open_waiter(self, key, cid):
        if (key, cid) in self.answered:
            raise Refused(f"client {cid} already answered round {key[1] + 1}", False)
        waiter = self.waiting.get(key)
        if waiter is None:
            raise Refused(f"no round is waiting for {key[2]} results of round {key[1] + 1} of run {key[0]}", True)
        if cid not in waiter.expected:
            raise Refused(f"client {cid} was not asked in round {key[1] + 1}", False)
        if cid in waiter.failures:
            raise Refused(f"client {cid} is already left out of round {key[1] + 1}", True)
        return waiter

    def deliver(self, key, cid, value=None, error=None, rejected=None):
        """Give the waiting round `key` client `cid`'s answer, its reported error or why its answer was
        rejected; Refused when the round takes nothing from it."""
        with self.condition:
            waiter = self.open_waiter(key, cid)
            self.answered.add((key, cid))
            if rejected is not None:
                waiter.rejected[cid] = rejected
                waiter.failures[cid] = f"rejected: {rejected}"
            elif error is not None:
                waiter.failures[cid] = error
            else:
                waiter.results[cid] = value
            self.condition.notify_all()
