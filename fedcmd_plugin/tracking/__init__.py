"""One folder per run: resolved config, partition, per-round metrics (CSV + JSON), TensorBoard events,
checkpoints, PNG plots, and status.json that says running / complete / stopped / failed."""
from fedcmd_plugin.tracking.recorder import Recorder

__all__ = ["Recorder"]
