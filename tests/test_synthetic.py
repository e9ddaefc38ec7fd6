"""FedProx's synthetic(alpha, beta) devices, checked against the definition (Li et al., 2020, section 5.1) and the
seeding documented in fedcmd_plugin/data/synthetic.py, and the MLP that `model: auto` builds for them."""
import numpy as np
import pytest
import torch

from fedcmd_plugin import ConfigError, load_config
from fedcmd_plugin.data.synthetic import STREAM_SALT, STREAMS, generate

FEATURES, CLASSES = 60, 10


def documented_stream(seed, name):
    return np.random.default_rng((seed, STREAM_SALT, STREAMS.index(name)))


def device_models(seed, num_devices, alpha):
    """W_k and b_k of every device, drawn as the module docstring says: u_k ~ N(0, alpha) (alpha a variance), then
    float32 standard normals shifted by u_k, device after device."""
    u = documented_stream(seed, "u").normal(0.0, np.sqrt(alpha), num_devices).astype(np.float32)
    w = u[:, None, None] + documented_stream(seed, "W").standard_normal((num_devices, CLASSES, FEATURES), np.float32)
    b = u[:, None] + documented_stream(seed, "b").standard_normal((num_devices, CLASSES), np.float32)
    return w, b


def per_device(x, sizes):
    return np.split(x, np.cumsum(sizes)[:-1])


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_labels_are_the_argmax_of_each_devices_own_linear_model(alpha, beta):
    devices = generate(40, seed=3, alpha=alpha, beta=beta, mean_samples=30, min_size=4)
    w, b = device_models(3, 40, alpha)
    for x_split, y_split, sizes in ((devices.train_x, devices.train_y, devices.train_sizes),
                                    (devices.test_x, devices.test_y, devices.test_sizes)):
        for k, (x, y) in enumerate(zip(per_device(x_split, sizes), per_device(y_split, sizes))):
            logits = x.astype(np.float64) @ w[k].T.astype(np.float64) + b[k]
            chosen = logits[np.arange(len(y)), y]
            np.testing.assert_array_less(logits.max(axis=1) - chosen, 1e-4)  # y is the argmax (up to float ties)


def test_feature_variances_follow_j_to_the_minus_1_2_on_a_large_device():
    n = 20000
    devices = generate(1, seed=0, mean_samples=n, size_sigma=0.0, min_size=2, train_fraction=1.0)
    x = devices.train_x.astype(np.float64)
    assert x.shape == (n, FEATURES)
    expected = np.arange(1, FEATURES + 1) ** -1.2
    standard_error = expected * np.sqrt(2 / (n - 1))  # of a normal sample's variance
    np.testing.assert_array_less(np.abs(x.var(axis=0, ddof=1) - expected), 5 * standard_error)
    covariance = np.cov(x[:, :5], rowvar=False)  # Sigma is diagonal
    off = covariance[~np.eye(5, dtype=bool)]
    assert np.abs(off).max() < 5 / np.sqrt(n)


def test_device_means_spread_with_beta_as_a_variance():
    """The mean over features of v_k is B_k plus the mean of 60 N(0, 1): its variance over devices is beta + 1/60."""
    for beta in (0.0, 2.0):
        devices = generate(3000, seed=1, beta=beta, mean_samples=40, size_sigma=0.0, min_size=2, train_fraction=1.0)
        means = np.array([x.mean() for x in per_device(devices.train_x.astype(np.float64), devices.train_sizes)])
        expected = beta + 1 / FEATURES + np.sum(np.arange(1, FEATURES + 1) ** -1.2) / FEATURES ** 2 / 40
        assert abs(means.var() - expected) < 4 * expected * np.sqrt(2 / 3000)


def test_sizes_meet_the_minimum_and_the_mean_and_split_per_device():
    devices = generate(20000, seed=2, mean_samples=25, size_sigma=0.5, min_size=5, train_fraction=0.5,
                       features=2, classes=3)
    sizes = devices.train_sizes + devices.test_sizes
    assert sizes.min() >= 5 and abs(sizes.mean() - 25) < 0.5
    assert np.all(np.abs(devices.train_sizes - devices.test_sizes) <= 1) and devices.test_sizes.min() >= 1
    same = generate(50, seed=2, mean_samples=25, size_sigma=0.0, min_size=5, features=2, classes=3)
    assert set(same.train_sizes + same.test_sizes) == {25}


def test_same_seed_same_devices_other_seed_differs_any_block_size():
    a = generate(300, seed=5, mean_samples=20)
    b = generate(300, seed=5, mean_samples=20, block_samples=64)  # many blocks, some of a single device
    c = generate(300, seed=6, mean_samples=20)
    for field in ("train_x", "train_y", "train_sizes", "test_x", "test_y", "test_sizes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.train_sizes, c.train_sizes) and not np.allclose(a.test_x[:10], c.test_x[:10])
    assert a.train_x.dtype == np.float32 and a.train_y.dtype == np.int64


def synthetic_config(tmp_path, *overrides):
    return load_config(None, ["data.dataset=synthetic", "data.split_type=natural", f"data.root={tmp_path}",
                              "data.num_of_clients=12", *overrides])


def test_federated_synthetic_data_one_client_per_device_and_model_auto(tmp_path):
    from fedcmd_plugin.data import load_federated
    from fedcmd_plugin.models import classification_model

    conf = synthetic_config(tmp_path, "data.synthetic.mean_samples=30", "seed=4")
    data = load_federated(conf)
    devices = generate(12, seed=4, mean_samples=30)
    assert len(data.train.users) == 12 and (data.info.in_channels, data.info.image_size) == (60, 1)
    for k, cid in enumerate(data.train.users):
        x, y = data.test.tensors(cid)
        start = devices.test_sizes[:k].sum()
        np.testing.assert_array_equal(y.numpy(), devices.test_y[start:start + len(y)])
        assert data.train.size(cid) == devices.train_sizes[k]
    assert [r["train"] + r["test"] for r in data.client_rows] == list(devices.train_sizes + devices.test_sizes)
    model = classification_model(conf, data.info)
    assert model.block_names == ["fc1", "fc2", "classifier"]
    with torch.no_grad():
        assert model(x).shape == (len(x), 10)


@pytest.mark.parametrize("override,key", [("data.split_type=dir", "data.split_type=natural"),
                                          ("data.min_size=1", "data.min_size >= 2"),
                                          ("data.synthetic.alpha=-1", "data.synthetic.alpha"),
                                          ("data.synthetic.features=0", "data.synthetic.features")])
def test_bad_synthetic_settings_name_the_key(tmp_path, override, key):
    from fedcmd_plugin.data import load_federated

    with pytest.raises(ConfigError) as caught:
        load_federated(synthetic_config(tmp_path, override))
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_a_hundred_thousand_devices_are_two_pooled_tensors(tmp_path):
    from fedcmd_plugin.data import load_federated

    data = load_federated(synthetic_config(tmp_path, "data.num_of_clients=100000", "data.min_size=2",
                                           "data.synthetic.mean_samples=2", "data.synthetic.features=4"))
    assert len(data.test.users) == 100000 and data.train.total_size() == 100000
    pool = data.train.tensors("c000")[0].untyped_storage().data_ptr()
    assert data.train.tensors("c99999")[0].untyped_storage().data_ptr() == pool  # views of one tensor


@pytest.mark.parametrize("algorithm", ["fedavg", "fedper", pytest.param("fedcmd", marks=pytest.mark.slow)])  # POT, scoring: ~5 s
def test_algorithms_run_on_synthetic_end_to_end(tmp_run_dir, algorithm):
    import json

    from conftest import CONFIGS

    from fedcmd_plugin.cli import run_experiment

    result = run_experiment(load_config(CONFIGS / f"{algorithm}_synthetic.yaml", [
        "data.num_of_clients=8", "data.synthetic.mean_samples=24", "server.rounds=3", "server.clients_per_round=4",
        "server.test_every=3", "client.local_epoch=1", "parallel.workers=1", "output.progress=false",
        "output.tensorboard=false", "output.save_fig=false", "num_threads=1", *tmp_run_dir]))
    folder, final = result["folder"], result["summary"]["final"]
    assert json.loads((folder / "status.json").read_text())["state"] == "complete"
    assert final["evaluated_clients"] == 8 and 0 <= final["accuracy"] <= 100
    if algorithm == "fedcmd":
        assert result["summary"]["personal_block"] in ("fc1", "fc2", "classifier")
