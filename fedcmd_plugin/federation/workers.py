"""Standalone training on every core: the round's clients trained by worker processes.

Workers are forked from the server process once the clients and their data exist, so every worker holds every
client's data and a workspace model without copying or reloading anything. A round sends each worker only the
dispatches of the clients it trains (safe tensor archives) and gets only their uploads back. A client's own state
(`kept`: personal layers, memories, pseudo labels) is all the state a client has; the server process keeps the
latest copy of it and sends it along only when a client is trained by a different worker than last time.

Clients are assigned longest-first to the least loaded worker (sticking to the worker that already holds a
client's state when loads tie). Training is seeded by (run seed, round, client) and every worker uses the same
number of threads, so results are identical to the sequential loop whatever the assignment.

Forking needs a CPU run: CUDA cannot be used in a forked child, so GPU runs train sequentially in each process
(use `--nproc` / torchrun for several GPUs).
"""
import multiprocessing
import signal

import torch

from fedcmd_plugin.federation import codec
from fedcmd_plugin.federation.fleet import LocalFleet
from fedcmd_plugin.federation.messages import Dispatch, Upload
from fedcmd_plugin.federation.progress import SILENT
from fedcmd_plugin.federation.stopping import STOP_SIGNALS
from fedcmd_plugin.session import usable_cores


def worker_count(conf, world_size):
    """`parallel.workers` resolved: auto = the usable cores, 1 (sequential) under torch.distributed, remote
    mode or GPUs, and never more workers than clients per round."""
    setting = conf.parallel.workers
    if world_size > 1 or conf.get("is_remote") or conf.gpu > 0:
        return 1
    wanted = usable_cores() if setting == "auto" else setting
    per_round = conf.server.clients_per_round
    if conf.server.join_ratio:
        per_round = max(1, int(round(conf.server.join_ratio * conf.data.num_of_clients)))
    return max(1, min(wanted, per_round))


def local_fleet(conf, clients, model, world_size, progress=SILENT):
    """The fleet of a standalone or distributed run's client objects: `model` (moved to `conf.device`) is their
    shared workspace; worker processes train them when `parallel.workers` resolves to more than one."""
    workspace = model.to(conf.device)
    initial_state = {key: value.detach().clone() for key, value in workspace.state_dict().items()}
    workers = worker_count(conf, world_size)
    if workers > 1:
        return ProcessFleet(clients, workspace, initial_state, workers, threads_per_worker(conf, workers), progress)
    return LocalFleet(clients, workspace, initial_state, progress)


def threads_per_worker(conf, workers):
    """`num_threads`, or (0) the usable cores shared among the workers, so the machine is not oversubscribed."""
    return conf.num_threads or max(1, usable_cores() // workers)


def balance(sizes, holder, workers):
    """worker -> [cid]: clients longest first onto the least loaded worker; a tie goes to the worker that holds
    the client's current state (`holder`), then to the lowest worker index."""
    loads = [0] * workers
    plan = [[] for _ in range(workers)]
    for cid in sorted(sizes, key=lambda c: (-sizes[c], c)):
        worker = min(range(workers), key=lambda w: (loads[w], w != holder.get(cid), w))
        plan[worker].append(cid)
        loads[worker] += sizes[cid]
    return plan


def _pack_kept(kept):
    return codec.encode(kept, {})


def _unpack_kept(payload):
    return codec.decode(payload)[0]


def _serve(connection, fleet, threads):
    """A worker's loop: jobs in, results out, until the server says stop or goes away. Stop signals are the
    server's to handle (a terminal's Ctrl-C reaches the workers too): it finishes the round, then ends them."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    torch.set_num_threads(threads)
    while True:
        try:
            operation, jobs = connection.recv()
        except (EOFError, OSError):
            return
        if operation == "stop":
            return
        try:
            results = []
            for cid, payload, kept, splits in jobs:
                if kept is not None:
                    fleet.set_kept(cid, _unpack_kept(kept))
                dispatch = Dispatch.from_bytes(payload, type(fleet.clients[cid]).settings_type)
                if operation == "train":
                    results.append(fleet.clients[cid].run_round(dispatch).to_bytes())
                else:
                    results.append(fleet.clients[cid].evaluate(dispatch, splits))
            connection.send(("ok", results))
        except BaseException as exc:  # the server process re-raises it
            try:
                connection.send(("error", exc))
            except Exception:
                connection.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


class ProcessFleet:
    """The LocalFleet interface over `workers` forked processes."""

    def __init__(self, clients, workspace, initial_state, workers, threads=1, progress=SILENT):
        # the server's copy of every client's state
        self.local = LocalFleet(clients, workspace, initial_state, progress)
        context = multiprocessing.get_context("fork")
        self.connections, self.processes = [], []
        for index in range(workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, self.local, threads), daemon=True,
                                      name=f"fedcmd-worker-{index}")
            process.start()
            theirs.close()
            self.connections.append(mine)
            self.processes.append(process)
        self.holder = {}  # cid -> the worker whose replica of the client is current (all are, until it trains)

    # ----- the fleet interface ---------------------------------------------------------------------------------
    @property
    def report_type(self):
        return self.local.report_type

    def client_ids(self):
        return self.local.client_ids()

    def train(self, dispatches):
        """{cid: Dispatch} -> [Upload], trained in parallel; the uploads' own state becomes the server's copy."""
        results = self._run("train", dispatches, None)
        uploads = []
        for worker, cid, payload in results:
            upload = Upload.from_bytes(payload, self.report_type)
            self.local.set_kept(cid, upload.kept)
            self.holder[cid] = worker
            uploads.append(upload)
        return uploads

    def evaluate(self, dispatches, splits):
        return [{"cid": cid, **result} for _, cid, result in self._run("evaluate", dispatches, splits)]

    def kept(self, cid):
        return self.local.kept(cid)

    def set_kept(self, cid, kept):
        self.local.set_kept(cid, kept)
        self.holder[cid] = None  # no worker holds it: send it to whichever trains the client next

    def checkpointed(self, rounds_done):
        return self.local.checkpointed(rounds_done)

    def resume(self, rounds_done, saved):
        self.local.resume(rounds_done, saved)

    def close(self):
        for connection in self.connections:
            try:
                connection.send(("stop", None))
            except (OSError, BrokenPipeError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()
        self.connections, self.processes = [], []

    def dead(self, worker):
        self.processes[worker].join(timeout=1)
        return RuntimeError(f"worker process {worker} stopped unexpectedly (exit code "
                            f"{self.processes[worker].exitcode}); the run cannot go on without its clients")

    def _run(self, operation, dispatches, splits):
        """Send every worker its jobs, then collect [(worker, cid, result)] in dispatch order."""
        if not self.processes:
            raise RuntimeError("the worker processes of this fleet have been closed")
        sizes = {cid: self.local.clients[cid].train_data.size(cid) for cid in dispatches}
        plan = balance(sizes, self.holder, len(self.processes))
        for worker, cids in enumerate(plan):
            jobs = []
            for cid in cids:
                holder = self.holder.get(cid)
                stale = cid in self.holder and holder != worker
                kept = _pack_kept(self.local.kept(cid)) if stale else None
                if operation == "evaluate" and stale:
                    self.holder[cid] = worker if holder is None else holder
                jobs.append((cid, dispatches[cid].to_bytes(), kept, splits))
            if jobs:
                try:
                    self.connections[worker].send((operation, jobs))
                except OSError:
                    plan[worker] = []  # nothing to collect from a worker that is gone
                    raise self.dead(worker) from None
        collected = {}
        failure = None
        for worker, cids in enumerate(plan):
            if not cids:
                continue
            try:
                status, results = self.connections[worker].recv()
            except (EOFError, OSError):
                status, results = "error", self.dead(worker)
            if status == "error":
                failure = failure or results
                continue
            collected.update({cid: (worker, cid, result) for cid, result in zip(cids, results)})
        if failure is not None:
            raise failure
        return [collected[cid] for cid in dispatches]
