"""A finished run folder read back: its config, metrics and summary, and ready PyTorch models from checkpoints/."""
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedcmd_plugin.errors import PluginError


@dataclass
class Run:
    folder: Path
    config: DictConfig  # the resolved config the run used (config.yaml)
    metrics: list  # one dict per round (metrics.json; empty when output.save_metrics was off)
    summary: dict  # summary.json: final metrics, seconds per round, algorithm notes

    @property
    def clients(self):
        """The run's client ids (partition.csv)."""
        with open(self.folder / "partition.csv", newline="") as handle:
            return [row["client"] for row in csv.DictReader(handle)]

    def model(self, client=None):
        """The global model (client=None) or client `client`'s model, as the run ended, in eval mode on the CPU.

        A client of an algorithm that keeps nothing on the clients (e.g. FedAvg) gets the global model. Models
        are the states before any `client.finetune_epoch` fine-tuning, which happens on a copy at test time.
        """
        from fedcmd_plugin.data.federated import DataInfo
        from fedcmd_plugin.registry import get_algorithm

        if not self.summary.get("data"):
            raise PluginError(f"run {self.folder} predates load_run: its summary.json lacks the data's shape")
        state = self.state(client)
        model = get_algorithm(self.config.algorithm).model(self.config, DataInfo(**self.summary["data"]))
        model.load_state_dict(state)
        return model.eval()

    def state(self, client=None):
        """The checkpointed state dict of the global model, or of `client`: the shared state (global.pt, or
        shared.pt where the algorithm has no global model) updated with the client's own state from clients.pt."""
        import torch

        folder = self.folder / "checkpoints"
        if not folder.is_dir():
            raise PluginError(f"run {self.folder} has no checkpoints/ (output.save_model was false)")

        def load(name):
            path = folder / name
            return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}

        if client is None:
            if not (folder / "global.pt").is_file():
                raise PluginError(f"run {self.folder} has no global model (algorithm {self.config.algorithm!r} "
                                  f"keeps a model per client): name a client, e.g. model('{self.clients[0]}')")
            return load("global.pt")
        if client not in self.clients:
            raise PluginError(f"run {self.folder} has no client {client!r}; its clients: {', '.join(self.clients)}")
        return {**(load("global.pt") or load("shared.pt")), **load("clients.pt").get(client, {})}


def load_run(folder):
    """The complete run in `folder` (a run folder below output.root) as a `Run`."""
    folder = Path(folder)
    status = folder / "status.json"
    if not status.is_file():
        raise PluginError(f"{folder} is not a run folder (no status.json)")
    state = json.loads(status.read_text()).get("state")
    if state != "complete":
        raise PluginError(f"run {folder} is not complete (status: {state})")
    summary = json.loads((folder / "summary.json").read_text())
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else []
    return Run(folder, OmegaConf.load(str(folder / "config.yaml")), metrics, summary)
