"""The client every algorithm builds on: EasyFL's BaseClient with seeded, pre-batched local training.

A round is `run_round(dispatch)`: download (initial < server state < the client's kept state) -> pre_train ->
train -> post_train -> `make_upload`. Algorithms override `train_batch`, `training_batches`, `personal_keys`,
`post_train` or `make_upload`; nothing here knows which mode (standalone, distributed, remote) is running.

`kept` holds the model's personal keys and, under names that are not model keys, whatever else an algorithm keeps
(a personal model, gradient state): `download` loads only the model's part and `make_upload` carries the rest over.
"""
import copy
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from easyfl.client import BaseClient

from fedcmd_plugin.federation.evaluation import measure
from fedcmd_plugin.federation.messages import TrainingReport, Upload
from fedcmd_plugin.federation.progress import SILENT
from fedcmd_plugin.federation.seeding import client_generator
from fedcmd_plugin.models import has_batch_norm


def model_entries(kept, model_state):
    """The entries of `kept` that are model state (its keys are `model_state`'s)."""
    return {key: value for key, value in kept.items() if key in model_state}


class FederatedClient(BaseClient):
    settings_type = None  # the Settings dataclass of the algorithm's part of each Dispatch (None: it has none)
    report_type = None  # the Report dataclass of the algorithm's part of each Upload (None: it reports nothing extra)

    def __init__(self, cid, conf, train_data, test_data, device, **kwargs):
        super().__init__(cid, conf, train_data, test_data, device, **kwargs)
        self.kept = {}  # the client's own tensors (personal layers, memories): never aggregated
        self.initial_state = None  # the starting parameters shared by all clients of this process
        self.dispatch = None
        self.report = TrainingReport()  # what the round's training reports so far
        self.progress = SILENT

    def attach(self, model, initial_state, progress=SILENT):
        """Share the process's workspace model (one per process, not one per client; whoever builds it moves it to
        the clients' device once), the initial state and the run's progress bars."""
        self.model = model
        self.initial_state = initial_state
        self.progress = progress

    def personal_keys(self, dispatch):
        """State-dict keys this client keeps for itself; the server names them per round."""
        return list(dispatch.settings.personal_keys)

    def download(self, dispatch):
        self.dispatch = dispatch
        state = dict(self.initial_state)
        state.update(dispatch.state)
        state.update(model_entries(self.kept, self.initial_state))
        self.model.load_state_dict(state)

    def run_round(self, dispatch):
        started = time.time()
        try:
            self.download(dispatch)
            self.pre_train()
            self.train(self.conf, self.device)
            self.post_train()
            upload = self.make_upload(dispatch)
        finally:
            self.release()
        upload.report = replace(upload.report, train_seconds=time.time() - started)
        return upload

    def release(self):
        """Forget what the round's work needed once it is done: client objects live for the whole run, and 10,000
        evaluated clients holding their dispatch would hold 10,000 copies of the model."""
        self.dispatch = None

    def local_epochs(self, dispatch):
        return dispatch.settings.local_epoch

    def make_optimizer(self, parameters, lr=None):
        opt = self.conf.optimizer
        lr = opt.lr if lr is None else lr
        if opt.type == "Adam":
            return torch.optim.Adam(parameters, lr=lr, weight_decay=opt.weight_decay)
        return torch.optim.SGD(parameters, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)

    def train(self, conf, device="cpu"):
        """Local SGD over the client's batches, seeded by (run seed, round, client)."""
        self.model.train()
        optimizer = self.make_optimizer(self.model.parameters())
        self.run_epochs(optimizer, self.local_epochs(self.dispatch), "train")

    def run_epochs(self, optimizer, epochs, label):
        """`epochs` passes over the client's shuffled batches; returns the mean loss of the last epoch.

        With BatchNorm layers a last batch of one sample joins the batch before it: BatchNorm cannot normalise a
        single value per channel (and one sample's own statistics say nothing of the data), while merging keeps
        every sample in every epoch.
        """
        generator = client_generator(self.dispatch.settings, self.cid, label)
        min_last = 2 if has_batch_norm(self.model) else 1
        loss_sum, seen = 0.0, 0
        for epoch in self.progress.epochs(epochs, f"{self.cid} {label}"):
            loss_sum, seen = 0.0, 0
            for batch_index, (x, y) in enumerate(self.training_batches(generator, min_last)):
                optimizer.zero_grad(set_to_none=True)
                loss = self.train_batch(x, y, epoch, batch_index)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                seen += len(y)
        train_loss = loss_sum / max(seen, 1)
        self.report = replace(self.report, images=self.report.images + seen * epochs, train_loss=train_loss)
        return train_loss

    def training_batches(self, generator, min_last):
        """One epoch's shuffled batches of the samples this client trains on (override to hold some out)."""
        return self.train_data.batches(self.cid, self.conf.batch_size, generator, self.device, min_last)

    def train_batch(self, x, y, epoch, batch_index):
        """The loss of one batch (override to observe activations or change the objective)."""
        return F.cross_entropy(self.model(x), y)

    def post_train(self):
        pass

    def make_upload(self, dispatch):
        personal = set(self.personal_keys(dispatch))
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        own = {k: v for k, v in self.kept.items() if k not in state}
        self.kept = {**own, **{k: state[k] for k in personal}}
        shared = {k: v for k, v in state.items() if k not in personal}
        return Upload(self.cid, self.train_data.size(self.cid), shared, dict(self.kept), {}, self.take_report())

    def take_report(self):
        """The round's TrainingReport; the next round's starts afresh."""
        report, self.report = self.report, TrainingReport()
        return report

    def load_personalised(self, dispatch):
        """Put the model this client uses (tests, fine-tunes) into the workspace: by default what `download`
        loads; algorithms with a model of their own beside the global one (Ditto, APFL) load that."""
        self.download(dispatch)

    def personalised_model(self, dispatch):
        """The model this client would use now: the server's state for it plus its own kept state,
        fine-tuned on a copy for `client.finetune_epoch` epochs when set."""
        self.load_personalised(dispatch)
        epochs = dispatch.settings.finetune_epoch
        if epochs <= 0:
            return self.model
        tuned = copy.deepcopy(self.model)
        workspace, self.model = self.model, tuned
        try:
            self.model.train()
            self.run_epochs(self.make_optimizer(self.model.parameters()), epochs, "finetune")
        finally:
            self.model = workspace
            self.report = TrainingReport()  # fine-tuning before a test is no part of a round's training
        return tuned

    def evaluate(self, dispatch, splits=("test",)):
        """Accuracy and loss of the client's personalised model on its own splits."""
        try:
            model = self.personalised_model(dispatch)
            model.eval()
            with torch.no_grad():
                return measure(model, {"test": self.test_data, "train": self.train_data}, self.cid, splits,
                               self.conf.test_batch_size, self.device)
        finally:
            self.release()
