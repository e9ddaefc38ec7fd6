"""Federated partitions of a pooled data set: which sample indices each client holds, and its train/test split.

All functions are pure numpy and seeded, so the same arguments always give the same clients.
"""
import numpy as np

from fedcmd_plugin.errors import ConfigError

DRAW_BUDGET = 2_000_000  # client x class cells drawn over all Dirichlet redraws (1000 draws at 100 clients, 10 classes)
MAX_DIRICHLET_DRAWS = 1000


def partition_iid(labels, num_clients, rng):
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def check_min_size(num_samples, num_clients, min_size):
    """An impossible `data.min_size` fails at once, naming the largest client count that could meet it."""
    if num_clients * min_size > num_samples:
        raise ConfigError(f"data.min_size={min_size} cannot be met: {num_clients} clients x {min_size} samples is "
                          f"more than the {num_samples} samples of the data; use at most "
                          f"{num_samples // max(min_size, 1)} clients (data.num_of_clients) or a lower data.min_size")


def dirichlet_draw(by_class, num_clients, alpha, fair_share, balanced, rng):
    """One label-skewed assignment: each class split over the clients by Dirichlet(alpha) shares (clients past
    their fair share get none when `balanced`); returns each sample's client and each client's size."""
    owner = np.empty(sum(len(m) for m in by_class), dtype=np.int64)
    sizes = np.zeros(num_clients, dtype=np.int64)
    for members in by_class:
        members = rng.permutation(members)
        shares = rng.dirichlet(np.full(num_clients, alpha))
        capped = shares * (sizes < fair_share) if balanced else shares
        if capped.sum() > 0:
            shares = capped / capped.sum()
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)  # a zero share gets nothing
        counts = np.diff(np.concatenate(([0], cuts, [len(members)])))
        owner[members] = np.repeat(np.arange(num_clients), counts)
        sizes += counts
    return owner, sizes


def top_up(owner, sizes, min_size, rng):
    """Clients under `min_size` take the samples they lack, at random, from the client then holding most: donors
    hold few classes under label skew, so the skew survives while every client reaches its minimum."""
    sizes = sizes.copy()
    for client in np.flatnonzero(sizes < min_size):
        while sizes[client] < min_size:
            donor = int(np.argmax(sizes))
            take = min(min_size - sizes[client], sizes[donor] - min_size)
            moved = rng.choice(np.flatnonzero(owner == donor), take, replace=False)
            owner[moved] = client
            sizes[donor] -= take
            sizes[client] += take
    return owner


def partition_dirichlet(labels, num_clients, alpha, min_size, rng, balanced=True):
    """Label skew: each class is spread over clients with proportions ~ Dirichlet(alpha).

    `balanced` is the usual protocol's size cap: a client already holding its fair share (len(labels) /
    num_clients) gets no further classes, so sizes stay comparable and label skew stays strong. As is usual for
    this protocol the draw is repeated until every client holds at least `min_size` samples, within a budget of
    DRAW_BUDGET client x class cells; past it the last draw is topped up (`top_up`), so the minimum is always met.
    """
    check_min_size(len(labels), num_clients, min_size)
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    draws = int(np.clip(DRAW_BUDGET // (num_clients * len(classes)), 1, MAX_DIRICHLET_DRAWS))
    for _ in range(draws):
        owner, sizes = dirichlet_draw(by_class, num_clients, alpha, len(labels) / num_clients, balanced, rng)
        if sizes.min() >= min_size:
            break
    else:
        owner = top_up(owner, sizes, min_size, rng)
    return indices_by_owner(owner, num_clients)


def indices_by_owner(owner, num_clients):
    """Each client's sample indices, in ascending order."""
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(owner, minlength=num_clients))[:-1])


def partition_classes(labels, num_clients, class_per_client, rng):
    """Pathological skew: each client holds `class_per_client` classes; each class is shared evenly by its holders."""
    classes = np.unique(labels)
    if class_per_client > len(classes):
        raise ConfigError(f"data.class_per_client={class_per_client} exceeds the {len(classes)} classes of the data")
    # Consecutive windows of k classes over one shuffled class order (wrapping around): k distinct classes per
    # client, and every class has holders when num_clients * k >= the number of classes.
    order = rng.permutation(classes)
    owned = [order[(i * class_per_client + np.arange(class_per_client)) % len(classes)] for i in range(num_clients)]
    owned = np.stack(owned)
    holders = {c: np.flatnonzero((owned == c).any(axis=1)) for c in classes}
    parts = [[] for _ in range(num_clients)]
    for c in classes:
        if not len(holders[c]):
            continue
        members = rng.permutation(np.flatnonzero(labels == c))
        for client, chunk in zip(holders[c], np.array_split(members, len(holders[c]))):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def partition_natural(writers, num_clients, min_size, rng):
    """One client per writer: `num_clients` writers drawn at random from those with at least `min_size` samples
    (as EasyFL's min_size filters LEAF's users), in writer order; each client holds all its writer's samples."""
    counts = np.bincount(writers)
    eligible = np.flatnonzero(counts >= max(min_size, 1))
    if num_clients > len(eligible):
        raise ConfigError(f"data.num_of_clients={num_clients} exceeds the {len(eligible)} writers with at least "
                          f"data.min_size={min_size} samples: set data.num_of_clients to at most {len(eligible)}")
    by_writer = np.split(np.argsort(writers, kind="stable"), np.cumsum(counts)[:-1])
    return [by_writer[w] for w in np.sort(rng.choice(eligible, num_clients, replace=False))]


def train_count(sizes, train_fraction):
    """Training samples of clients holding `sizes` samples (an int or an array): round(size x fraction), at least 1
    and at most size - 1 when the split keeps a test part, so both parts are non-empty from 2 samples on (a single
    sample goes to training)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    cut = np.rint(sizes * train_fraction).astype(np.int64)
    upper = np.where((train_fraction < 1) & (sizes >= 2), sizes - 1, sizes)
    return np.where(sizes >= 1, np.clip(cut, 1, upper), 0)


def split_train_test(indices, train_fraction, rng):
    """One client's samples split into its own train and test parts (`train_count` of them train)."""
    shuffled = rng.permutation(indices)
    cut = int(train_count(len(shuffled), train_fraction))
    return np.sort(shuffled[:cut]), np.sort(shuffled[cut:])


def make_partition(labels, split_type, num_clients, seed, alpha=0.1, min_size=10, class_per_client=2,
                   train_fraction=0.5, balanced=True, writers=None):
    """Per-client (train_indices, test_indices) over the pooled samples, seeded by `seed`; split_type natural
    needs `writers`, each sample's writer."""
    labels = np.asarray(labels)
    if num_clients > len(labels):
        raise ConfigError(f"data.num_of_clients={num_clients} exceeds the {len(labels)} samples of the data")
    rng = np.random.default_rng(seed)
    if split_type == "iid":
        parts = partition_iid(labels, num_clients, rng)
    elif split_type == "dir":
        parts = partition_dirichlet(labels, num_clients, alpha, min_size, rng, balanced)
    elif split_type == "class":
        parts = partition_classes(labels, num_clients, class_per_client, rng)
    elif split_type == "natural":
        parts = partition_natural(writers, num_clients, min_size, rng)
    else:
        raise ConfigError(f"data.split_type must be iid, dir, class or natural; got {split_type!r}")
    return [split_train_test(part, train_fraction, rng) for part in parts]


def label_histograms(labels, parts, num_classes):
    """clients x classes counts of the given per-client index arrays."""
    pooled = labels[np.concatenate(parts)] if len(parts) else labels[:0]
    return pooled_histograms(pooled, [len(p) for p in parts], num_classes)


def pooled_histograms(labels, sizes, num_classes):
    """clients x classes counts of labels pooled client by client (client i holds the next sizes[i] labels)."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    counts = np.bincount(owner * num_classes + labels, minlength=len(sizes) * num_classes)
    return counts.reshape(len(sizes), num_classes)
