"""Exclusive memory-bank loss: the memory of cluster vectors is the classifier of FedUReID's edge model.

One L2-normalised vector per pseudo label. The loss is the cross-entropy of the cosine similarities between a
batch's features and every memory vector, divided by the temperature: ``temperature=0.1`` gives the scale 10
used by BUC and FedUReID, so the logits range over [-10, 10]. The memory is a buffer, not a parameter: it is
updated by moving average, never by the optimiser, and it is local to an edge (its size is the edge's cluster
count), so it is never aggregated.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fedcmd_plugin.errors import ConfigError, DataError


class ClusterMemory(nn.Module):
    """Cluster memory V [num_clusters, dim] with `loss`, `update` (moving average) and `rebuild` (from means)."""

    def __init__(self, num_clusters, dim, temperature=0.1, momentum=0.5):
        super().__init__()
        if not 0 < temperature <= 1:
            raise ConfigError(f"memory temperature: expected a value in (0, 1] that divides the cosine logits "
                              f"(0.1 = the paper's scale 10), got {temperature!r}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"memory momentum: expected a value in [0, 1), got {momentum!r}")
        if num_clusters < 1 or dim < 1:
            raise ConfigError(f"memory size: expected num_clusters >= 1 and dim >= 1, got {num_clusters}, {dim}")
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("vectors", torch.zeros(num_clusters, dim))

    @property
    def num_clusters(self):
        """Number of pseudo labels the memory holds."""
        return self.vectors.shape[0]

    def loss(self, features, labels):
        """Cross-entropy of ``features @ V.T / temperature`` against the pseudo labels (grad to features only)."""
        labels = self._check(features, labels)
        logits = F.normalize(features, dim=1) @ self.vectors.T / self.temperature
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def update(self, features, labels):
        """V[y] <- normalise(momentum * V[y] + (1 - momentum) * mean of the batch features labelled y)."""
        labels = self._check(features, labels)
        feats = F.normalize(features.detach(), dim=1).to(self.vectors.dtype)
        present, inverse = torch.unique(labels, return_inverse=True)
        means = torch.zeros(present.numel(), feats.shape[1], device=feats.device, dtype=feats.dtype)
        means.index_add_(0, inverse, feats)
        means /= torch.bincount(inverse, minlength=present.numel()).unsqueeze(1).to(feats.dtype)
        blended = self.momentum * self.vectors[present] + (1 - self.momentum) * means
        self.vectors[present] = F.normalize(blended, dim=1)

    @torch.no_grad()
    def rebuild(self, features, labels):
        """Resize the memory to the new pseudo labels (contiguous 0..C-1) and set each vector to its cluster mean."""
        features, labels = torch.as_tensor(features), torch.as_tensor(labels).long().to(features.device)
        if features.dim() != 2 or labels.dim() != 1 or labels.numel() != features.shape[0] or not labels.numel():
            raise DataError(f"memory rebuild: expected [N, D] features and N labels, got {tuple(features.shape)} "
                            f"and {tuple(labels.shape)}")
        num_clusters = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=num_clusters)
        if int(labels.min()) < 0 or bool((counts == 0).any()):
            raise DataError("memory rebuild: labels must be contiguous 0..C-1 (relabel after each merge step)")
        feats = F.normalize(features.detach().float(), dim=1)
        sums = torch.zeros(num_clusters, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
        self.vectors = F.normalize(sums / counts.unsqueeze(1), dim=1).to(self.vectors.device)
        return self

    def _check(self, features, labels):
        """Labels as a LongTensor on the features' device; a one-line error if they do not fit the memory."""
        labels = torch.as_tensor(labels, device=features.device).long()
        if features.dim() != 2 or features.shape[1] != self.vectors.shape[1] or labels.shape != features.shape[:1]:
            raise DataError(f"memory: expected [N, {self.vectors.shape[1]}] features and N labels, got "
                            f"{tuple(features.shape)} and {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_clusters):
            raise DataError(f"memory: pseudo labels must lie in 0..{self.num_clusters - 1}, got "
                            f"{int(labels.min())}..{int(labels.max())}")
        return labels
