"""BatchNorm models and a last training batch of one sample: it joins the batch before it."""
import json

import pytest

from fedcmd_plugin import ConfigError
from fedcmd_plugin.cli import run_experiment
from fedcmd_plugin.data import load_federated
from fedcmd_plugin.data.federated import batch_bounds


@pytest.mark.parametrize("n,size,min_last,expected", [
    (33, 32, 2, [(0, 33)]),
    (33, 32, 1, [(0, 32), (32, 33)]),
    (65, 32, 2, [(0, 32), (32, 65)]),
    (34, 32, 2, [(0, 32), (32, 34)]),
    (1, 32, 2, [(0, 1)]),
])
def test_a_short_last_batch_is_merged(n, size, min_last, expected):
    assert batch_bounds(n, size, min_last) == expected


@pytest.mark.parametrize("algorithm", [pytest.param("fedavg", marks=pytest.mark.slow), "fedbn"])
def test_cnn_trains_when_a_client_ends_on_a_batch_of_one(small_digits_config, algorithm):
    """model=cnn sees 1x1 maps in its last block on 8x8 digits: a single sample there cannot be normalised."""
    probe = small_digits_config()
    sizes = {cid: load_federated(probe).train.size(cid) for cid in load_federated(probe).train.users}
    batch = max(sizes.values()) - 1  # the largest client ends each epoch on one sample
    conf = small_digits_config(algorithm=algorithm, model="cnn", client__batch_size=batch,
                               server__clients_per_round=len(sizes))
    run = run_experiment(conf)
    metrics = json.loads((run["folder"] / "metrics.json").read_text())
    assert all(m["images"] == sum(sizes.values()) for m in metrics)  # merged, not dropped: every sample trains


def test_batch_norm_needs_two_samples_per_batch(small_digits_config):
    with pytest.raises(ConfigError, match="'client.batch_size' must be at least 2"):
        run_experiment(small_digits_config(model="cnn", client__batch_size=1))
