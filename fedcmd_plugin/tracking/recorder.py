"""The run folder of one experiment; only the primary process (rank 0) writes.

status.json says `running`, then `complete` (every configured round ran), `stopped` (ended early on request, with
the round reached) or `failed` (with the error).
"""
import itertools
import os
import time
import traceback
from pathlib import Path

from fedcmd_plugin.config import to_yaml
from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.session import logger
from fedcmd_plugin.tracking import files, plots

def usable_root(root):
    """`root` (output.root) as a Path, created when missing; ConfigError naming the key when no run folder can
    be made below it (not a directory, read-only, not creatable)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"config key 'output.root' is {root}, which is not a directory: name a folder for the "
                          "run folders")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"config key 'output.root' is {root}, which cannot be created ({exc.strerror or exc})") \
            from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"config key 'output.root' is {root}, which is not writable: name a folder you can write")
    return root


def unique_folder(root, name):
    """A new folder <name>-<time>[-N] below `root`. mkdir itself decides which name is free, so runs starting in
    the same second never race for one (the later takes the next suffix)."""
    root = usable_root(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in itertools.count(1):
        folder = root / (f"{name}-{stamp}" if suffix == 1 else f"{name}-{stamp}-{suffix}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"config key 'output.root' is {root}: cannot create a run folder there "
                              f"({exc.strerror or exc})") from None


def coverage(summary):
    """'' when an evaluation covers every client it asked, else ' [over K of N clients, missing ...]' to follow
    its headline: an accuracy over fewer clients is another number, not the same one."""
    expected, evaluated = summary.get("expected_clients"), summary.get("evaluated_clients", 0)
    missing = summary.get("missing_eval_clients") or []
    if expected is None or (evaluated == expected and not missing):
        return ""
    text = f"over {evaluated} of {expected} clients"
    if missing:
        text += f", missing {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return f" [{text}]"


class Recorder:
    def __init__(self, conf, primary=True, outcome=None):
        self.conf = conf
        self.primary = primary
        self.outcome = {} if outcome is None else outcome  # the experiment's: run folder, summary, why it stopped
        self.folder = None
        self.rounds = {}  # round -> metrics of that round
        self.client_rows = []  # per evaluation and client
        self.writer = None
        self.notes = {}  # algorithm facts for summary.json (e.g. FedCMD's chosen layer)
        self.data_info = None  # the data's shape, which rebuilds the model from checkpoints (load_run)
        self.last_evaluation = None  # {"round", "summary", "clients"} of the latest evaluation
        self.started = time.time()
        self.earlier_seconds = 0.0  # a resumed run: the seconds of the rounds its checkpoint holds
        self.log = logger()

    # ----- life cycle -------------------------------------------------------------------------------------------
    def start(self, info):
        if not self.primary:
            return
        conf = self.conf
        name = conf.output.name or f"{conf.algorithm}-{conf.data.dataset}"
        self.folder = unique_folder(conf.output.root, name)
        files.write_json(self.folder / "status.json", {"state": "running", "started": time.ctime()})
        files.write_text(self.folder / "config.yaml", to_yaml(conf))
        self.data_info = info.get("data")
        if info.get("partition"):
            files.write_csv(self.folder / "partition.csv", info["partition"])
        self.open_writer()
        self.log.info(f"run folder: {self.folder}")
        self.outcome.clear()
        self.outcome["folder"] = self.folder

    def resume(self, folder, info, state, done):
        """Go on writing in `folder` after round `done` from a checkpoint's `state` (what `state()` returned): the
        metrics of the rounds it holds are kept, those written after it (by a run killed later) are dropped."""
        self.rounds = {row["round"] - 1: row for row in state["rounds"]}
        self.client_rows = list(state["client_rows"])
        self.notes = dict(state["notes"])
        self.last_evaluation = state["last_evaluation"]
        self.earlier_seconds = state["seconds"]
        if not self.primary:
            return
        self.folder = Path(folder)
        self.data_info = info.get("data")
        files.write_json(self.folder / "status.json", {"state": "running", "started": time.ctime(),
                                                       "resumed_after_round": done})
        self.write_metrics()
        self.open_writer(purge_step=done + 1)  # TensorBoard hides the events logged after the checkpoint
        self.log.info(f"run folder: {self.folder} (resumed after round {done})")
        self.outcome.clear()
        self.outcome["folder"] = self.folder

    def state(self):
        """What a checkpoint keeps of the recorder: the metrics so far, the algorithm's notes and the seconds."""
        return {"rounds": self.metric_rows(), "client_rows": self.client_rows, "notes": self.notes,
                "last_evaluation": self.last_evaluation, "seconds": self.seconds()}

    def open_writer(self, purge_step=None):
        if self.conf.output.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder / "tensorboard"), purge_step=purge_step)

    def seconds(self):
        return self.earlier_seconds + time.time() - self.started

    def save_checkpoints(self, states, subfolder=""):
        """{name: state} as checkpoints/[subfolder/]<name>.pt (when output.save_model is on)."""
        if self.primary and self.conf.output.save_model:
            for name, state in states.items():
                files.save_torch(self.folder / "checkpoints" / subfolder / f"{name}.pt", state)

    def finish(self, states):
        """Every configured round ran: the final models (`states`), metrics, plots, summary and status `complete`."""
        self.close(states, self.conf.server.rounds, {"state": "complete"})

    def stop(self, rounds_run, reason, checkpoint_round=None, states=None):
        """The run ends early on request (a stop signal, the remote Stop) after `rounds_run` rounds: what it has
        (the models in `states`, metrics, plots, summary) and status `stopped` with the round reached and why;
        `checkpoint_round`: the round a resume continues after (None: no checkpoint)."""
        self.close(states or {}, rounds_run, {"state": "stopped", "round": rounds_run, "reason": reason,
                                              "checkpoint_round": checkpoint_round})

    def close(self, states, rounds_run, status):
        """The last writes of `finish` and `stop`; status.json comes last, so it never announces missing files."""
        if not self.primary or self.folder is None:
            return
        conf = self.conf
        self.save_checkpoints(states)
        self.write_metrics()
        last = self.last_evaluation
        final = last["summary"] if last else {}
        if conf.output.save_fig:
            title = f"{conf.algorithm} on {conf.data.dataset}"
            plots.accuracy_per_round(self.metric_rows(), self.plot_path("accuracy"), title, conf.test_method)
            if last:
                accs = [r["test_accuracy"] for r in last["clients"] if "test_accuracy" in r]
                plots.client_distribution(accs, self.plot_path("client_accuracy"), title)
        summary = {"algorithm": conf.algorithm, "dataset": conf.data.dataset, "rounds": conf.server.rounds,
                   "rounds_run": rounds_run, "final": final, "final_round": last["round"] + 1 if last else None,
                   "missing_clients": self.missing_clients(), "seconds": self.seconds(),
                   "seconds_per_round": self.seconds_per_round(), "folder": str(self.folder), "data": self.data_info,
                   **self.notes}
        files.write_json(self.folder / "summary.json", summary)
        if self.writer:
            self.writer.close()
        status = {**status, "rounds": conf.server.rounds, "finished": time.ctime()}
        files.write_json(self.folder / "status.json", status)
        self.outcome["summary"] = summary
        if status["state"] == "complete":
            ended = "done"
        else:
            self.outcome["stopped"] = status
            resumable = f"; resume continues after round {status['checkpoint_round']}" \
                if status.get("checkpoint_round") else ""
            ended = f"stopped after {rounds_run} of {conf.server.rounds} rounds ({status['reason']}){resumable}"
        self.log.info(f"{ended}: {self.headline(final)} | {summary['seconds']:.1f} s | {self.folder}")

    def fail(self, exc):
        if not self.primary or self.folder is None:
            return
        if self.writer:
            self.writer.close()
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        files.write_json(self.folder / "status.json", {"state": "failed", "error": message, "finished": time.ctime()})

    # ----- metrics ---------------------------------------------------------------------------------------------
    def log_round(self, round_index, values):
        self.rounds.setdefault(round_index, {"round": round_index + 1}).update(values)
        self.scalars(round_index, "round", values)

    def log_evaluation(self, round_index, summary, results):
        self.last_evaluation = {"round": round_index, "summary": summary, "clients": results}  # on every rank
        if not self.primary:
            return
        self.rounds.setdefault(round_index, {"round": round_index + 1}).update(summary)
        self.client_rows.extend({"round": round_index + 1, **r} for r in results)
        self.scalars(round_index, "eval", summary)
        if self.writer:
            accs = [r["test_accuracy"] for r in results if "test_accuracy" in r]
            if accs:
                import numpy as np

                self.writer.add_histogram("eval/client_accuracy", np.array(accs), round_index + 1)
        self.log.info(f"round {round_index + 1}/{self.conf.server.rounds}: {self.headline(summary)}")
        if self.conf.output.save_metrics:
            self.write_metrics()

    def scalars(self, round_index, prefix, values):
        if self.writer:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, round_index + 1)

    def metric_rows(self):
        return [self.rounds[r] for r in sorted(self.rounds)]

    def missing_clients(self):
        """{client: the rounds it was asked to train or be evaluated in and did not answer}."""
        missing = {}
        for row in self.metric_rows():
            for cid in {*row.get("missing_clients", ()), *row.get("missing_eval_clients", ())}:
                missing.setdefault(cid, []).append(row["round"])
        return dict(sorted(missing.items()))

    def seconds_per_round(self):
        times = [r["round_seconds"] for r in self.rounds.values() if "round_seconds" in r]
        return sum(times) / len(times) if times else None

    def write_metrics(self):
        if not self.primary or not self.conf.output.save_metrics:
            return
        rows = self.metric_rows()
        files.write_csv(self.folder / "metrics.csv", rows)
        files.write_json(self.folder / "metrics.json", rows)
        if self.client_rows:
            files.write_csv(self.folder / "clients.csv", self.client_rows)

    def headline(self, summary):
        """The evaluation in one line, with how many clients it covers when some were missing."""
        if "accuracy" in summary:
            model = "global" if self.conf.test_mode == "test_in_server" else "personalised"
            text = (f"{model} accuracy {summary['accuracy']:.2f}% (clients {summary['accuracy_mean']:.1f} "
                    f"± {summary['accuracy_std']:.1f}, min {summary['accuracy_min']:.1f})")
        else:
            text = ", ".join([f"{k} {v:.2f}" for k, v in summary.items() if isinstance(v, float)][:4])
        return text + coverage(summary)

    # ----- extras for algorithms (votes, matrices, decisions) -------------------------------------------------
    def write_json(self, name, obj):
        if self.primary:
            files.write_json(self.folder / name, obj)

    def plot_path(self, name):
        """Where plot `name` goes (plots/<name>.png), or None when this process does not write plots."""
        if not self.primary or not self.conf.output.save_fig:
            return None
        (self.folder / "plots").mkdir(exist_ok=True)
        return self.folder / "plots" / f"{name}.png"

    def image(self, tag, values, round_index):
        """A matrix with values in [0, 1] as a TensorBoard image (e.g. a similarity matrix)."""
        if self.writer:
            self.writer.add_image(tag, values[None], round_index + 1)
