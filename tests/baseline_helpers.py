"""Clients of the regularised baselines on a tiny linear model and fixed batches, with hand-written references:
plain SGD steps whose cross-entropy gradient comes from autograd and whose extra terms are written out."""
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from conftest import make_dispatch

LR = 0.1
CLIENT_CONF = OmegaConf.create({"local_epoch": 1, "batch_size": 4, "test_batch_size": 8, "finetune_epoch": 0,
                                "optimizer": {"type": "SGD", "lr": LR, "momentum": 0.0, "weight_decay": 0.0}})


class FixedBatches:
    """A client's training data as the same batches in every epoch (what `run_epochs` reads)."""

    def __init__(self, batches):
        self.fixed = batches

    def batches(self, cid, batch_size, generator, device, min_last):
        return iter(self.fixed)

    def size(self, cid):
        return sum(len(y) for _, y in self.fixed)


def batches(count=2, size=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, generator=generator), torch.randint(0, 2, (size,), generator=generator))
            for _ in range(count)]


def linear_state(seed):
    """A state dict of nn.Linear(3, 2)."""
    generator = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(2, 3, generator=generator), "bias": torch.randn(2, generator=generator)}


def make_client(cls, data, model=None):
    model = model or nn.Linear(3, 2)
    client = cls("c000", CLIENT_CONF, FixedBatches(data), None, "cpu")
    client.attach(model, {key: value.detach().clone() for key, value in model.state_dict().items()})
    return client


def dispatch(state, algorithm=None, **settings):
    """A Dispatch of a copy of `state` (RoundSettings keywords as `conftest.make_dispatch`)."""
    return make_dispatch({key: value.clone() for key, value in state.items()}, algorithm, **settings)


def cross_entropy_gradient(state, x, y):
    """d/dtheta of the mean cross-entropy of the linear model x @ W.T + b."""
    leaves = {key: value.detach().clone().requires_grad_() for key, value in state.items()}
    loss = F.cross_entropy(x @ leaves["weight"].T + leaves["bias"], y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def assert_states_close(found, expected):
    assert set(found) == set(expected)
    for key in expected:
        assert torch.allclose(found[key], expected[key], atol=1e-6), key
