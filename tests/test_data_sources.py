"""Local data readers: the embedded digits, Fashion-MNIST's IDX files, CIFAR-10 in torchvision's layout, and
EMNIST, SVHN, CINIC-10 and FEMNIST from small files written in their exact on-disk formats."""
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fedcmd_plugin import DataError
from fedcmd_plugin.data.sources import (
    FMNIST_DIR,
    IDX_FILES,
    load_cifar10,
    load_digits,
    load_fmnist,
    load_images,
    read_idx,
)


def assert_standardised(images):
    """The readers' contract (ImageArrays): every channel z-scored over the pooled samples."""
    for c in range(images.shape[1]):
        channel = images[:, c].astype(np.float64)
        assert abs(channel.mean()) < 1e-3 and abs(channel.std() - 1) < 1e-3, (c, channel.mean(), channel.std())


def assert_affine_per_channel(images, raw):
    """images[:, c] = a_c * raw[:, c] + b_c with a_c > 0: pixels kept in place and order, only rescaled."""
    raw = np.asarray(raw, dtype=np.float64).reshape(images.shape)
    for c in range(images.shape[1]):
        x, y = raw[:, c].ravel(), images[:, c].astype(np.float64).ravel()
        a, b = np.polyfit(x, y, 1)
        assert a > 0
        np.testing.assert_allclose(y, a * x + b, atol=1e-4 * max(1.0, np.abs(y).max()))


def test_digits_shape_and_range():
    from sklearn.datasets import load_digits as sklearn_digits

    data = load_digits()
    assert data.images.shape == (1797, 1, 8, 8)
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64
    assert np.isfinite(data.images).all()
    assert_standardised(data.images)
    assert_affine_per_channel(data.images, sklearn_digits().images)
    assert data.num_classes == 10 and data.shape == (1, 8, 8)
    assert set(np.unique(data.labels)) == set(range(10))
    assert data.images.flags["C_CONTIGUOUS"]


def test_load_images_dispatches_by_name():
    assert load_images("digits").images.shape[0] == 1797
    with pytest.raises(DataError, match="nosuchdata"):
        load_images("nosuchdata")


# ----------------------------------------------------------------------------------------------- IDX files


def idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=True):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    file = write_idx(tmp_path / ("x.idx.gz" if compress else "x.idx"), images, compress)
    np.testing.assert_array_equal(read_idx(file), images)


@pytest.mark.parametrize("damage", ["truncated_payload", "truncated_gzip", "not_gzip", "wrong_magic", "empty"])
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path, damage):
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    good = idx_bytes(images)
    file = tmp_path / f"{damage}-images-idx3-ubyte.gz"
    content = {
        "truncated_payload": gzip.compress(good[:-100]),  # header promises more pixels than follow
        "truncated_gzip": gzip.compress(good)[:200],  # the gzip stream itself ends early
        "not_gzip": b"this is no gzip file at all",
        "wrong_magic": gzip.compress(b"\x00\x00\x0d\x03" + good[4:]),  # float data, not unsigned bytes
        "empty": b"",
    }[damage]
    file.write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_idx(file)
    assert file.name in str(caught.value)


def test_missing_fmnist_folder_names_the_debian_package(tmp_path):
    with pytest.raises(DataError) as caught:
        load_fmnist(str(tmp_path / "nowhere"))
    message = str(caught.value)
    assert "dataset-fashion-mnist" in message and "nowhere" in message


def test_fmnist_folder_missing_a_file_names_it(tmp_path):
    write_idx(tmp_path / IDX_FILES["train_images"], np.zeros((2, 28, 28)))
    with pytest.raises(DataError) as caught:
        load_fmnist(str(tmp_path))
    assert IDX_FILES["test_labels"] in str(caught.value)


def test_fmnist_from_a_small_idx_folder(tmp_path):
    rng = np.random.default_rng(1)
    train_x, test_x = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    train_y, test_y = np.array([0, 1, 2, 3, 4, 5]), np.array([9, 8, 7, 6])
    for key, array in [("train_images", train_x), ("test_images", test_x), ("train_labels", train_y),
                       ("test_labels", test_y)]:
        write_idx(tmp_path / IDX_FILES[key], array)
    data = load_fmnist(str(tmp_path))
    assert data.images.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(data.labels, np.concatenate([train_y, test_y]))  # pooled: train then test
    assert_affine_per_channel(data.images, np.concatenate([train_x, test_x]))  # train images first, then test


@pytest.mark.skipif(not Path(FMNIST_DIR).is_dir(),
                    reason=f"Fashion-MNIST is not installed in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_real_fmnist_from_the_debian_package():
    data = load_fmnist()
    assert data.images.shape == (70000, 1, 28, 28)
    assert data.images.dtype == np.float32
    assert abs(float(data.images.mean())) < 1e-3 and abs(float(data.images.std()) - 1) < 1e-2  # standardised
    assert data.num_classes == 10
    np.testing.assert_array_equal(np.bincount(data.labels), [7000] * 10)


# ----------------------------------------------------------------------------------------------- CIFAR-10


def write_fake_cifar10(root, per_batch=4):
    """torchvision's extracted layout: root/cifar-10-batches-py/{data_batch_1..5,test_batch} pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    expected_rows, expected_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": rows, b"labels": labels, b"batch_label": name.encode()}, handle)
        expected_rows.append(rows)
        expected_labels.extend(labels)
    return folder, np.concatenate(expected_rows), np.array(expected_labels)


@pytest.mark.parametrize("give", ["parent", "folder"])
def test_cifar10_from_torchvision_layout(tmp_path, give):
    folder, rows, labels = write_fake_cifar10(tmp_path)
    data = load_cifar10(str(tmp_path if give == "parent" else folder))
    assert data.images.shape == (24, 3, 32, 32) and data.num_classes == 10
    np.testing.assert_array_equal(data.labels, labels)
    # a row is 1024 red, 1024 green, then 1024 blue values, each row-major over 32 x 32 pixels
    assert_affine_per_channel(data.images, rows.reshape(-1, 3, 32, 32))
    assert_standardised(data.images)


def test_cifar10_missing_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10"):
        load_cifar10(str(tmp_path))
    with pytest.raises(DataError, match="data.path"):
        load_cifar10(None)


def test_cifar10_unreadable_batch_names_the_file(tmp_path):
    folder, _, _ = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x04junk")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(str(tmp_path))


def write_idx_set(folder, images, labels):
    """The four IDX files of an MNIST-style folder: the same samples as train and as test."""
    for part in ("train", "test"):
        write_idx(folder / IDX_FILES[f"{part}_images"], images)
        write_idx(folder / IDX_FILES[f"{part}_labels"], labels)


def test_decoded_arrays_are_cached_and_refreshed_when_the_source_changes(tmp_path):
    from fedcmd_plugin.data.sources import load_images

    folder = tmp_path / "mnist"
    folder.mkdir()
    images = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
    write_idx_set(folder, images, np.array([0, 1, 2, 3], dtype=np.uint8))
    first = load_images("mnist", folder, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = load_images("mnist", folder, tmp_path / "cache")
    np.testing.assert_array_equal(first.images, again.images)
    write_idx_set(folder, images[::-1].copy(), np.array([3, 2, 1, 0], dtype=np.uint8))
    changed = load_images("mnist", folder, tmp_path / "cache")
    np.testing.assert_array_equal(changed.labels[:4], [3, 2, 1, 0])


# ----------------------------------------------------------------------------------------------- EMNIST

# The EMNIST paper's class counts per split; letters come labelled 1..26 and are read as 0..25.
EMNIST_SPLIT_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26, "digits": 10, "mnist": 10}


def glyph_f():
    """An upright 28x28 'F': asymmetric under transposition, so a reader that forgets to turn EMNIST's stored
    images back shows it."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 6:9] = 255  # the stem, on the left
    image[4:7, 6:22] = 255  # the top bar
    image[12:15, 6:18] = 200  # the middle bar
    return image


def write_emnist(folder, split, upright, labels, compress=True):
    """EMNIST's four IDX files of `split`; like NIST's files they hold every image transposed."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.ascontiguousarray(np.asarray(upright).transpose(0, 2, 1))
    half = len(labels) // 2
    suffix = ".gz" if compress else ""
    for part, rows in (("train", slice(0, half)), ("test", slice(half, None))):
        write_idx(folder / f"emnist-{split}-{part}-images-idx3-ubyte{suffix}", stored[rows], compress)
        write_idx(folder / f"emnist-{split}-{part}-labels-idx1-ubyte{suffix}", np.asarray(labels)[rows], compress)


def emnist_samples(count, seed=5):
    rng = np.random.default_rng(seed)
    upright = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    upright[0] = glyph_f()
    return upright


@pytest.mark.parametrize("layout", ["gz_folder", "torchvision_raw"])
def test_emnist_letters_upright_and_relabelled(tmp_path, layout):
    upright = emnist_samples(6)
    stored_labels = np.array([1, 26, 3, 4, 5, 2])  # letters: a = 1 ... z = 26
    if layout == "gz_folder":
        write_emnist(tmp_path / "gzip", "letters", upright, stored_labels)
        path = tmp_path / "gzip"
    else:  # torchvision keeps the gunzipped files in <root>/EMNIST/raw
        write_emnist(tmp_path / "EMNIST" / "raw", "letters", upright, stored_labels, compress=False)
        path = tmp_path
    data = load_images("emnist", str(path), split="letters")
    assert data.images.shape == (6, 1, 28, 28) and data.num_classes == 26
    np.testing.assert_array_equal(data.labels, [0, 25, 2, 3, 4, 1])
    assert_affine_per_channel(data.images, upright)  # upright, in file order (train first, then test)
    f = data.images[0, 0]
    assert f[5, 20] > f[20, 5]  # the top bar reaches right; nothing reaches down there but the stem


@pytest.mark.parametrize("split", sorted(EMNIST_SPLIT_CLASSES))
def test_emnist_classes_follow_the_split(tmp_path, split):
    classes = EMNIST_SPLIT_CLASSES[split]
    first = 1 if split == "letters" else 0
    labels = np.array([first, first + classes - 1, first, first + 1])
    write_emnist(tmp_path, split, emnist_samples(4), labels)
    data = load_images("emnist", str(tmp_path), split=split)
    assert data.num_classes == classes
    np.testing.assert_array_equal(data.labels, labels - first)


def test_emnist_labels_outside_the_split_name_the_folder(tmp_path):
    write_emnist(tmp_path, "digits", emnist_samples(4), np.array([0, 1, 10, 2]))  # no digit 10
    with pytest.raises(DataError, match=r"EMNIST digits.*0\.\.9"):
        load_images("emnist", str(tmp_path), split="digits")


def test_emnist_missing_folder_or_file_names_the_layout(tmp_path):
    with pytest.raises(DataError) as caught:
        load_images("emnist", str(tmp_path / "nowhere"), split="byclass")
    message = str(caught.value)
    assert "nowhere" in message and "emnist-byclass-train-images-idx3-ubyte.gz" in message
    assert "emnist-byclass-test-labels-idx1-ubyte.gz" in message
    write_emnist(tmp_path, "mnist", emnist_samples(4), np.array([0, 1, 2, 3]))
    (tmp_path / "emnist-mnist-test-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"lacks emnist-mnist-test-labels-idx1-ubyte\.gz;"):
        load_images("emnist", str(tmp_path), split="mnist")
    with pytest.raises(DataError, match="data.path"):
        load_images("emnist", None, split="mnist")


def test_emnist_split_is_a_checked_config_key():
    from fedcmd_plugin import ConfigError, load_config

    assert load_config(None).data.emnist_split == "balanced"
    with pytest.raises(ConfigError, match="'data.emnist_split'.*byclass, bymerge, balanced, letters, digits, mnist"):
        load_config(None, ["data.emnist_split=bycolour"])


def test_emnist_splits_are_cached_apart(tmp_path):
    write_emnist(tmp_path / "raw", "digits", emnist_samples(4), np.array([0, 1, 2, 3]))
    write_emnist(tmp_path / "raw", "mnist", emnist_samples(4, seed=6), np.array([3, 2, 1, 0]))
    digits = load_images("emnist", tmp_path / "raw", tmp_path / "cache", split="digits")
    mnist = load_images("emnist", tmp_path / "raw", tmp_path / "cache", split="mnist")
    np.testing.assert_array_equal(digits.labels, [0, 1, 2, 3])
    np.testing.assert_array_equal(mnist.labels, [3, 2, 1, 0])
    assert len(list((tmp_path / "cache").iterdir())) == 2


# ----------------------------------------------------------------------------------------------- SVHN


def write_svhn(folder, per_file=3):
    """torchvision's SVHN files: X is height x width x channel x sample, y an N x 1 column with 10 for zero."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    upright, labels = [], []
    for name, y in (("train_32x32.mat", [10, 1, 9]), ("test_32x32.mat", [5, 10, 2])):
        images = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)  # sample, channel, row, column
        images[0, 0, :4, :] = 255  # a red band along the top of the first image: orientation is visible
        images[0, 0, 4:, :] = 0
        savemat(folder / name, {"X": images.transpose(2, 3, 1, 0), "y": np.array(y, dtype=np.uint8)[:, None]})
        upright.append(images)
        labels += y
    return np.concatenate(upright), np.array(labels)


def test_svhn_from_torchvision_mat_files(tmp_path):
    upright, stored_labels = write_svhn(tmp_path)
    data = load_images("svhn", str(tmp_path))
    assert data.images.shape == (6, 3, 32, 32) and data.num_classes == 10
    np.testing.assert_array_equal(data.labels, [0, 1, 9, 5, 0, 2])  # 10 is the digit 0
    assert_affine_per_channel(data.images, upright)  # train file first, channels and rows in place
    red = data.images[0, 0]
    assert red[:4].min() > red[4:].max()


def test_svhn_missing_file_or_folder_names_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*train_32x32\.mat and test_32x32\.mat"):
        load_images("svhn", str(tmp_path / "nowhere"))
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"lacks test_32x32\.mat;"):
        load_images("svhn", str(tmp_path))


@pytest.mark.parametrize("damage", ["short", "truncated", "random"])
def test_svhn_unreadable_mat_names_the_file(tmp_path, damage):
    write_svhn(tmp_path)
    file = tmp_path / "train_32x32.mat"
    raw = file.read_bytes()
    file.write_bytes({"short": b"no MATLAB file", "truncated": raw[:len(raw) // 2],
                      "random": np.random.default_rng(0).bytes(300)}[damage])
    with pytest.raises(DataError, match="SVHN file .*train_32x32.mat cannot be read"):
        load_images("svhn", str(tmp_path))


def test_svhn_mat_of_the_wrong_shape_names_the_file(tmp_path):
    from scipy.io import savemat

    write_svhn(tmp_path)
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataError, match=r"train_32x32\.mat must hold X \(32 x 32 x 3 x N\)"):
        load_images("svhn", str(tmp_path))


# ----------------------------------------------------------------------------------------------- CINIC-10

# CINIC-10's class folders; labels follow CIFAR-10's order (airplane 0 ... truck 9).
CINIC = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cinic(root, classes=CINIC):
    """root/{train,valid,test}/<class>/<name>.png; one PNG per class and split, one of them grey-scale."""
    from PIL import Image

    rng = np.random.default_rng(8)
    expected = {}  # file -> (label, upright RGB pixels)
    for split in ("train", "valid", "test"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            file = folder / f"cifar10-{split}-{label}.png"
            if split == "valid" and name == "cat":  # a grey-scale PNG, read as three equal channels
                Image.fromarray(pixels[..., 0]).save(file)
                pixels = np.repeat(pixels[..., :1], 3, axis=2)
            else:
                Image.fromarray(pixels).save(file)
            expected[file] = (label, pixels)
    return expected


def test_cinic10_pools_the_three_splits(tmp_path):
    expected = write_cinic(tmp_path)  # written split by split, class by class: the order the samples come in
    data = load_images("cinic10", str(tmp_path))
    assert data.images.shape == (30, 3, 32, 32) and data.num_classes == 10
    np.testing.assert_array_equal(data.labels, [label for label, _ in expected.values()])
    assert data.labels[list(expected).index(tmp_path / "valid" / "truck" / "cifar10-valid-9.png")] == 9
    assert_affine_per_channel(data.images, np.stack([pixels.transpose(2, 0, 1) for _, pixels in expected.values()]))


def test_cinic10_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(DataError) as caught:
        load_images("cinic10", str(tmp_path / "nowhere"))
    message = str(caught.value)
    assert "nowhere" in message and "train/, valid/, test/" in message and "airplane" in message
    write_cinic(tmp_path)
    for png in (tmp_path / "test" / "ship").iterdir():
        png.unlink()
    (tmp_path / "test" / "ship").rmdir()
    with pytest.raises(DataError, match=r"lacks test/ship;"):
        load_images("cinic10", str(tmp_path))


@pytest.mark.parametrize("damage", ["not_png", "wrong_size"])
def test_cinic10_bad_image_names_the_file(tmp_path, damage):
    from PIL import Image

    write_cinic(tmp_path)
    bad = tmp_path / "valid" / "frog" / "broken.png"
    if damage == "not_png":
        bad.write_bytes(b"\x89PNG but cut short")
    else:
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(bad)
    with pytest.raises(DataError, match="broken.png"):
        load_images("cinic10", str(tmp_path))


# ----------------------------------------------------------------------------------------------- FEMNIST (LEAF)


def leaf_file(path, samples):
    """One LEAF JSON file; `samples` maps each user to (uint8 images n x 28 x 28, labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = {"users": list(samples), "num_samples": [len(y) for _, y in samples.values()],
            "user_data": {user: {"x": (images.reshape(len(y), -1) / 255.0).tolist(), "y": [int(v) for v in y]}
                          for user, (images, y) in samples.items()}}
    path.write_text(json.dumps(tree))


def write_leaf(root, counts, seed=9):
    """LEAF's sample-wise split: root/train/*.json and root/test/*.json, each writer in both, its first third in
    test. Returns the pooled (images, labels, writer of each sample) in reading order: the train files, then test."""
    rng = np.random.default_rng(seed)
    data = {}
    for i, (user, count) in enumerate(counts.items()):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        data[user] = (images, 7 * i + np.arange(count) % 3)  # labels tell writers apart
    users = list(data)
    test_rows = {user: slice(0, len(data[user][1]) // 3) for user in users}
    train_rows = {user: slice(len(data[user][1]) // 3, None) for user in users}
    files = [  # LEAF writes one file per batch of users: two train files here, one test file
        (root / "train" / "all_data_0_niid_0_keep_0_train_9.json", users[:1], train_rows),
        (root / "train" / "all_data_1_niid_0_keep_0_train_9.json", users[1:], train_rows),
        (root / "test" / "all_data_0_niid_0_keep_0_test_9.json", users, test_rows),
    ]
    images, labels, writers = [], [], []
    for path, members, rows in files:
        samples = {user: (data[user][0][rows[user]], data[user][1][rows[user]]) for user in members}
        leaf_file(path, samples)
        for user, (x, y) in samples.items():
            images.append(x)
            labels.append(y)
            writers += [user] * len(y)
    return np.concatenate(images), np.concatenate(labels), writers


WRITERS = {"f0003_41": 12, "f0127_09": 15, "f2011_77": 21}


def test_femnist_reads_leaf_json_with_each_samples_writer(tmp_path):
    images, labels, writers = write_leaf(tmp_path, WRITERS)
    data = load_images("femnist", str(tmp_path))
    assert data.images.shape == (48, 1, 28, 28) and data.num_classes == 62
    np.testing.assert_array_equal(data.labels, labels)
    assert [data.writer_names[w] for w in data.writers] == writers
    assert_affine_per_channel(data.images, images)  # LEAF's rows are row-major upright images: kept as they are


def test_femnist_missing_folder_or_split_names_the_layout(tmp_path):
    with pytest.raises(DataError) as caught:
        load_images("femnist", str(tmp_path / "nowhere"))
    message = str(caught.value)
    assert "nowhere" in message and "train/*.json and test/*.json" in message and "user_data" in message
    leaf_file(tmp_path / "train" / "only.json", {"f0001_01": (np.zeros((2, 28, 28), np.uint8), [0, 1])})
    with pytest.raises(DataError, match=r"lacks test/;.*train/\*\.json"):
        load_images("femnist", str(tmp_path))
    (tmp_path / "test").mkdir()
    (tmp_path / "train" / "only.json").unlink()
    with pytest.raises(DataError, match="no JSON files"):
        load_images("femnist", str(tmp_path))


@pytest.mark.parametrize("damage,expected", [
    ("not_json", "cannot be read"),
    ("no_user_data", "cannot be read"),
    ("short_rows", "user f0001_01: expected 4 rows x of 784 values"),
    ("bytes_not_fractions", "values in 0..1"),
    ("count_mismatch", "user f0001_01: expected 3 rows"),
    ("label_62", r"labels must lie in 0\.\.61"),
])
def test_femnist_malformed_json_names_the_file(tmp_path, damage, expected):
    write_leaf(tmp_path, {"f0001_01": 6})
    file = tmp_path / "train" / "all_data_0_niid_0_keep_0_train_9.json"
    tree = json.loads(file.read_text())
    sample = tree["user_data"]["f0001_01"]
    if damage == "not_json":
        file.write_text("{\"users\": [")
    else:
        if damage == "no_user_data":
            del tree["user_data"]
        elif damage == "short_rows":
            sample["x"] = [row[:783] for row in sample["x"]]
        elif damage == "bytes_not_fractions":
            sample["x"][0] = [255.0] * 784
        elif damage == "count_mismatch":
            tree["num_samples"] = [3]
        else:
            sample["y"][0] = 62
        file.write_text(json.dumps(tree))
    with pytest.raises(DataError, match=expected) as caught:
        load_images("femnist", str(tmp_path))
    assert damage == "label_62" or file.name in str(caught.value)


def test_femnist_writers_survive_the_cache_keyed_by_the_json_alone(tmp_path):
    write_leaf(tmp_path, WRITERS)
    first = load_images("femnist", tmp_path, tmp_path / "cache")
    raw = tmp_path / "raw_data" / "by_write" / "hsf_0" / "f0003_41"  # LEAF keeps the source PNGs beside the JSON
    raw.mkdir(parents=True)
    (raw / "c0_00000.png").write_bytes(b"png")
    again = load_images("femnist", tmp_path, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the raw PNGs do not key the decoded arrays
    np.testing.assert_array_equal(again.writers, first.writers)
    assert again.writer_names == tuple(sorted(WRITERS))


# ----------------------------------------------------------------------------------------------- federated views


def data_config(tmp_path, dataset, path, *overrides):
    from fedcmd_plugin import load_config

    return load_config(None, [f"data.dataset={dataset}", f"data.path={path}", f"data.root={tmp_path / 'derived'}",
                              "data.min_size=1", *overrides])


def test_natural_partition_gives_each_writer_one_client(tmp_path):
    from fedcmd_plugin.data import load_federated

    _, labels, writers = write_leaf(tmp_path / "leaf", WRITERS)
    conf = data_config(tmp_path, "femnist", tmp_path / "leaf", "data.split_type=natural", "data.num_of_clients=3")
    data = load_federated(conf)
    assert len(data.train.users) == 3 and data.info.num_classes == 62
    assert [row["writer"] for row in data.client_rows] == sorted(WRITERS)
    for cid, row in zip(data.train.users, data.client_rows):
        mine = np.array([w == row["writer"] for w in writers])
        held = np.concatenate([data.train.tensors(cid)[1].numpy(), data.test.tensors(cid)[1].numpy()])
        np.testing.assert_array_equal(np.sort(held), np.sort(labels[mine]))  # all its samples, nobody else's
        assert data.train.size(cid) == round(WRITERS[row["writer"]] * 0.5)  # data.train_test_split


def test_natural_partition_draws_num_of_clients_writers_seeded(tmp_path):
    from fedcmd_plugin.data import load_federated

    many = {f"f{i:04d}_00": 4 + i for i in range(8)}
    write_leaf(tmp_path / "leaf", many)
    chosen = {}
    for seed in (0, 0, 1):
        conf = data_config(tmp_path, "femnist", tmp_path / "leaf", "data.split_type=natural",
                           "data.num_of_clients=3", f"seed={seed}", "data.cache=false")
        chosen.setdefault(seed, []).append([row["writer"] for row in load_federated(conf).client_rows])
    assert chosen[0][0] == chosen[0][1] and len(set(chosen[0][0])) == 3 and set(chosen[0][0]) <= set(many)
    assert chosen[0][0] == sorted(chosen[0][0])
    assert chosen[1][0] != chosen[0][0]


def test_natural_partition_refuses_more_clients_than_writers(tmp_path):
    from fedcmd_plugin import ConfigError
    from fedcmd_plugin.data import load_federated

    write_leaf(tmp_path / "leaf", WRITERS)  # 12, 15 and 21 samples
    conf = data_config(tmp_path, "femnist", tmp_path / "leaf", "data.split_type=natural", "data.num_of_clients=3",
                       "data.min_size=13")
    with pytest.raises(ConfigError, match=r"data.num_of_clients=3 exceeds the 2 writers .*data.min_size=13"):
        load_federated(conf)


def test_natural_split_on_a_data_set_without_writers_is_a_config_error(tmp_path):
    from fedcmd_plugin import ConfigError
    from fedcmd_plugin.data import load_federated

    write_svhn(tmp_path / "svhn")
    conf = data_config(tmp_path, "svhn", tmp_path / "svhn", "data.split_type=natural", "data.num_of_clients=2")
    with pytest.raises(ConfigError) as caught:
        load_federated(conf)
    message = str(caught.value)
    assert "data.split_type=natural" in message and "'svhn'" in message and "\n" not in message


@pytest.mark.parametrize("dataset,write,expected", [
    ("emnist", lambda root: write_emnist(root, "byclass", emnist_samples(8), np.arange(8) * 8), (1, 28, 62)),
    ("svhn", write_svhn, (3, 32, 10)),
    ("cinic10", write_cinic, (3, 32, 10)),
    ("femnist", lambda root: write_leaf(root, WRITERS), (1, 28, 62)),
])
def test_model_auto_fits_each_data_set(tmp_path, dataset, write, expected):
    import torch

    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.models import classification_model

    write(tmp_path / dataset)
    conf = data_config(tmp_path, dataset, tmp_path / dataset, "data.split_type=iid", "data.num_of_clients=2",
                       "data.emnist_split=byclass")
    data = load_federated(conf)
    channels, side, classes = expected
    assert (data.info.in_channels, data.info.image_size, data.info.num_classes) == expected
    x, _ = data.train.tensors(data.train.users[0])
    assert x.shape[1:] == (channels, side, side)
    model = classification_model(conf, data.info)  # model: auto
    with torch.no_grad():
        assert model(x).shape == (len(x), classes)


def test_two_round_fedavg_on_femnist_writers(tmp_run_dir):
    import csv

    import easyfl

    import fedcmd_plugin
    from fedcmd_plugin.experiment import last_run

    write_leaf(tmp_run_dir.path / "leaf", {f"f{i:04d}_00": 20 + 2 * i for i in range(5)})
    fedcmd_plugin.register("fedavg")
    conf = fedcmd_plugin.load_config(None, [
        "algorithm=fedavg", "data.dataset=femnist", f"data.path={tmp_run_dir.path / 'leaf'}",
        "data.split_type=natural", "data.num_of_clients=4", "server.clients_per_round=2", "server.rounds=2",
        "server.test_every=1", "client.local_epoch=1", "client.batch_size=8", "output.progress=false",
        "num_threads=1", *tmp_run_dir])
    easyfl.init(conf)
    easyfl.run()
    run = last_run()
    assert json.loads((run["folder"] / "status.json").read_text())["state"] == "complete"
    assert run["summary"]["final"]["evaluated_clients"] == 4 and run["summary"]["rounds"] == 2
    with open(run["folder"] / "partition.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and len({r["writer"] for r in rows}) == 4
    for row in rows:
        assert int(row["train"]) + int(row["test"]) == 20 + 2 * int(row["writer"][1:5])  # the writer's samples
