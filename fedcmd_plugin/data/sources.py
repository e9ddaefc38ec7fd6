"""Readers for image-classification data sets that live on local disk: nothing here downloads anything.

Every reader returns an `ImageArrays` (float32 images in N x C x H x W, standardised per channel, int64 labels), the
pooled train+test samples, because the federated protocol pools them before partitioning.
"""
import gzip
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from fedcmd_plugin.errors import DataError

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass
class ImageArrays:
    images: np.ndarray  # float32, N x C x H x W, each channel standardised (zero mean, unit variance)
    labels: np.ndarray  # int64, N
    num_classes: int
    writers: np.ndarray = None  # int64, N: each sample's writer as an index into writer_names (FEMNIST); else None
    writer_names: tuple = ()

    @property
    def shape(self):
        return self.images.shape[1:]


def standardise(images, labels, num_classes, scale=255.0):
    """Pixels scaled by `scale`, then each channel z-scored over the pooled data set: zero-mean, unit-variance
    inputs let plain SGD (lr 0.01, the paper's setting) converge in the rounds a federated run has."""
    images = np.asarray(images, dtype=np.float32) / scale
    if images.ndim == 3:
        images = images[:, None]
    mean = images.mean(axis=(0, 2, 3), keepdims=True)
    std = images.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    images = (images - mean) / std
    return ImageArrays(np.ascontiguousarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64), num_classes)


def load_digits(path=None):
    """scikit-learn's bundled 1,797 8x8 handwritten digits (pixel values 0..16)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return standardise(bunch.images, bunch.target, 10, scale=16.0)


def read_idx(path):
    """One IDX file (optionally gzipped) as a numpy array, checking its header against its size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"data file {path} cannot be read: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"data file {path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"data file {path} holds {len(raw) - header} bytes, its header promises {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def require_files(path, name, entries, layout):
    """data.path as the folder of data set `name` holding every one of `entries` (files or folders); the errors
    name the folder and the expected `layout`."""
    if path is None:
        raise DataError(f"data.path must name the {name} folder; {layout}")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{name} folder {folder} does not exist; {layout}")
    missing = [e for e in entries if not (folder / e).exists()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{name} folder {folder} lacks {', '.join(missing[:5])}{more}; {layout}")
    return folder


def check_labels(labels, num_classes, source):
    """Labels outside 0..num_classes-1 would fail deep inside training: name the source instead."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")


def read_idx_set(folder, files, name):
    """The pooled (images, labels) of the IDX `files` (train_images, ... -> file name) in `folder`."""
    images = np.concatenate([read_idx(folder / files["train_images"]), read_idx(folder / files["test_images"])])
    labels = np.concatenate([read_idx(folder / files["train_labels"]), read_idx(folder / files["test_labels"])])
    if len(images) != len(labels):
        raise DataError(f"{name} folder {folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_idx_pair(folder, name, package_hint):
    folder = require_files(folder, name, IDX_FILES.values(), package_hint)
    return standardise(*read_idx_set(folder, IDX_FILES, name), 10)


def load_fmnist(path=None):
    """Fashion-MNIST from the four IDX .gz files (Debian's `dataset-fashion-mnist` puts them in FMNIST_DIR)."""
    hint = (f"install Debian's package with `apt-get install dataset-fashion-mnist` (files go to {FMNIST_DIR}) "
            "or set data.path to a folder with the four IDX .gz files")
    return load_idx_pair(path or FMNIST_DIR, "Fashion-MNIST", hint)


def load_mnist(path=None):
    """MNIST from the same four IDX .gz files, in data.path or torchvision's MNIST/raw layout."""
    if path is None:
        raise DataError("data.path must name the MNIST folder holding the four IDX .gz files")
    folder = Path(path)
    if (folder / "MNIST" / "raw").is_dir():
        folder = folder / "MNIST" / "raw"
    return load_idx_pair(folder, "MNIST", "put the four IDX .gz files there (torchvision's MNIST/raw layout works)")


EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26, "digits": 10, "mnist": 10}
EMNIST_LABEL_OFFSET = {"letters": 1}  # letters are labelled 1..26
EMNIST_PARTS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                "test_images": "test-images-idx3-ubyte", "test_labels": "test-labels-idx1-ubyte"}


def load_emnist(path=None, split="balanced"):
    """EMNIST's `split` (data.emnist_split) from its four IDX files in data.path or torchvision's EMNIST/raw.

    NIST's gzip.zip holds the files gzipped, torchvision's EMNIST/raw gunzipped: either is read. EMNIST stores
    every image transposed relative to MNIST, so images are transposed back to upright.
    """
    stems = {key: f"emnist-{split}-{part}" for key, part in EMNIST_PARTS.items()}
    layout = (f"expected {', '.join(f'{stem}.gz' for stem in stems.values())} (NIST's gzip.zip; gunzipped, as in "
              "torchvision's EMNIST/raw, works too)")
    if path is None:
        raise DataError(f"data.path must name the EMNIST folder; {layout}")
    folder = Path(path)
    if (folder / "EMNIST" / "raw").is_dir():
        folder = folder / "EMNIST" / "raw"
    files = {key: stem if (folder / stem).is_file() else f"{stem}.gz" for key, stem in stems.items()}
    require_files(folder, "EMNIST", files.values(), layout)
    images, labels = read_idx_set(folder, files, "EMNIST")
    labels = labels.astype(np.int64) - EMNIST_LABEL_OFFSET.get(split, 0)
    check_labels(labels, EMNIST_CLASSES[split], f"EMNIST {split} in {folder}")
    return standardise(images.transpose(0, 2, 1), labels, EMNIST_CLASSES[split])


def load_cifar(path, version):
    """CIFAR-10/100 from torchvision's on-disk layout (the extracted python pickles), never downloading."""
    folder_name = {10: "cifar-10-batches-py", 100: "cifar-100-python"}[version]
    if path is None:
        raise DataError(f"data.path must name the folder holding {folder_name}/ (torchvision's CIFAR layout)")
    folder = Path(path)
    if folder.name != folder_name:
        folder = folder / folder_name
    if not folder.is_dir():
        raise DataError(f"CIFAR-{version} folder {folder} does not exist; extract cifar-{version}-python.tar.gz "
                        f"into {Path(path)} (torchvision's layout)")
    parts = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]) if version == 10 else ["train", "test"]
    label_key = b"labels" if version == 10 else b"fine_labels"
    images, labels = [], []
    for part in parts:
        file = folder / part
        try:
            with open(file, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")  # local files the user placed, never network data
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise DataError(f"CIFAR-{version} file {file} cannot be read: {exc}") from None
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key]))
    return standardise(np.concatenate(images), np.concatenate(labels), version)


def load_cifar10(path=None):
    return load_cifar(path, 10)


def load_cifar100(path=None):
    return load_cifar(path, 100)


SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
SVHN_ZERO = 10  # SVHN labels the digit 0 as 10


def load_svhn(path=None):
    """SVHN's cropped digits from torchvision's layout: data.path holds train_32x32.mat and test_32x32.mat.

    Each file holds X (32 x 32 x 3 x N, height, width, channel, sample) and y (N labels).
    """
    from scipy.io import loadmat  # scipy's import costs start-up time only this data set needs
    from scipy.io.matlab import MatReadError

    layout = f"expected {' and '.join(SVHN_FILES)} (torchvision's SVHN layout)"
    folder = require_files(path, "SVHN", SVHN_FILES, layout)
    images, labels = [], []
    for name in SVHN_FILES:
        file = folder / name
        try:
            mat = loadmat(file, variable_names=("X", "y"))
        except (OSError, ValueError, IndexError, NotImplementedError, MatReadError) as exc:  # scipy's ways to fail
            raise DataError(f"SVHN file {file} cannot be read: {exc}") from None
        x, y = mat.get("X"), mat.get("y")
        if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
            raise DataError(f"SVHN file {file} must hold X (32 x 32 x 3 x N) and y (N labels)")
        images.append(x.transpose(3, 2, 0, 1))
        labels.append(y.ravel().astype(np.int64))
    labels = np.concatenate(labels)
    labels[labels == SVHN_ZERO] = 0
    check_labels(labels, 10, f"SVHN in {folder}")
    return standardise(np.concatenate(images), labels, 10)


CINIC_SPLITS = ("train", "valid", "test")
CINIC_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # CIFAR-10's
CINIC_SIDE = 32


def load_cinic10(path=None):
    """CINIC-10 from its extracted tree, data.path/{train,valid,test}/<class>/*.png, the three splits pooled.

    Labels follow CIFAR-10's class order; every PNG is read as RGB, whatever mode it was saved in.
    """
    layout = (f"expected {', '.join(f'{s}/' for s in CINIC_SPLITS)} each with the class folders "
              f"{', '.join(CINIC_CLASSES)} of {CINIC_SIDE}x{CINIC_SIDE} PNGs (the extracted CINIC-10.tar.gz)")
    folder = require_files(path, "CINIC-10", [f"{s}/{c}" for s in CINIC_SPLITS for c in CINIC_CLASSES], layout)
    files = [(png, label) for split in CINIC_SPLITS for label, name in enumerate(CINIC_CLASSES)
             for png in sorted((folder / split / name).glob("*.png"))]
    if not files:
        raise DataError(f"CINIC-10 folder {folder} holds no PNG images; {layout}")
    images = np.empty((len(files), 3, CINIC_SIDE, CINIC_SIDE), dtype=np.uint8)
    for i, (png, _) in enumerate(files):
        try:
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise DataError(f"CINIC-10 image {png} cannot be read: {exc}") from None
        if pixels.shape[:2] != (CINIC_SIDE, CINIC_SIDE):
            raise DataError(f"CINIC-10 image {png} is {pixels.shape[1]}x{pixels.shape[0]} pixels; {layout}")
        images[i] = pixels.transpose(2, 0, 1)
    return standardise(images, [label for _, label in files], len(CINIC_CLASSES))


LEAF_SPLITS = ("train", "test")
FEMNIST_CLASSES = 62  # digits, upper- and lower-case letters
FEMNIST_SIDE = 28
FEMNIST_LAYOUT = ("expected LEAF's train/*.json and test/*.json, each holding users, num_samples and "
                  f"user_data: {{user: {{x: [[{FEMNIST_SIDE ** 2} values in 0..1]], y: [labels]}}}}")


def read_leaf_json(file):
    """(writer, uint8 images, labels) of every user in one LEAF JSON file of FEMNIST."""
    try:
        with open(file, encoding="utf-8") as handle:
            tree = json.load(handle)
        users, counts, user_data = tree["users"], tree["num_samples"], tree["user_data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"FEMNIST file {file} cannot be read ({exc!r}); {FEMNIST_LAYOUT}") from None
    for user, count in zip(users, counts):
        sample = user_data.get(user) if isinstance(user_data, dict) else None
        try:
            x = np.asarray(sample["x"], dtype=np.float32)
            y = np.asarray(sample["y"], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"FEMNIST file {file}, user {user}: no numeric x and y; {FEMNIST_LAYOUT}") from None
        shaped = x.shape == (count, FEMNIST_SIDE ** 2) and y.shape == (count,)
        if not shaped or not np.all((x >= 0) & (x <= 1)):
            raise DataError(f"FEMNIST file {file}, user {user}: expected {count} rows x of {FEMNIST_SIDE ** 2} "
                            f"values in 0..1 and {count} labels y, got x {x.shape}, y {y.shape}")
        yield user, np.rint(x * 255).astype(np.uint8).reshape(-1, FEMNIST_SIDE, FEMNIST_SIDE), y


def load_femnist(path=None):
    """FEMNIST from LEAF's JSON folders: data.path holds train/*.json and test/*.json (LEAF's data/femnist/data).

    Each sample keeps its writer, for split_type natural. A writer's samples in train/ and test/ are pooled like
    every data set's splits; LEAF's pixels (k/255, from 8-bit images) are stored back as bytes.
    """
    folder = require_files(path, "FEMNIST", [f"{split}/" for split in LEAF_SPLITS], FEMNIST_LAYOUT)
    files = [file for split in LEAF_SPLITS for file in sorted((folder / split).glob("*.json"))]
    if not files:
        raise DataError(f"FEMNIST folder {folder} holds no JSON files in train/ or test/; {FEMNIST_LAYOUT}")
    owners, images, labels = [], [], []
    for file in files:
        for user, x, y in read_leaf_json(file):
            owners.append((user, len(y)))
            images.append(x)
            labels.append(y)
    labels = np.concatenate(labels)
    check_labels(labels, FEMNIST_CLASSES, f"FEMNIST in {folder}")
    names = sorted({user for user, _ in owners})
    code = {name: i for i, name in enumerate(names)}
    writers = np.repeat([code[user] for user, _ in owners], [count for _, count in owners]).astype(np.int64)
    arrays = standardise(np.concatenate(images), labels, FEMNIST_CLASSES)
    return replace(arrays, writers=writers, writer_names=tuple(names))


READERS = {
    "digits": load_digits,
    "fmnist": load_fmnist,
    "mnist": load_mnist,
    "emnist": load_emnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "cinic10": load_cinic10,
    "femnist": load_femnist,
}
READER_OPTIONS = {"emnist": {"split": "emnist_split"}}  # a reader's keyword arguments -> the data.* keys they come from


CACHE_FORMAT = 2  # bump when readers or standardisation change
UNCACHED = {"digits"}  # bundled with scikit-learn and decoded in milliseconds
# The files that key a data set's decoded cache where its folder holds more than the reader reads (LEAF's data/
# folder keeps the raw PNGs beside the JSON); others are keyed by every file below data.path.
SOURCE_FILES = {"femnist": tuple(f"{split}/*.json" for split in LEAF_SPLITS)}


def load_images(name, path=None, cache_dir=None, **options):
    """The pooled samples of data set `name`, read from `path` (or the data set's standard location); `options`
    go to its reader (READER_OPTIONS).

    With `cache_dir`, the decoded, standardised arrays are kept there as .npy files (keyed by the options and the
    source files' names, sizes and modification times), so later runs skip decompressing and decoding.
    """
    try:
        reader = READERS[name]
    except KeyError:
        raise DataError(f"data.dataset {name!r} is not an image-classification data set; known: "
                        f"{', '.join(READERS)}") from None
    if cache_dir is None or name in UNCACHED:
        return reader(path, **options)
    folder = Path(cache_dir) / f"{name}-{source_key(name, path, options)}"
    try:
        meta = json.loads((folder / "meta.json").read_text())
        writers = np.load(folder / "writers.npy") if meta["writer_names"] else None
        return ImageArrays(np.load(folder / "images.npy"), np.load(folder / "labels.npy"), meta["num_classes"],
                           writers, tuple(meta["writer_names"]))
    except (OSError, ValueError, KeyError):
        pass  # no cache yet (or an unreadable one): decode and write it
    arrays = reader(path, **options)
    write_cache(folder, arrays)
    return arrays


def source_key(name, path, options):
    folder = Path(path or (FMNIST_DIR if name == "fmnist" else "."))
    patterns = SOURCE_FILES.get(name, ("**/*",))
    files = sorted(f for pattern in patterns for f in folder.glob(pattern)) if folder.is_dir() else []
    stamp = [CACHE_FORMAT, name, str(folder.resolve()), options] + [
        [str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
    return hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]


def write_cache(folder, arrays):
    """Written into a temporary folder and renamed, so a half-written cache is never read."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        np.save(partial / "images.npy", arrays.images)
        np.save(partial / "labels.npy", arrays.labels)
        if arrays.writers is not None:
            np.save(partial / "writers.npy", arrays.writers)
        meta = {"num_classes": arrays.num_classes, "writer_names": list(arrays.writer_names)}
        (partial / "meta.json").write_text(json.dumps(meta))
        os.replace(partial, folder)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # e.g. another process wrote it first: use the arrays anyway
