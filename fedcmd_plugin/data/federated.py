"""Federated data sets as EasyFL sees them: clients, their train/test splits, pre-batched tensors.

The pooled images are partitioned once (seeded, cached on disk), each client's samples are gathered into
contiguous tensors once, and training batches are slices of a seeded permutation: no per-sample DataLoader,
no numpy round trips per round.
"""
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from easyfl.datasets import FederatedDataset

from fedcmd_plugin.data.partition import label_histograms, make_partition
from fedcmd_plugin.data.sources import READER_OPTIONS, READERS, load_images
from fedcmd_plugin.errors import ConfigError, DataError

PARTITION_FORMAT = 5  # bump when the partition algorithm changes so old caches are not reused


@dataclass
class DataInfo:
    """What a model builder needs to know about the data (feature vectors: in_channels features, image_size 1)."""
    in_channels: int
    image_size: int
    num_classes: int
    task: str = "classification"


@dataclass
class FederatedData:
    train: "FederatedDataset"
    test: "FederatedDataset"
    info: DataInfo
    summary: str = ""
    client_rows: Sequence = ()  # one dict per client for partition.csv
    extras: dict = field(default_factory=dict)  # data-set specific objects (e.g. ReID gallery/query)


def client_ids(count):
    return [f"c{i:03d}" for i in range(count)]


class ClientDataset(FederatedDataset):
    """EasyFL's FederatedDataset over named clients; subclasses say how big each client's data is."""

    def __init__(self, ids):
        super().__init__()
        self._ids = list(ids)

    @property
    def users(self):
        return self._ids

    @users.setter
    def users(self, value):
        self._ids = list(value)

    def size(self, cid=None):
        return self.total_size() if cid is None else self.client_size(cid)

    def total_size(self):
        return sum(self.client_size(cid) for cid in self._ids)

    def client_size(self, cid):
        raise NotImplementedError


class ClientTensors(ClientDataset):
    """Every client's samples behind EasyFL's FederatedDataset interface, held as one pooled tensor pair with the
    clients' rows in order (client i: rows offsets[i]:offsets[i + 1]), so 100,000 clients cost two tensors and an
    offset array, and a client's tensors are views."""

    def __init__(self, x, y, sizes, ids):
        super().__init__(ids)
        if len(sizes) != len(self._ids) or int(np.sum(sizes)) != len(y) or len(x) != len(y):
            raise ValueError(f"{len(self._ids)} clients of {list(sizes)[:5]}... samples do not cover {len(y)} rows")
        self._x, self._y = torch.as_tensor(x), torch.as_tensor(y)
        self._offsets = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        self._row = {cid: i for i, cid in enumerate(self._ids)}
        self._on_device = {}

    @classmethod
    def gather(cls, images, labels, parts, ids):
        """Client i holds images[parts[i]] (one copy of the samples for all clients together)."""
        order = np.concatenate(parts) if len(parts) else np.empty(0, dtype=np.int64)
        return cls(images[order], labels[order], [len(p) for p in parts], ids)

    def client_size(self, cid):
        i = self._row[cid]
        return int(self._offsets[i + 1] - self._offsets[i])

    def total_size(self):
        return int(self._offsets[-1])

    def tensors(self, cid, device="cpu"):
        """The client's (x, y): views of the pooled tensors, which move to `device` once and stay there."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (self._x.to(device), self._y.to(device))
        x, y = self._on_device[key]
        i = self._row[cid]
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return x[start:end], y[start:end]

    def batches(self, cid, batch_size, generator=None, device="cpu", min_last=1, indices=None):
        """Batches of client `cid` (only its samples at `indices` when given): a seeded shuffle when `generator`
        is given, else in order. A last batch smaller than `min_last` joins the one before it."""
        x, y = self.tensors(cid, device)
        if indices is not None:
            indices = torch.as_tensor(indices, dtype=torch.long, device=x.device)
            x, y = x.index_select(0, indices), y.index_select(0, indices)
        bounds = batch_bounds(len(y), batch_size, min_last)
        if generator is None:
            for start, end in bounds:
                yield x[start:end], y[start:end]
            return
        order = torch.randperm(len(y), generator=generator).to(x.device)
        for start, end in bounds:
            idx = order[start:end]
            yield x.index_select(0, idx), y.index_select(0, idx)

    def loader(self, batch_size, client_id=None, shuffle=True, seed=0, **_):
        """EasyFL's loader API: a list of (x, y) batches of one client."""
        generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
        return list(self.batches(client_id, batch_size, generator))


def batch_bounds(n, batch_size, min_last=1):
    """(start, end) of consecutive batches over n samples; a last batch under `min_last` samples is merged."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < min_last:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def reader_options(conf):
    """The keyword arguments the data set's reader takes from data.* keys (e.g. EMNIST's split)."""
    return {arg: conf.data[key] for arg, key in READER_OPTIONS.get(conf.data.dataset, {}).items()}


def partition_key(conf, num_samples):
    d = conf.data
    fields = [PARTITION_FORMAT, d.dataset, str(d.path), reader_options(conf), d.split_type, d.num_of_clients,
              float(d.alpha), d.balanced, d.min_size, d.class_per_client, float(d.train_test_split), conf.seed,
              num_samples]
    return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:16]


def cached_partition(conf, labels, writers=None):
    """The config's partition: read from data.root/partitions when cached, else computed (and saved)."""
    d = conf.data
    file = Path(d.root) / "partitions" / f"{d.dataset}-{partition_key(conf, len(labels))}.npz"
    if d.cache and file.is_file():
        try:
            with np.load(file) as saved:
                return list(zip(*(np.split(saved[part], np.cumsum(saved[f"{part}_sizes"])[:-1])
                                  for part in ("train", "test"))))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # an unreadable cache is recomputed and rewritten
    parts = make_partition(labels, d.split_type, d.num_of_clients, conf.seed, alpha=d.alpha, min_size=d.min_size,
                           class_per_client=d.class_per_client, train_fraction=d.train_test_split,
                           balanced=d.balanced, writers=writers)
    if d.cache:
        save_partition(file, parts)
    return parts


def save_partition(file, parts):
    """Each split's indices pooled with the clients' sizes (two arrays per split, not per client, so 10,000 clients
    load in milliseconds); written atomically, so a crash never leaves a truncated cache that a later run trusts."""
    file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for position, part in enumerate(("train", "test")):
        pieces = [p[position] for p in parts]
        arrays[part] = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
        arrays[f"{part}_sizes"] = np.array([len(p) for p in pieces], dtype=np.int64)
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ClientRows(Sequence):
    """partition.csv's rows, one dict per client, made on demand from the clients x classes histograms of each split
    (a list of 100,000 dicts would outweigh the clients' data)."""

    def __init__(self, ids, train_hist, test_hist, writers=None):
        self.ids, self.train_hist, self.hist, self.writers = ids, train_hist, train_hist + test_hist, writers

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        hist, train = self.hist[i].tolist(), int(self.train_hist[i].sum())
        writer = {"writer": self.writers[i]} if self.writers else {}
        return {"client": self.ids[i], **writer, "train": train, "test": sum(hist) - train,
                "classes": sum(1 for n in hist if n), **{f"label_{c}": n for c, n in enumerate(hist)}}


def summarise(name, ids, train_hist, test_hist, client_writers=None):
    """A short text summary and the per-client rows (samples and label histogram, from the clients x classes
    histograms of each split, and the writer of each client of a natural partition)."""
    sizes, classes = (train_hist + test_hist).sum(axis=1), ((train_hist + test_hist) > 0).sum(axis=1)
    summary = (f"{name}: {int(sizes.sum())} samples, {len(ids)} clients, samples per client min/median/max "
               f"{sizes.min()}/{int(np.median(sizes))}/{sizes.max()}, classes per client mean {classes.mean():.1f}")
    return summary, ClientRows(ids, train_hist, test_hist, client_writers)


def check_nonempty(ids, parts, with_test):
    """Every client needs training samples, and test samples when the split keeps some for testing."""
    for split, position in (("training", 0), ("test", 1))[:2 if with_test else 1]:
        empty = [cid for cid, part in zip(ids, parts) if len(part[position]) == 0]
        if empty:
            raise DataError(f"{len(empty)} of {len(ids)} clients received no {split} samples (first: "
                            f"{', '.join(empty[:5])}): lower data.num_of_clients or raise data.min_size (at least 2 "
                            "gives every client both splits) / data.class_per_client")


def build_image_classification(conf):
    cache = Path(conf.data.root) / "decoded" if conf.data.cache else None
    arrays = load_images(conf.data.dataset, conf.data.path, cache, **reader_options(conf))
    natural = conf.data.split_type == "natural"
    if natural and arrays.writers is None:
        raise ConfigError(f"data.split_type=natural needs a data set that records each sample's writer (femnist); "
                          f"data.dataset {conf.data.dataset!r} does not: use iid, dir or class")
    parts = cached_partition(conf, arrays.labels, arrays.writers)
    ids = client_ids(len(parts))
    check_nonempty(ids, parts, conf.data.train_test_split < 1)
    train = ClientTensors.gather(arrays.images, arrays.labels, [p[0] for p in parts], ids)
    test = ClientTensors.gather(arrays.images, arrays.labels, [p[1] for p in parts], ids)
    channels, height, _ = arrays.shape
    client_writers = [arrays.writer_names[arrays.writers[np.concatenate(p)[0]]] for p in parts] if natural else None
    train_hist, test_hist = (label_histograms(arrays.labels, [p[i] for p in parts], arrays.num_classes) for i in (0, 1))
    summary, rows = summarise(conf.data.dataset, ids, train_hist, test_hist, client_writers)
    if natural:
        summary += f", one writer each ({len(ids)} of {len(arrays.writer_names)} writers)"
    return FederatedData(train, test, DataInfo(channels, height, arrays.num_classes), summary, rows)


BUILDERS = {name: build_image_classification for name in READERS}


BUILDER_KEYS = {}  # data set -> config keys outside `data` its builder reads (they change the data too)


def register_data(name, builder, config_keys=()):
    """Make data set `name` available to `data.dataset`; `builder(conf)` returns a FederatedData built from the
    `data` section, `seed` and the dotted `config_keys` it also reads."""
    BUILDERS[name] = builder
    BUILDER_KEYS[name] = tuple(config_keys)


def data_identity(conf):
    """Everything a data set's builder reads: two configs with the same identity get the same data."""
    from omegaconf import OmegaConf

    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    extra = [[key, plain(OmegaConf.select(conf, key))] for key in BUILDER_KEYS.get(conf.data.dataset, ())]
    return json.dumps([plain(conf.data), conf.seed, extra], sort_keys=True, default=str)


_LOADED = {}


def load_federated(conf):
    """The config's federated data, built once per process and data-relevant config."""
    if conf.data.dataset not in BUILDERS:
        raise DataError(f"data.dataset {conf.data.dataset!r} is unknown; known: {', '.join(sorted(BUILDERS))}")
    key = data_identity(conf)
    if key not in _LOADED:
        _LOADED.clear()  # one data set in memory at a time
        _LOADED[key] = BUILDERS[conf.data.dataset](conf)
    return _LOADED[key]
