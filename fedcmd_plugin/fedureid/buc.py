"""Bottom-up clustering (BUC): one vectorised, blockwise relabel step.

Semantics of `merge_step` (the single source of truth for them):

* **Distance.** Features are L2-normalised here, and the distance between two images is the euclidean distance
  of their normalised features, ``sqrt(2 - 2 cos)`` (range 0..2).
* **Dissimilarity** of clusters A != B: ``min over a in A, b in B of dist(a, b) + size_penalty * (|A| + |B|)``.
  Pairs of images inside one cluster never count.
* **Merge count.** Cluster pairs are taken in increasing dissimilarity (ties: smaller cluster ids first), as in
  Kruskal's algorithm: a pair whose two clusters were already joined earlier in this step is skipped, every
  other pair is merged. Dissimilarities are those at the start of the step. The step stops after exactly
  ``min(merge_count, C - 1)`` merges, so the number of clusters drops by exactly that amount.
* **Relabel.** New labels are contiguous 0..C'-1, ordered by the smallest old cluster id in each new cluster.

How it stays fast: images are sorted by cluster and cut into row blocks that never split a cluster. Block rows
are compared only with images of the same or later clusters, so every cluster pair is seen complete in exactly
one block and the similarity matrix is never held whole. Per block the maximum similarity per cluster pair is
taken with tensor reductions, and only pairs below the running threshold (the K-th smallest dissimilarity
found so far, K a few times the merge count; every pair when there are few clusters) are kept. If the kept
pairs cannot give enough merges (many fall inside groups joined earlier in the step), the pass is repeated
with a larger K. Python loops run only over blocks and over the sorted kept pairs during union-find (stopping
at the last merge), never over images or over all pairs.
"""
import math

import torch
import torch.nn.functional as F

from fedcmd_plugin.errors import ConfigError, DataError

DEFAULT_BLOCK_SIZE = 1024  # rows per block: one block of similarities is block_size x N floats
KRUSKAL_CHUNK = 8192  # sorted pairs moved to Python at a time
DENSE_PAIRS = 1 << 19  # up to this many cluster pairs (about 1,000 clusters) all pairs are kept in one pass


def merge_step(features, labels, merge_count, size_penalty=0.003, block_size=DEFAULT_BLOCK_SIZE):
    """One BUC step: merge the `merge_count` least dissimilar cluster pairs and relabel 0..C'-1.

    `features` is [N, D] (any device), `labels` [N] integer cluster ids (any values). Returns a LongTensor [N]
    on the labels' device. See the module docstring for the exact semantics. `block_size` bounds the rows of
    similarities held at once (a cluster larger than that gets a block of its own).
    """
    features, labels = _check_inputs(features, labels, merge_count, size_penalty, block_size)
    _, labels = torch.unique(labels, return_inverse=True)  # contiguous 0..C-1, ordered by old id
    num_clusters = int(labels.max()) + 1 if labels.numel() else 0
    merges = min(merge_count, max(num_clusters - 1, 0))
    if merges == 0:
        return labels

    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    feats = F.normalize(features[order].float(), dim=1)
    if not torch.isfinite(feats.sum(dim=1)).all():  # NaN or inf anywhere in a row makes its normalised row NaN
        raise DataError("merge_step features: expected finite values, found NaN or inf")
    sizes = torch.bincount(labels, minlength=num_clusters)
    offsets = torch.zeros(num_clusters + 1, dtype=torch.long, device=labels.device)
    offsets[1:] = torch.cumsum(sizes, 0)

    total_pairs = num_clusters * (num_clusters - 1) // 2
    keep = total_pairs if total_pairs <= DENSE_PAIRS else 4 * merges + 64
    while True:
        pair_a, pair_b, complete = _closest_pairs(feats, sorted_labels, sizes, offsets, size_penalty, block_size,
                                                  keep)
        parent, done = _kruskal(pair_a, pair_b, num_clusters, merges)
        if done == merges or complete:
            break
        # Too many kept pairs fell inside groups joined earlier in the step: widen by the shortfall and redo.
        keep = min(total_pairs, keep * max(4, math.ceil(2 * merges / done)))

    parent = torch.tensor(parent, dtype=torch.long, device=labels.device)
    while True:  # pointer jumping: every cluster points at its group's root
        jumped = parent[parent]
        if torch.equal(jumped, parent):
            break
        parent = jumped
    _, group = torch.unique(parent, return_inverse=True)
    return group[labels]


def _check_inputs(features, labels, merge_count, size_penalty, block_size):
    """Raise a one-line error for inputs merge_step cannot use; return the tensors."""
    features, labels = torch.as_tensor(features), torch.as_tensor(labels)
    if features.dim() != 2:
        raise DataError(f"merge_step features: expected a [N, D] tensor, got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise DataError(f"merge_step labels: expected shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"merge_step labels: expected integer cluster ids, got {labels.dtype}")
    if isinstance(merge_count, bool) or not isinstance(merge_count, int) or merge_count < 0:
        raise ConfigError(f"merge_step merge_count: expected an integer >= 0, got {merge_count!r}")
    if isinstance(size_penalty, bool) or not isinstance(size_penalty, (int, float)) or not size_penalty >= 0:
        raise ConfigError(f"merge_step size_penalty: expected a number >= 0, got {size_penalty!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"merge_step block_size: expected an integer >= 1, got {block_size!r}")
    return features, labels.long()


def _closest_pairs(feats, sorted_labels, sizes, offsets, size_penalty, block_size, keep):
    """All cluster pairs (a < b) with dissimilarity below a threshold that leaves about `keep` of them.

    Returns (a, b, complete): pairs sorted by (dissimilarity, a, b); `complete` is True when no pair was cut
    off, i.e. the result holds every cluster pair.
    """
    device = feats.device
    num_clusters = sizes.numel()
    penalty = size_penalty * sizes.float()
    # Smallest penalty among clusters >= c: a lower bound for the penalty of any pair in a block.
    suffix_min = torch.flip(torch.cummin(torch.flip(penalty, [0]), 0).values, [0])
    threshold = math.inf
    values = torch.empty(0, device=device)
    pairs = torch.empty(0, dtype=torch.long, device=device)  # key a * C + b
    first = 0
    while first < num_clusters:
        row0 = int(offsets[first])
        last = int(torch.searchsorted(offsets, row0 + block_size, right=True)) - 1
        last = min(max(last, first + 1), num_clusters)  # clusters [first, last) form the block
        row1 = int(offsets[last])
        block_values, block_pairs, threshold = _block_pairs(feats, sorted_labels, penalty, suffix_min, first,
                                                            last, row0, row1, threshold, keep)
        values, pairs = torch.cat([values, block_values]), torch.cat([pairs, block_pairs])
        if values.numel() > keep:  # never when keep covers every pair: then the result is complete
            threshold = float(torch.kthvalue(values.cpu(), keep + 1).values)
            below = values < threshold  # strict: every pair below the threshold is known exactly
            values, pairs = values[below], pairs[below]
        first = last
    # Blocks, and rows within a block, come in cluster order, so pairs arrive sorted by key a * C + b and one
    # stable sort by value leaves ties ordered by (a, b).
    pairs = pairs[torch.argsort(values, stable=True)]
    return pairs // num_clusters, pairs % num_clusters, threshold == math.inf


def _block_pairs(feats, sorted_labels, penalty, suffix_min, first, last, row0, row1, threshold, keep):
    """Exact dissimilarities and keys of the block's cluster pairs (a in [first, last), b > a) below a threshold.

    Returns (values, keys, threshold). With no threshold yet (infinite), one is first taken from each row's
    few most similar clusters, so that at least `keep` pairs of the block lie at or below it.
    """
    num_clusters = penalty.numel()
    sim = feats[row0:row1] @ feats[row0:].T  # rows: this block's images; columns: images of clusters >= first
    cols = num_clusters - first
    if sim.shape[1] != cols:  # some column cluster has several images: max over each cluster's columns
        index = (sorted_labels[row0:] - first).expand(sim.shape[0], -1)
        sim = torch.full((sim.shape[0], cols), -math.inf, device=sim.device).scatter_reduce_(1, index, sim, "amax")
    rows = last - first
    if sim.shape[0] != rows:  # same over each cluster's rows
        index = (sorted_labels[row0:row1] - first).unsqueeze(1).expand(-1, cols)
        sim = torch.full((rows, cols), -math.inf, device=sim.device).scatter_reduce_(0, index, sim, "amax")
    ids = torch.arange(rows, device=sim.device)
    sim[:, :rows].masked_fill_(ids[None, :] <= ids[:, None], -math.inf)  # b <= a: same cluster or other order
    row_penalty, col_penalty = penalty[first:last], penalty[first:]

    if threshold == math.inf and rows * cols - rows * (rows + 1) // 2 > keep:
        top, col = torch.topk(sim, min(cols, -(-keep // rows)), dim=1)
        top = torch.sqrt(torch.clamp(2.0 - 2.0 * top, min=0.0)) + row_penalty[:, None] + col_penalty[col]
        top = top[torch.isfinite(top)]
        if top.numel() >= keep:
            threshold = float(torch.kthvalue(top.cpu(), keep).values)
    if threshold < math.inf:
        # Cheap superset first: dissimilarity < threshold needs sim > floor, with the smallest penalties possible.
        gap = threshold - float(row_penalty.min() + suffix_min[first])
        if gap <= 0:
            return sim.new_empty(0), torch.empty(0, dtype=torch.long, device=sim.device), threshold
        floor = 1.0 - gap * gap / 2.0 - 1e-6  # a hair lower, so float rounding cannot drop a boundary pair
        hot = torch.nonzero(sim.amax(dim=1) > floor).squeeze(1)  # rows with at least one candidate
        hot_row, col = torch.nonzero(sim[hot] > floor, as_tuple=True)
        row = hot[hot_row]
    else:
        row, col = torch.nonzero(sim > -math.inf, as_tuple=True)
    values = torch.sqrt(torch.clamp(2.0 - 2.0 * sim[row, col], min=0.0)) + row_penalty[row] + col_penalty[col]
    below = values < threshold
    return values[below], ((row + first) * num_clusters + col + first)[below], threshold


def _kruskal(pair_a, pair_b, num_clusters, merges):
    """Union-find over the sorted pairs until `merges` joins; returns (parent list, joins made)."""
    parent = list(range(num_clusters))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    done = 0
    for start in range(0, pair_a.numel(), KRUSKAL_CHUNK):  # most steps end in the first chunk
        for a, b in zip(pair_a[start:start + KRUSKAL_CHUNK].tolist(), pair_b[start:start + KRUSKAL_CHUNK].tolist()):
            root_a, root_b = find(a), find(b)
            if root_a == root_b:
                continue
            parent[max(root_a, root_b)] = min(root_a, root_b)  # the group keeps its smallest cluster id as root
            done += 1
            if done == merges:
                return parent, done
    return parent, done
