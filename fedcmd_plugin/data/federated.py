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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from easyfl.datasets import FederatedDataset

from fedcmd_plugin.data.partition import label_histograms, make_partition
from fedcmd_plugin.data.sources import READER_OPTIONS, READERS, load_images
from fedcmd_plugin.errors import ConfigError, DataError

PARTITION_FORMAT = 4  # bump when the partition algorithm changes so old caches are not reused


@dataclass
class DataInfo:
    """What a model builder needs to know about the data."""
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
    client_rows: list = field(default_factory=list)  # one dict per client for partition.csv
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
    """Per-client tensors behind EasyFL's FederatedDataset interface."""

    def __init__(self, images, labels, parts, ids):
        super().__init__(ids)
        self._x = {cid: torch.from_numpy(images[p]) for cid, p in zip(self._ids, parts)}
        self._y = {cid: torch.from_numpy(labels[p]) for cid, p in zip(self._ids, parts)}
        self._on_device = {}

    def client_size(self, cid):
        return len(self._y[cid])

    def tensors(self, cid, device="cpu"):
        """The client's (x, y), moved to `device` once and kept there."""
        key = (cid, str(device))
        if key not in self._on_device:
            self._on_device[key] = (self._x[cid].to(device), self._y[cid].to(device))
        return self._on_device[key]

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
                count = int(saved["clients"])
                return [(saved[f"train{i}"], saved[f"test{i}"]) for i in range(count)]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # an unreadable cache is recomputed and rewritten
    parts = make_partition(labels, d.split_type, d.num_of_clients, conf.seed, alpha=d.alpha, min_size=d.min_size,
                           class_per_client=d.class_per_client, train_fraction=d.train_test_split,
                           balanced=d.balanced, writers=writers)
    if d.cache:
        save_partition(file, parts)
    return parts


def save_partition(file, parts):
    """Atomic write: a crash never leaves a truncated cache that a later run would trust."""
    file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"clients": np.array(len(parts))}
    for i, (train, test) in enumerate(parts):
        arrays[f"train{i}"], arrays[f"test{i}"] = train, test
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarise(name, labels, parts, ids, num_classes, client_writers=None):
    """A short text summary and the full per-client rows (samples and label histogram, and the writer of each
    client of a natural partition)."""
    train_hist = label_histograms(labels, [p[0] for p in parts], num_classes)
    test_hist = label_histograms(labels, [p[1] for p in parts], num_classes)
    rows = []
    for i, cid in enumerate(ids):
        hist = train_hist[i] + test_hist[i]
        writer = {"writer": client_writers[i]} if client_writers else {}
        rows.append({"client": cid, **writer, "train": int(train_hist[i].sum()), "test": int(test_hist[i].sum()),
                     "classes": int((hist > 0).sum()), **{f"label_{c}": int(hist[c]) for c in range(num_classes)}})
    sizes = np.array([r["train"] + r["test"] for r in rows])
    classes = np.array([r["classes"] for r in rows])
    summary = (f"{name}: {len(labels)} samples, {len(ids)} clients, samples per client min/median/max "
               f"{sizes.min()}/{int(np.median(sizes))}/{sizes.max()}, classes per client mean {classes.mean():.1f}")
    return summary, rows


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
    train = ClientTensors(arrays.images, arrays.labels, [p[0] for p in parts], ids)
    test = ClientTensors(arrays.images, arrays.labels, [p[1] for p in parts], ids)
    channels, height, _ = arrays.shape
    client_writers = [arrays.writer_names[arrays.writers[np.concatenate(p)[0]]] for p in parts] if natural else None
    summary, rows = summarise(conf.data.dataset, arrays.labels, parts, ids, arrays.num_classes, client_writers)
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


class ConfiguredData(FederatedDataset):
    """Registered with EasyFL before any config exists; resolves to the config's data on first use."""

    def __init__(self, part):
        super().__init__()
        self._part = part
        self._resolved = (None, None)  # (config, data): clients ask for their data every epoch

    def resolve(self):
        from fedcmd_plugin.session import prepared_config

        conf = prepared_config()
        if self._resolved[0] is not conf:
            self._resolved = (conf, getattr(load_federated(conf), self._part))
        return self._resolved[1]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    @property
    def users(self):
        return self.resolve().users

    def size(self, cid=None):
        return self.resolve().size(cid)

    def total_size(self):
        return self.resolve().total_size()

    def loader(self, batch_size, client_id=None, shuffle=True, seed=0, **kwargs):
        return self.resolve().loader(batch_size, client_id, shuffle, seed, **kwargs)
