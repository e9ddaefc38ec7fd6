"""The server every algorithm builds on: EasyFL's BaseServer with a mode-independent round.

One round: seeded selection -> this rank's share of the clients -> `dispatches(cids)`, `training_dispatch` ->
client round -> uploads gathered from all ranks -> `aggregate(uploads)`. Every `test_every` rounds each client's
personalised model (test_mode=test_in_client) or the global model (test_in_server) is evaluated on each client's
test split.
Every `server.checkpoint_every` rounds, and when the run is stopped (SIGTERM, SIGINT, the remote Stop), the run
folder gets the checkpoint that `resume` continues from (`federation.checkpoint`).
Algorithms override `personal_keys`, `shared_state` / `own_state` (what a client loads: the state every client
shares, and what the server holds for one client alone), `training_dispatch` (what only training needs on top),
`aggregate`, `algorithm_settings` (the algorithm's typed part of each Dispatch), `client_own_state` (when a
client's own model is not its kept model keys over `own_state`) and, for what their server keeps between rounds,
`algorithm_state` / `load_algorithm_state`; the maths they call lives in `fedcmd_plugin.aggregate`.
"""
import time
from dataclasses import asdict, replace

import numpy as np
import torch
from easyfl.server import BaseServer

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.errors import ConfigError, PluginError
from fedcmd_plugin.federation import checkpoint, distributed
from fedcmd_plugin.federation.client import model_entries
from fedcmd_plugin.federation.evaluation import measure, sampled_accuracy_interval, summarise_classification
from fedcmd_plugin.federation.messages import Dispatch, RoundSettings
from fedcmd_plugin.federation.progress import Progress
from fedcmd_plugin.federation.seeding import derived_seed
from fedcmd_plugin.federation.stopping import STOP_SIGNALS, RunInterrupted, stop_on_signals
from fedcmd_plugin.session import logger
from fedcmd_plugin.tracking import Recorder


EVALUATION_CHUNK = 256  # clients whose dispatches exist at once while evaluating
SIGNAL_NAMES = {number.name for number in STOP_SIGNALS}


class FederatedServer(BaseServer):
    has_global_model = True  # False for algorithms where every client ends with its own model only
    personal_models = False  # True where clients test a model of their own beside the global one (Ditto, APFL)
    fleet = None  # the Fleet the run's entry point hands over before `start` (local clients or client services)
    stop_reason = None  # why `stop` was called; the run then ends after the current round

    # ----- life cycle -------------------------------------------------------------------------------------
    def __init__(self, conf, experiment=None, **kwargs):
        """`experiment`: the run's Experiment (config, data, outcome), which the run's entry point hands over
        (EasyFL's coordinator as the plugin sets it up, or the remote server service)."""
        super().__init__(conf, **kwargs)
        self.experiment = experiment

    def start(self, model, clients):
        if self.experiment is None or self.fleet is None:
            raise PluginError("the server needs its Experiment and its fleet before start: run it through "
                              "fedcmd_plugin.register and easyfl.init/easyfl.run, `fedcmd-plugin run` or "
                              "`fedcmd-plugin remote server`")
        self.conf = self.experiment.conf
        self.rank, self.world = distributed.rank_and_size()
        self.log = logger()
        self.recorder = Recorder(self.conf, primary=self.rank == 0, outcome=self.experiment.outcome)
        self.rounds_done = self.checkpoint_round = 0
        try:
            self.resumed = self.read_checkpoint()
            self.setup(model, clients)
            if self.resumed:
                self.restore(model, self.resumed)
            self.bar = Progress.of(self.conf.output.progress, self.rank == 0).rounds(self.conf.server.rounds,
                                                                                    initial=self.rounds_done)
            with stop_on_signals(self.stop):
                super().start(model, clients)
            self.bar.close()
            if self.rounds_done < self.conf.server.rounds:
                self.halt()
            else:
                self.finish()
        except RunInterrupted as exc:
            self.recorder.stop(self.rounds_done, f"{exc.name} again: stopped during round {self.rounds_done + 1}",
                               self.checkpoint_round or None)
            raise
        except BaseException as exc:
            self.recorder.fail(exc)
            raise

    def setup(self, model, clients):
        """Before the first round: the checks, the initial state (the fleet's clients start from it too), the
        fleet's clients and the run folder."""
        self.check_test_mode()
        self.initial_state = {k: v.detach().clone() for k, v in model.to(self.conf.device).state_dict().items()}
        self.client_order = self.fleet.client_ids()
        room = getattr(self.fleet, "check_room", None)  # fleets with a message size limit (remote mode)
        if room:
            room(self.initial_state, self.models_per_dispatch())
        self.selected_clients, self.stragglers = [], {}
        if self.resumed:
            saved = self.resumed
            self.recorder.resume(self.conf.resume, self.describe_run(), saved["recorder"], saved["round"])
        else:
            self.recorder.start(self.describe_run())

    def check_test_mode(self):
        conf = self.conf
        if conf.test_mode == "test_in_server" and not (
                self.has_global_model and self.experiment.data.info.task == "classification"):
            raise ConfigError(f"test_mode=test_in_server tests one global classifier, which algorithm "
                              f"{conf.algorithm!r} on {conf.data.dataset!r} does not have: "
                              f"use test_mode=test_in_client")

    def describe_run(self):
        data = self.experiment.data
        self.log.info(data.summary)
        return {"partition": data.client_rows, "summary": data.summary, "data": asdict(data.info)}

    def finish(self):
        self.recorder.finish(self.model_states())

    @property
    def round_number(self):
        """The 1-based number of the round in progress (between rounds: of the last one; 0 before the first)."""
        return max(0, self._current_round + 1)

    @property
    def last_evaluation(self):
        """{"round", "summary", "clients"} of the latest evaluation (the recorder's; None before the first)."""
        recorder = getattr(self, "recorder", None)
        return recorder.last_evaluation if recorder is not None else None

    # ----- stopping, checkpoints and resuming -------------------------------------------------------------------
    def stop(self, reason="stop requested"):
        """Stop after the current round (a stop signal, the remote Stop; before the first round when the run has not
        started): the run is then checkpointed and recorded as stopped, with `reason`."""
        if self.stop_reason is None:
            self.stop_reason = reason
            again = " (another SIGTERM/SIGINT stops at once)" if reason in SIGNAL_NAMES else ""
            logger().info(f"{reason}: stopping after round {getattr(self, '_current_round', -1) + 1}{again}")
        super().stop()

    def should_stop(self):
        """EasyFL asks before every round; its own flag is reset when `start` begins, so a stop requested earlier
        is kept here. In distributed mode a stop asked on any rank stops every rank before the same round (each rank
        is asked on its own, e.g. by a signal)."""
        stop = self.stop_reason is not None or super().should_stop()
        if self.world > 1:
            stop = any(distributed.gather_json([bool(stop)]))
        return stop

    def _reset(self):
        """EasyFL's start sets the round counter before the first round; a resumed run goes on after its
        checkpoint's round."""
        super()._reset()
        self._current_round = self.rounds_done - 1

    def read_checkpoint(self):
        """The checkpoint of the run folder named by config key `resume` (None when it is not set)."""
        if not self.conf.resume:
            return None
        return checkpoint.read(self.conf.resume, self.conf)

    def halt(self):
        """The end of a stopped run: a checkpoint of the rounds done, then status `stopped`."""
        self.write_checkpoint()
        self.recorder.stop(self.rounds_done, self.stop_reason or "stop requested", self.checkpoint_round or None,
                           self.model_states())

    def write_checkpoint(self):
        """The checkpoint after the rounds done so far (`federation.checkpoint`; rank 0 writes it), unless it is
        already written."""
        if self.rank != 0 or self.checkpoint_round == self.rounds_done:
            return
        kept = {cid: self.fleet.kept(cid) for cid in self.client_order}
        checkpoint.write(self.recorder.folder, self.conf, self.rounds_done, {
            "global": self._model.state_dict(), "kept": {cid: state for cid, state in kept.items() if state},
            "fleet": self.fleet.checkpointed(self.rounds_done), "algorithm": self.algorithm_state(),
            "recorder": self.recorder.state()})
        self.checkpoint_round = self.rounds_done

    def restore(self, model, saved):
        """Continue from checkpoint `saved` (every rank restores it): the global model (into `model`, which EasyFL's
        start copies), the clients' own state, the algorithm's state and the generators' positions."""
        model.load_state_dict(saved["global"])
        for cid, kept in saved["kept"].items():
            self.fleet.set_kept(cid, kept)
        self.fleet.resume(saved["round"], saved["fleet"])
        self.load_algorithm_state(saved["algorithm"])
        checkpoint.restore_generators(saved["generators"])
        self.rounds_done = self.checkpoint_round = saved["round"]

    def model_states(self):
        """Checkpoints: the shared state (`global` where the algorithm has a global model, else `shared`: what a
        client without state of its own uses) and, in `clients`, each client's own state only (`client_own_state`).
        Clients with none are not listed, so 10,000 idle clients cost nothing; a client's model is the shared
        state updated with its own (`load_run`)."""
        states = {"global" if self.has_global_model else "shared": cpu_copy(self.shared_state())}
        personal = {}
        for cid in self.client_order:
            own = self.client_own_state(cid, self.fleet.kept(cid))
            if own:
                personal[cid] = cpu_copy(own)
        if personal:
            states["clients"] = personal
        return states

    # ----- algorithm hooks ----------------------------------------------------------------------------------
    def client_own_state(self, cid, kept):
        """The entries of client `cid`'s model that are its own (over `shared_state`; {} for a client that uses
        the shared model): what the server holds for it alone, then its `kept` model keys."""
        own = self.own_state(cid)
        own.update(model_entries(kept, self.initial_state))
        return own

    def personal_keys(self):
        """State-dict keys that stay on the clients this round."""
        return []

    def algorithm_settings(self):
        """The algorithm's own typed settings every client receives this round (an instance of the Settings
        dataclass its client declares as `settings_type`); None for algorithms without any."""
        return None

    def finetune_epochs(self):
        """Epochs each client fine-tunes (on a copy) before its personalised test."""
        return self.conf.client.finetune_epoch

    def shared_state(self):
        """What every client loads unless the server holds something for it alone: the global model."""
        return dict(self._model.state_dict())

    def own_state(self, cid):
        """What the server holds for client `cid` alone, over `shared_state` ({} for a client without any)."""
        return {}

    def dispatches(self, cids):
        """{cid: Dispatch} of what each client loads this round: the shared state (worked out once for all of
        `cids`: an evaluation dispatches every client) updated with its own. Personal keys are sent too, as the
        starting values of a client that has none yet; a client's kept state always takes precedence over them."""
        shared, settings, algorithm = self.shared_state(), self.round_settings(), self.algorithm_settings()
        return {cid: Dispatch({**shared, **self.own_state(cid)},
                              replace(settings, local_epoch=self.stragglers.get(cid, settings.local_epoch)),
                              algorithm) for cid in cids}

    def training_dispatch(self, cid, dispatch):
        """What client `cid` trains from this round: its `dispatch` plus what only training needs (e.g. other
        clients' models), so evaluations and checkpoints never carry it."""
        return dispatch

    def aggregate(self, uploads):
        """Default: sample-weighted FedAvg of the shared state into the global model."""
        self.update_global(uploads)

    def update_global(self, uploads, keys=None):
        """Sample-weighted FedAvg of the uploads' `keys` (None: all they carry) into the global model."""
        if not uploads or (keys is not None and not keys):
            return
        merged = agg.weighted_average([u.state for u in uploads], self.upload_weights(uploads), keys)
        self._model.load_state_dict({**self._model.state_dict(), **merged})

    def models_per_dispatch(self):
        """How many model-sized states the largest dispatch carries (a fleet with a message limit checks room)."""
        return 1

    def algorithm_state(self):
        """What the algorithm's server holds beyond the global model and the clients' kept state (FedDyn's h,
        FedCMD's tally and decision, similarity memories): {name: tensor, dict of tensors or JSON value}. Checkpoints
        save it; `load_algorithm_state` puts it back on resume. Subclasses extend their parent's state."""
        return {}

    def load_algorithm_state(self, state):
        """Continue from what `algorithm_state` returned when the checkpoint was written."""

    def upload_weights(self, uploads):
        if self.conf.server.aggregation_strategy == "equal":
            return [1.0] * len(uploads)
        return [float(u.num_samples) for u in uploads]

    # ----- the round ------------------------------------------------------------------------------------------
    def round_settings(self):
        """The RoundSettings every client receives this round; `dispatches` gives the round's stragglers fewer
        local epochs (client.straggler_ratio)."""
        return RoundSettings(round=int(self._current_round), seed=int(self.conf.seed),
                             local_epoch=int(self.conf.client.local_epoch), finetune_epoch=int(self.finetune_epochs()),
                             personal_keys=tuple(self.personal_keys()))

    def clients_per_round(self):
        ratio = self.conf.server.join_ratio
        count = int(round(ratio * len(self.client_order))) if ratio else self.conf.server.clients_per_round
        return max(1, min(count, len(self.client_order)))

    def selection(self, clients=None, clients_per_round=None):
        """Seeded by (seed, round) only, so every rank and every mode selects the same clients."""
        rng = np.random.default_rng(derived_seed(self.conf.seed, self._current_round, "selection"))
        if self.conf.server.random_selection:
            chosen = sorted(rng.choice(len(self.client_order), self.clients_per_round(), replace=False))
        else:
            chosen = range(self.clients_per_round())
        self.selected_clients = [self.client_order[i] for i in chosen]
        self.choose_stragglers(rng)
        return self.selected_clients

    def choose_stragglers(self, rng):
        client = self.conf.client
        count = int(round(client.straggler_ratio * len(self.selected_clients)))
        self.stragglers = {}
        low = min(client.straggler_min_local_epoch, client.local_epoch)
        for cid in rng.permutation(self.selected_clients)[:count]:
            self.stragglers[str(cid)] = int(rng.integers(low, max(low + 1, client.local_epoch)))

    def grouping_for_distributed(self):
        self.grouped_clients = distributed.shard(self.selected_clients, self.rank, self.world)

    def pre_train(self):
        self.round_started = time.time()

    def train(self):
        self.selection()
        self.grouping_for_distributed()
        uploads = self.fleet.train({cid: self.training_dispatch(cid, dispatch)
                                    for cid, dispatch in self.dispatches(self.grouped_clients).items()})
        uploads = distributed.gather_uploads(uploads, self.fleet.report_type)
        self.sync_replicas(uploads)
        uploads.sort(key=lambda u: self.selected_clients.index(u.cid))
        self.round_uploads = uploads
        self.aggregate(uploads)

    def sync_replicas(self, uploads):
        """Distributed: every rank hosts every client, so kept state trained elsewhere is copied here."""
        if self.world == 1:
            return
        for upload in uploads:
            self.fleet.set_kept(upload.cid, upload.kept)

    def post_train(self):
        self.round_seconds = time.time() - self.round_started
        uploads = self.round_uploads
        values = {"round_seconds": self.round_seconds, "images": sum(u.report.images for u in uploads),
                  "clients": len(uploads)}
        if uploads:  # the client the round waited for longest (stragglers, slow devices)
            values["slowest_client_seconds"] = max(u.report.train_seconds for u in uploads)
        trained = [u for u in uploads if u.report.train_loss is not None]
        if trained:  # the mean loss per training sample over the round's last local epochs
            values["train_loss"] = float(np.average([u.report.train_loss for u in trained],
                                                    weights=[u.num_samples for u in trained]))
        self.recorder.log_round(self._current_round, values)
        self.bar.update(1)

    # ----- evaluation -----------------------------------------------------------------------------------------
    def evaluation_clients(self):
        """Every client (or the round's participants); with `evaluation.sample_clients: K`, a sample of K seeded by
        (seed, round), except after the last round, when every client is evaluated."""
        clients = self.client_order if self.conf.evaluation.all_clients else self.selected_clients
        sample = self.conf.evaluation.sample_clients
        if sample and sample < len(clients) and self._current_round + 1 < self.conf.server.rounds:
            rng = np.random.default_rng(derived_seed(self.conf.seed, self._current_round, "evaluation"))
            clients = [clients[i] for i in sorted(rng.choice(len(clients), sample, replace=False))]
        return clients

    def evaluation_splits(self):
        splits = []
        if self.conf.evaluation.eval_test:
            splits.append("test")
        if self.conf.evaluation.eval_train:
            splits.append("train")
        return tuple(splits)

    def test(self):
        splits = self.evaluation_splits()
        if not splits:
            return
        chosen = self.evaluation_clients()
        mine = distributed.shard(chosen, self.rank, self.world)
        results = []
        for start in range(0, len(mine), EVALUATION_CHUNK):  # dispatches of a chunk at a time: bounded memory
            results += self.evaluate_clients(mine[start:start + EVALUATION_CHUNK], splits)
        results = sorted(distributed.gather_json(results), key=lambda r: r["cid"])
        summary = self.summarise_evaluation(results)
        answered = {r["cid"] for r in results}
        summary["expected_clients"] = len(chosen)
        missing = [cid for cid in chosen if cid not in answered]  # e.g. a remote client that did not answer
        if missing:
            summary["missing_eval_clients"] = missing
        population = len(self.client_order if self.conf.evaluation.all_clients else self.selected_clients)
        if len(chosen) < population and summary.get("accuracy") is not None:
            rows = [r for r in results if r.get("test_total")]
            summary["accuracy_ci95_low"], summary["accuracy_ci95_high"] = sampled_accuracy_interval(
                [r["test_correct"] for r in rows], [r["test_total"] for r in rows], population)
            summary["sampled_from"] = population
        self.recorder.log_evaluation(self._current_round, summary, results)
        self.bar.set_postfix_str(self.recorder.headline(summary), refresh=False)

    def evaluate_clients(self, cids, splits):
        """Results per client: its personalised model (test_in_client) or the global model (test_in_server)."""
        if self.conf.test_mode == "test_in_client":
            return self.fleet.evaluate(self.dispatches(cids), splits)
        data = self.experiment.data
        self._model.eval()
        with torch.no_grad():
            return [{"cid": cid, **measure(self._model, {"test": data.test, "train": data.train}, cid, splits,
                                           self.conf.server.batch_size, self.conf.device)} for cid in cids]

    def summarise_evaluation(self, results):
        summary = summarise_classification(results, method=self.conf.test_method)
        one_model = self.conf.test_mode == "test_in_server" or not (self.finetune_epochs() or self.personal_models)
        if self.has_global_model and "accuracy" in summary and one_model:
            summary["global_accuracy"] = summary["accuracy"]  # one model for all clients
        return summary

    def save_model(self):
        """The end of every round (EasyFL's hook): every `server.save_model_every` rounds before the last the models
        go to checkpoints/round_N/ (the final ones are written at the end of the run); every
        `server.checkpoint_every` rounds before the last the resume checkpoint is written."""
        done, rounds = self._current_round + 1, self.conf.server.rounds
        self.rounds_done = done
        every = self.conf.server.save_model_every
        if every and done % every == 0 and done < rounds:
            self.recorder.save_checkpoints(self.model_states(), f"round_{done}")
        every = self.conf.server.checkpoint_every
        if every and done % every == 0 and done < rounds:
            self.write_checkpoint()

    def track_test_results(self, results):
        """Metrics go to the run folder (fedcmd_plugin.tracking), not EasyFL's tracker."""


def cpu_copy(state):
    return {key: value.detach().cpu() for key, value in state.items()}
