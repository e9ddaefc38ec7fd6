"""`data.dataset: synthetic`: FedProx's synthetic(alpha, beta) classification devices (Li et al., 2020, section 5.1),
each device one client.

Device k (of `data.num_of_clients`), with D features and C classes:
    u_k ~ N(0, alpha),  W_k (C x D) and b_k (C) with entries ~ N(u_k, 1)     (the device's own labelling model)
    B_k ~ N(0, beta),   v_k (D) with entries ~ N(B_k, 1)                     (the device's own input mean)
    x ~ N(v_k, Sigma),  Sigma diagonal with Sigma_jj = j^-1.2 (j = 1..D)
    y = argmax(softmax(W_k x + b_k)) = argmax(W_k x + b_k)
alpha and beta are variances, as the paper writes N(0, alpha) (alpha = 0 gives every device the same mean u).
Device sizes: data.min_size plus a lognormal amount whose mean makes E[n_k] = data.synthetic.mean_samples and whose
log has standard deviation data.synthetic.size_sigma (heavy-tailed like LEAF's lognormal sizes; 0 = every device the
same size). Each device's samples are split into its own train and test part by data.train_test_split: samples of a
device are i.i.d., so its first samples are its training part.

Seeding: every quantity has its own stream `np.random.default_rng((seed, STREAM_SALT, STREAMS.index(name)))`, read
in device order (sizes: `size_draws`; u, B: normal with the variance above; W, b, v, x: float32 standard normals
shifted by u_k, u_k, B_k, v_k and, for x, scaled by sqrt(Sigma_jj)). Draws are generated a block of devices at a time
(bounded memory); a stream read block by block gives the same values as read at once, so any block size gives the
same devices.
"""
from dataclasses import dataclass

import numpy as np

from fedcmd_plugin.data.federated import ClientTensors, DataInfo, FederatedData, client_ids, register_data, summarise
from fedcmd_plugin.data.partition import pooled_histograms, train_count
from fedcmd_plugin.errors import ConfigError

STREAM_SALT = 0x5E7D  # keeps these streams apart from every other use of the run's seed
STREAMS = ("sizes", "u", "W", "b", "B", "v", "x_train", "x_test")
BLOCK_SAMPLES = 1 << 16  # samples generated at once (16 MB of features at 60 features, float32)
COVARIANCE_POWER = -1.2


@dataclass
class Devices:
    """The generated devices: each split pooled in device order with every device's sample count."""
    train_x: np.ndarray  # float32, samples x features
    train_y: np.ndarray  # int64
    train_sizes: np.ndarray  # int64, one per device
    test_x: np.ndarray
    test_y: np.ndarray
    test_sizes: np.ndarray


def streams(seed):
    return {name: np.random.default_rng((seed, STREAM_SALT, i)) for i, name in enumerate(STREAMS)}


def feature_scales(features):
    """sqrt(Sigma_jj) = j^(-1.2 / 2) for j = 1..features."""
    return np.arange(1, features + 1, dtype=np.float64) ** (COVARIANCE_POWER / 2)


def size_draws(rng, num_devices, mean_samples, size_sigma, min_size):
    """Samples per device: min_size + round(L_k), L_k lognormal with mean mean_samples - min_size."""
    extra = mean_samples - min_size
    if extra <= 0:
        return np.full(num_devices, min_size, dtype=np.int64)
    mu = np.log(extra) - size_sigma ** 2 / 2
    return min_size + np.rint(rng.lognormal(mu, size_sigma, num_devices)).astype(np.int64)


def generate(num_devices, seed, alpha=0.5, beta=0.5, features=60, classes=10, mean_samples=50, size_sigma=1.0,
             min_size=10, train_fraction=0.5, block_samples=BLOCK_SAMPLES):
    """`num_devices` synthetic(alpha, beta) devices as a `Devices`; see the module docstring for the definition
    and the seeding."""
    rng = streams(seed)
    sizes = size_draws(rng["sizes"], num_devices, mean_samples, size_sigma, min_size)
    u = rng["u"].normal(0.0, np.sqrt(alpha), num_devices).astype(np.float32)
    means = rng["B"].normal(0.0, np.sqrt(beta), num_devices).astype(np.float32)  # B_k
    train_sizes = train_count(sizes, train_fraction)
    splits = {"train": train_sizes, "test": sizes - train_sizes}
    pooled = {name: (np.empty((n.sum(), features), np.float32), np.empty(n.sum(), np.int64))
              for name, n in splits.items()}
    scales = feature_scales(features).astype(np.float32)
    ends = np.cumsum(sizes)
    first = 0
    while first < num_devices:
        # a block of whole devices holding about block_samples samples (at least one device)
        done = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(ends, done + block_samples, "right")))
        count, block = last - first, slice(first, last)
        w = u[block, None, None] + rng["W"].standard_normal((count, classes, features), np.float32)
        b = u[block, None] + rng["b"].standard_normal((count, classes), np.float32)
        v = means[block, None] + rng["v"].standard_normal((count, features), np.float32)
        for name, split_sizes in splits.items():
            start = int(split_sizes[:first].sum())
            rows = slice(start, start + int(split_sizes[block].sum()))
            x, y = pooled[name][0][rows], pooled[name][1][rows]
            rng[f"x_{name}"].standard_normal(dtype=np.float32, out=x)
            x *= scales
            x += v[np.repeat(np.arange(count), split_sizes[block])]
            y[:] = labels(w, b, split_sizes[block], x)
        first = last
    return Devices(*pooled["train"], splits["train"], *pooled["test"], splits["test"])


def labels(w, b, sizes, x):
    """argmax(W_k x + b_k) of each sample of x, which holds device k's sizes[k] samples after device k - 1's.

    Devices of equal size are labelled together as one batched matrix product (n x D times D x C per device), so
    no device's W_k is copied once per sample."""
    y = np.empty(len(x), dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    for size in np.unique(sizes):
        devices = np.flatnonzero(sizes == size)
        rows = starts[devices, None] + np.arange(size)
        logits = np.matmul(x[rows], w[devices].transpose(0, 2, 1)) + b[devices, None, :]
        y[rows] = logits.argmax(axis=2)
    return y


def build_synthetic(conf):
    """FederatedData of `data.num_of_clients` generated devices (data.synthetic.*), one client each."""
    d, s = conf.data, conf.data.synthetic
    if d.split_type != "natural":
        raise ConfigError(f"data.dataset=synthetic generates its own clients, one per device: set "
                          f"data.split_type=natural (got {d.split_type!r})")
    needed = 2 if d.train_test_split < 1 else 1
    if d.min_size < needed:
        raise ConfigError(f"data.dataset=synthetic needs data.min_size >= {needed} so that every device has train "
                          f"and test samples (data.train_test_split={d.train_test_split}); got {d.min_size}")
    devices = generate(d.num_of_clients, conf.seed, float(s.alpha), float(s.beta), s.features, s.classes,
                       float(s.mean_samples), float(s.size_sigma), d.min_size, float(d.train_test_split))
    ids = client_ids(d.num_of_clients)
    train = ClientTensors(devices.train_x, devices.train_y, devices.train_sizes, ids)
    test = ClientTensors(devices.test_x, devices.test_y, devices.test_sizes, ids)
    summary, rows = summarise(f"synthetic({s.alpha}, {s.beta})", ids,
                              pooled_histograms(devices.train_y, devices.train_sizes, s.classes),
                              pooled_histograms(devices.test_y, devices.test_sizes, s.classes))
    return FederatedData(train, test, DataInfo(s.features, 1, s.classes), f"{summary}, {s.features} features", rows)


register_data("synthetic", build_synthetic)
