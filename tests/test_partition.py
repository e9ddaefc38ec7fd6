"""Federated partitions: coverage, per-client train/test splits, label skew, seeding, and the on-disk cache."""
import numpy as np
import pytest

from fedcmd_plugin import ConfigError, load_config
from fedcmd_plugin.data import federated
from fedcmd_plugin.data.partition import label_histograms, make_partition

NUM_CLASSES = 10


def pooled_labels(per_class=300, num_classes=NUM_CLASSES):
    """Balanced labels in a shuffled order (so index order says nothing about the class)."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(123).permutation(labels)


def client_indices(parts):
    return [np.concatenate([train, test]) for train, test in parts]


SPLITS = [
    ("iid", {}),
    ("dir", {"alpha": 0.1, "min_size": 10}),
    ("dir", {"alpha": 1.0, "min_size": 10}),
    ("class", {"class_per_client": 2}),
]


@pytest.mark.parametrize("split_type,kwargs", SPLITS)
@pytest.mark.parametrize("num_clients", [7, 20])
def test_every_sample_assigned_exactly_once(split_type, kwargs, num_clients):
    labels = pooled_labels()
    parts = make_partition(labels, split_type, num_clients, seed=3, **kwargs)
    assert len(parts) == num_clients
    everything = np.concatenate(client_indices(parts))
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(labels)))
    for train, test in parts:
        assert not np.intersect1d(train, test).size


@pytest.mark.parametrize("split_type,kwargs", SPLITS)
def test_each_client_split_half_train_half_test(split_type, kwargs):
    parts = make_partition(pooled_labels(), split_type, 12, seed=1, **kwargs)
    for train, test in parts:
        total = len(train) + len(test)
        assert total >= 2
        assert abs(len(train) - len(test)) <= 1, (len(train), len(test))


@pytest.mark.parametrize("fraction", [0.2, 0.8])
def test_train_fraction_is_per_client(fraction):
    parts = make_partition(pooled_labels(), "dir", 10, seed=2, alpha=0.5, train_fraction=fraction)
    for train, test in parts:
        total = len(train) + len(test)
        assert abs(len(train) - fraction * total) <= 1
        assert len(train) >= 1 and len(test) >= 1


def skew(labels, parts):
    """Mean number of classes a client holds, and the mean share of its most frequent class."""
    hist = label_histograms(labels, client_indices(parts), NUM_CLASSES)
    classes = (hist > 0).sum(axis=1).mean()
    top_share = (hist.max(axis=1) / hist.sum(axis=1)).mean()
    return classes, top_share


def test_label_skew_grows_as_alpha_falls():
    labels = pooled_labels()
    alphas = [100.0, 1.0, 0.1]
    classes, shares = [], []
    for alpha in alphas:
        per_seed = [skew(labels, make_partition(labels, "dir", 20, seed=s, alpha=alpha, min_size=5))
                    for s in range(3)]
        classes.append(np.mean([c for c, _ in per_seed]))
        shares.append(np.mean([t for _, t in per_seed]))
    assert classes[0] > classes[1] > classes[2], classes
    assert shares[0] < shares[1] < shares[2], shares
    # Dir(100) is close to IID: nearly every client sees every class, none dominated by one class.
    assert classes[0] > 9.5 and shares[0] < 0.2
    # Dir(0.1) is strongly skewed: a handful of classes per client, the top class holds most samples.
    assert classes[2] < 5 and shares[2] > 0.5


def test_iid_clients_hold_every_class_in_similar_amounts():
    labels = pooled_labels()
    parts = make_partition(labels, "iid", 10, seed=0)
    sizes = [len(p) for p in client_indices(parts)]
    assert max(sizes) - min(sizes) <= 1
    classes, _ = skew(labels, parts)
    assert classes == NUM_CLASSES


def test_dirichlet_respects_min_size():
    labels = pooled_labels()
    parts = make_partition(labels, "dir", 20, seed=4, alpha=0.1, min_size=40)
    assert min(len(p) for p in client_indices(parts)) >= 40


@pytest.mark.parametrize("seed", range(3))
def test_balanced_dirichlet_gives_no_class_to_a_client_past_its_fair_share(seed):
    """Classes are dealt in label order; a client that held its fair share of the earlier classes gets none of
    the later ones, and without the cap some such client does."""
    labels = pooled_labels()
    fair_share = len(labels) / 20

    def violations(balanced):
        parts = make_partition(labels, "dir", 20, seed=seed, alpha=0.1, min_size=5, balanced=balanced)
        counts = label_histograms(labels, client_indices(parts), NUM_CLASSES)
        held_before = np.cumsum(counts, axis=1) - counts  # samples of the classes dealt before each class
        return int(((held_before >= fair_share) & (counts > 0)).sum())

    assert violations(balanced=True) == 0
    assert violations(balanced=False) > 0


def test_impossible_min_size_is_a_config_error_naming_the_largest_client_count():
    with pytest.raises(ConfigError, match=r"data.min_size=40 cannot be met.*at most 1 clients"):
        make_partition(pooled_labels(per_class=5), "dir", 10, seed=0, alpha=0.1, min_size=40)


def reference_dirichlet(labels, num_clients, alpha, min_size, rng):
    """The protocol written out plainly, one client chunk at a time, redrawn until `min_size` is met."""
    classes = np.unique(labels)
    fair_share = len(labels) / num_clients
    while True:
        parts, sizes = [[] for _ in range(num_clients)], np.zeros(num_clients)
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            capped = shares * (sizes < fair_share)
            shares = capped / capped.sum() if capped.sum() > 0 else shares
            cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
                sizes[client] += len(chunk)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)) for p in parts]


@pytest.mark.parametrize("alpha,min_size", [(0.1, 10), (0.1, 40), (0.5, 10)])
@pytest.mark.parametrize("seed", range(3))
def test_dirichlet_equals_the_plain_protocol(alpha, min_size, seed):
    """Within the redraw budget the partition is exactly the one the plain protocol gives (same draws, same
    clients), so published partitions of a seed stay what they were."""
    from fedcmd_plugin.data.partition import partition_dirichlet

    labels = pooled_labels()
    mine = partition_dirichlet(labels, 20, alpha, min_size, np.random.default_rng(seed))
    theirs = reference_dirichlet(labels, 20, alpha, min_size, np.random.default_rng(seed))
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_min_size_past_the_redraw_budget_is_met_by_topping_up(monkeypatch):
    from fedcmd_plugin.data import partition

    labels = pooled_labels(per_class=100)
    monkeypatch.setattr(partition, "MAX_DIRICHLET_DRAWS", 1)  # the first draw must already do
    first = reference_dirichlet(labels, 50, 0.1, 0, np.random.default_rng(5))
    assert min(len(p) for p in first) < 15, "the case must need topping up"
    parts = make_partition(labels, "dir", 50, seed=5, alpha=0.1, min_size=15)
    indices = client_indices(parts)
    assert min(len(p) for p in indices) >= 15
    np.testing.assert_array_equal(np.sort(np.concatenate(indices)), np.arange(len(labels)))
    classes, top_share = skew(labels, parts)
    assert classes < 5 and top_share > 0.5  # still label-skewed after the top-up


def test_a_client_without_test_samples_is_an_error():
    from fedcmd_plugin import DataError

    labels = pooled_labels(per_class=2)
    parts = make_partition(labels, "iid", len(labels), seed=0)  # one sample each: no test split
    with pytest.raises(DataError, match="20 of 20 clients received no test samples"):
        federated.check_nonempty(federated.client_ids(len(parts)), parts, with_test=True)


@pytest.mark.parametrize("split_type,kwargs", SPLITS)
def test_same_seed_same_partition_other_seed_differs(split_type, kwargs):
    labels = pooled_labels()
    first = make_partition(labels, split_type, 10, seed=7, **kwargs)
    again = make_partition(labels, split_type, 10, seed=7, **kwargs)
    other = make_partition(labels, split_type, 10, seed=8, **kwargs)
    for (a_train, a_test), (b_train, b_test) in zip(first, again):
        np.testing.assert_array_equal(a_train, b_train)
        np.testing.assert_array_equal(a_test, b_test)
    differs = any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    assert differs


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("num_clients", [10, 20])
def test_class_split_gives_exactly_k_classes(k, num_clients):
    labels = pooled_labels()
    for seed in range(5):
        parts = make_partition(labels, "class", num_clients, seed=seed, class_per_client=k)
        held = [np.unique(labels[idx]) for idx in client_indices(parts)]
        assert [len(h) for h in held] == [k] * num_clients
        # every class is held by someone when clients x k covers the classes
        assert set(np.concatenate(held)) == set(range(NUM_CLASSES))


def test_class_split_rejects_more_classes_than_exist():
    with pytest.raises(ConfigError, match="class_per_client"):
        make_partition(pooled_labels(), "class", 5, seed=0, class_per_client=11)


def test_more_clients_than_samples_is_a_config_error():
    with pytest.raises(ConfigError, match="num_of_clients"):
        make_partition(np.arange(5) % 2, "iid", 6, seed=0)


def test_natural_split_gives_whole_writers_skipping_small_ones():
    writers = np.random.default_rng(4).permutation(np.repeat(np.arange(6), [30, 3, 25, 40, 9, 12]))
    labels = writers % NUM_CLASSES
    parts = make_partition(labels, "natural", 4, seed=2, min_size=10, writers=writers)
    held = [np.unique(writers[idx]) for idx in client_indices(parts)]
    assert all(len(h) == 1 for h in held)  # one writer per client ...
    assert [int(h[0]) for h in held] == [0, 2, 3, 5]  # ... in writer order, the 3- and 9-sample writers left out
    for (train, test), (writer,) in zip(parts, held):
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.flatnonzero(writers == writer))
        assert len(train) == round(len(np.flatnonzero(writers == writer)) / 2)
    with pytest.raises(ConfigError, match="exceeds the 4 writers with at least data.min_size=10"):
        make_partition(labels, "natural", 5, seed=2, min_size=10, writers=writers)


# ----------------------------------------------------------------------------------------------- cache


@pytest.fixture
def cache_conf(tmp_path):
    return load_config(None, [f"data.root={tmp_path / 'data'}", "data.num_of_clients=8", "data.alpha=0.5",
                              "data.min_size=5"])


def cache_files(conf):
    folder = federated.Path(conf.data.root) / "partitions"
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def assert_same_parts(a, b):
    assert len(a) == len(b)
    for (a_train, a_test), (b_train, b_test) in zip(a, b):
        np.testing.assert_array_equal(a_train, b_train)
        np.testing.assert_array_equal(a_test, b_test)


def test_cache_round_trip_returns_the_same_partition(cache_conf, monkeypatch):
    labels = pooled_labels(per_class=40)
    first = federated.cached_partition(cache_conf, labels)
    assert len(cache_files(cache_conf)) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached partition should have been read, not recomputed")

    monkeypatch.setattr(federated, "make_partition", no_recompute)
    assert_same_parts(first, federated.cached_partition(cache_conf, labels))


def test_cache_key_follows_the_config(cache_conf):
    labels = pooled_labels(per_class=40)
    federated.cached_partition(cache_conf, labels)
    cache_conf.seed = 1
    federated.cached_partition(cache_conf, labels)
    cache_conf.data.balanced = False
    federated.cached_partition(cache_conf, labels)
    assert len(cache_files(cache_conf)) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_file_is_recomputed(cache_conf, damage):
    labels = pooled_labels(per_class=40)
    first = federated.cached_partition(cache_conf, labels)
    (file,) = cache_files(cache_conf)
    raw = file.read_bytes()
    file.write_bytes({"garbage": b"not a partition" * 10, "truncated": raw[:len(raw) // 2], "empty": b""}[damage])
    assert_same_parts(first, federated.cached_partition(cache_conf, labels))
    # ... and the cache is rewritten whole
    with np.load(file) as saved:
        assert len(saved["train_sizes"]) == len(saved["test_sizes"]) == len(first)


def test_cache_off_writes_nothing(cache_conf):
    cache_conf.data.cache = False
    federated.cached_partition(cache_conf, pooled_labels(per_class=40))
    assert cache_files(cache_conf) == []


def test_client_tensors_hold_each_clients_samples_pooled_in_partition_order():
    import torch

    labels = pooled_labels(per_class=30)
    images = np.random.default_rng(4).standard_normal((len(labels), 1, 2, 2)).astype(np.float32)
    parts = [train for train, _ in make_partition(labels, "dir", 9, seed=5, alpha=0.3, min_size=4)]
    ids = federated.client_ids(len(parts))
    data = federated.ClientTensors.gather(images, labels, parts, ids)
    assert data.total_size() == sum(len(p) for p in parts)
    for cid, part in zip(ids, parts):
        x, y = data.tensors(cid)
        np.testing.assert_array_equal(x.numpy(), images[part])
        np.testing.assert_array_equal(y.numpy(), labels[part])
        assert data.client_size(cid) == len(part)
        order = torch.randperm(len(part), generator=torch.Generator().manual_seed(1))
        batches = list(data.batches(cid, 4, torch.Generator().manual_seed(1)))
        np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), labels[part][order.numpy()])
