"""FedUReID's edge: unsupervised training on pseudo labels from bottom-up clustering (BUC).

Each round: load the model the cloud sent -> train on the current pseudo labels with the exclusive memory-bank
loss (personalised epoch: the number of epochs follows the data volume and stops when training precision
saturates) -> extract features and run one BUC merge step (personalised clustering: the edge's own merge
amount) -> rebuild the memory. The memory and the pseudo labels are the edge's kept state: never aggregated.
"""
import time
from dataclasses import dataclass, replace

import torch

from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.messages import Report, Settings, Upload
from fedcmd_plugin.federation.seeding import client_generator
from fedcmd_plugin.fedureid import buc, metrics, personalization
from fedcmd_plugin.fedureid.memory import ClusterMemory


@dataclass(frozen=True)
class FedUReIDSettings(Settings):
    """An edge's round: personalised epochs (PE) and clustering (PC), BUC's merging and the memory bank."""
    personalized_epoch: bool
    personalized_clustering: bool
    merge_percent: float
    size_penalty: float
    target_clusters: int | None
    remaining_steps: int
    temperature: float
    momentum: float
    reference_images: float | None
    patience: int
    precision_threshold: float
    saturation: float


@dataclass(frozen=True)
class FedUReIDReport(Report):
    """An edge's round beside the images it trained on: the epochs it ran (PE may stop early), the training
    precision of its last epoch, its clusters after the round's merges, the images whose features it extracted
    and the seconds relabelling took."""
    epochs: int
    train_precision: float
    clusters: int
    merges: int
    images_extracted: int
    relabel_seconds: float


class FedUReIDClient(FederatedClient):
    settings_type = FedUReIDSettings
    report_type = FedUReIDReport

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.round_stats = {}  # the round's FedUReIDReport fields so far

    def download(self, dispatch):
        """Model state from the cloud only: the kept memory and labels are not model parameters."""
        self.dispatch = dispatch
        state = dict(self.initial_state)
        state.update(dispatch.state)
        self.model.load_state_dict(state)
        self.model.to(self.device)

    def settings(self):
        return self.dispatch.algorithm

    @property
    def images(self):
        return self.train_data.part(self.cid, "train")

    @torch.no_grad()
    def features(self, part, batch_size=None):
        self.model.eval()
        batch_size = batch_size or self.conf.test_batch_size
        return torch.cat([self.model(x) for _, x in part.batches(batch_size, self.device)])

    def memory_from_kept(self):
        s = self.settings()
        if "labels" not in self.kept:  # first round: every image is its own cluster
            labels = torch.arange(len(self.images))
            memory = ClusterMemory(len(labels), self.model.out_dim, s.temperature, s.momentum).to(self.device)
            memory.rebuild(self.features(self.images), labels.to(self.device))
            self.round_stats["images_extracted"] = len(self.images)
            return labels, memory
        memory = ClusterMemory(1, self.model.out_dim, s.temperature, s.momentum).to(self.device)
        memory.vectors = self.kept["memory"].to(self.device).clone()
        return self.kept["labels"].clone(), memory

    def train(self, conf, device="cpu"):
        s = self.settings()
        labels, memory = self.memory_from_kept()
        labels_on_device = labels.to(self.device)
        optimizer = self.make_optimizer(self.model.parameters())
        generator = client_generator(self.dispatch.settings, self.cid, "train")
        history, epochs_run, images = [], 0, 0
        planned = self.local_epochs(self.dispatch)
        for _ in self.progress.epochs(planned, f"{self.cid} train"):
            if s.personalized_epoch and epochs_run >= personalization.adaptive_epochs(
                    planned, len(self.images), s.reference_images or len(self.images), history,
                    patience=s.patience, threshold=s.precision_threshold, saturation=s.saturation):
                break
            self.model.train()
            correct, seen = 0, 0
            order = torch.randperm(len(self.images), generator=generator)
            for index, x in self.images.batches(self.conf.batch_size, self.device, order):
                if len(index) < 2:
                    continue  # BatchNorm needs two samples
                flip = torch.rand(len(index), generator=generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
                y = labels_on_device[index.to(self.device)]
                optimizer.zero_grad(set_to_none=True)
                feats = self.model(x)
                loss = memory.loss(feats, y)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    correct += int(((feats @ memory.vectors.T).argmax(1) == y).sum())
                memory.update(feats, y)
                seen += len(index)
            history.append(correct / max(seen, 1))
            epochs_run += 1
            images += seen
        self.relabel(labels, memory, s)
        self.report = replace(self.report, images=images)
        self.round_stats.update(epochs=epochs_run, train_precision=history[-1] if history else 0.0)

    def relabel(self, labels, memory, s):
        """One BUC step on the current features, then the memory is rebuilt for the new labels."""
        started = time.time()
        feats = self.features(self.images)
        clusters = int(labels.max()) + 1
        if s.personalized_clustering:
            merges = personalization.merge_amount(len(self.images), clusters, s.target_clusters,
                                                  max(1, s.remaining_steps))
        else:
            merges = min(clusters - 1, round(s.merge_percent * len(self.images)))
        new_labels = buc.merge_step(feats, labels.to(feats.device), merges, s.size_penalty).cpu()
        memory.rebuild(feats, new_labels.to(feats.device))
        self.kept = {"labels": new_labels, "memory": memory.vectors.detach().cpu().clone()}
        self.round_stats.update(clusters=int(new_labels.max()) + 1, merges=merges,
                                images_extracted=self.round_stats.get("images_extracted", 0) + len(self.images),
                                relabel_seconds=time.time() - started)

    def make_upload(self, dispatch):
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        stats, self.round_stats = self.round_stats, {}
        return Upload(self.cid, len(self.images), state, dict(self.kept), {}, self.take_report(),
                      FedUReIDReport(**stats))

    def evaluate(self, dispatch, splits=("test",)):
        """mAP and CMC of the edge's model on its own query/gallery; pseudo-label quality on its train images."""
        self.download(dispatch)
        query, gallery = self.test_data.part(self.cid, "query"), self.test_data.part(self.cid, "gallery")
        result = metrics.evaluate(self.features(query), query.pids, query.cams, self.features(gallery),
                                  gallery.pids, gallery.cams)
        row = {"mAP": 100 * result["mAP"], "rank1": 100 * result["rank1"], "rank5": 100 * result["rank5"],
               "rank10": 100 * result["rank10"], "cmc": [round(100 * float(v), 2) for v in result["cmc"][:20]],
               "queries": result["num_queries"]}
        if "labels" in self.kept:
            quality = metrics.pseudo_label_quality(self.kept["labels"], self.images.pids)
            row.update(nmi=float(quality["nmi"]), pairwise_f=float(quality["pairwise_f"]),
                       clusters=int(self.kept["labels"].max()) + 1)
        return row
